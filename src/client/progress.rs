//! Progress bars and notes on stderr, shown only when stderr is a terminal:
//! a scripted run prints nothing but its results and its errors.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// All bars of the process live in one `MultiProgress`, so concurrent uploads
/// each get a line and printed lines never tear them.
fn multi() -> Option<&'static MultiProgress> {
    static MULTI: OnceLock<Option<MultiProgress>> = OnceLock::new();
    MULTI
        .get_or_init(|| {
            std::io::stderr()
                .is_terminal()
                .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)))
        })
        .as_ref()
}

fn add(bar: ProgressBar, style: ProgressStyle) -> ProgressBar {
    match multi() {
        Some(m) => {
            let bar = m.add(bar.with_style(style));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        }
        None => ProgressBar::hidden(),
    }
}

/// A bar of bytes (done, total, rate, ETA); a spinner when the total is unknown.
pub fn bytes(label: &str, total: Option<u64>) -> ProgressBar {
    let style = match total {
        Some(_) => ProgressStyle::with_template(
            "{prefix:.bold} {msg:9} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        ),
        None => ProgressStyle::with_template("{spinner} {prefix:.bold} {msg:9} {binary_bytes} {binary_bytes_per_sec}"),
    }
    .expect("valid template")
    .progress_chars("=> ");
    let bar = add(ProgressBar::new(total.unwrap_or(0)), style);
    if total.is_none() {
        bar.unset_length();
    }
    bar.set_prefix(short(label));
    bar
}

/// A bar of items (keys warmed out of the total).
pub fn items(label: &str, total: u64) -> ProgressBar {
    let style = ProgressStyle::with_template("{prefix:.bold} [{wide_bar}] {pos}/{len} {msg} ETA {eta}")
        .expect("valid template")
        .progress_chars("=> ");
    let bar = add(ProgressBar::new(total), style);
    bar.set_prefix(label.to_string());
    bar
}

/// A line for the person at the terminal (a retry, a summary); nothing when scripted.
pub fn note(line: &str) {
    if let Some(m) = multi() {
        m.suspend(|| eprintln!("blobcache: {line}"));
    }
}

/// Print to stdout or stderr without tearing the bars.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    match multi() {
        Some(m) => m.suspend(f),
        None => f(),
    }
}

/// A label fit for a bar: the end of a long path, which tells files apart.
fn short(label: &str) -> String {
    const MAX: usize = 32;
    let chars: Vec<char> = label.chars().collect();
    if chars.len() <= MAX {
        label.to_string()
    } else {
        let tail: String = chars[chars.len() - (MAX - 1)..].iter().collect();
        format!("…{tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::short;

    #[test]
    fn long_labels_keep_their_end() {
        assert_eq!(short("a/b.tgz"), "a/b.tgz");
        let long = format!("{}/droplet.tgz", "d".repeat(60));
        let s = short(&long);
        assert_eq!(s.chars().count(), 32);
        assert!(s.starts_with('…') && s.ends_with("/droplet.tgz"));
    }
}
