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

/// A bar of bytes (done, total, rate, ETA); a spinner until the total is known.
pub fn bytes(label: &str, total: Option<u64>) -> ProgressBar {
    let bar = add(ProgressBar::no_length(), bytes_style(false));
    if let Some(total) = total {
        set_total(&bar, total);
    }
    bar.set_prefix(short(label));
    bar
}

/// The total of a bytes bar is known now: show a bar with an ETA.
pub fn set_total(bar: &ProgressBar, total: u64) {
    bar.set_style(bytes_style(true));
    bar.set_length(total);
}

fn bytes_style(known_total: bool) -> ProgressStyle {
    let template = if known_total {
        "{prefix:.bold} {msg:9} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}"
    } else {
        "{spinner} {prefix:.bold} {msg:9} {binary_bytes} {binary_bytes_per_sec}"
    };
    ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ")
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

/// A result line on stdout, without tearing the bars. A closed stdout (`| head`)
/// is not an error worth a panic: the reader has what it wanted.
pub fn out(text: &str) {
    use std::io::Write;
    suspend(|| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
    });
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
