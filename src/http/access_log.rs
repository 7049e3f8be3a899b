//! The request log: one line per request, formatted here rather than by
//! `tracing`'s formatter, in the same shape (field for field, in text and in
//! JSON) as the node's other lines.
//!
//! On 4 KiB hits the formatter's way cost the node a tenth of its CPU: the
//! event dispatched through the subscriber's layers, every field visited
//! through `Debug`, the timestamp formatted anew, colour styles applied even
//! with colour off. Here the line is written into a buffer each thread
//! keeps, the timestamp's date and time reused within a second, and handed
//! to the same writer thread (`logwriter`) as every other line.
//!
//! The process installs the writer at start ([`install`]); until then (an
//! in-process test) and when writing to a terminal (colour), lines go
//! through `tracing` as before. `RUST_LOG` filters them either way.

use std::cell::RefCell;
use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_appender::non_blocking::NonBlocking;

use crate::config::LogFormat;

/// The target of the lines, as `RUST_LOG` names it.
pub const TARGET: &str = "blobcache::http";

/// One request, as its line tells it.
#[derive(Debug)]
pub struct Entry<'a> {
    pub method: &'a str,
    pub uri: &'a axum::http::Uri,
    pub route: &'a str,
    pub request_id: &'a str,
    pub status: u16,
    pub latency: Duration,
    /// The Content-Length answered, or `-`.
    pub bytes: &'a str,
    /// The X-Cache answered, or `-`.
    pub cache: &'a str,
}

struct Sink {
    format: LogFormat,
    writer: NonBlocking,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Write request lines to `writer` (the one the `tracing` subscriber writes to) in `format`.
pub fn install(format: LogFormat, writer: NonBlocking) {
    let _ = SINK.set(Sink { format, writer });
}

/// Log one request (when `RUST_LOG` lets INFO lines of [`TARGET`] through).
pub fn log(entry: &Entry, span: &tracing::Span) {
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    let Some(sink) = SINK.get() else {
        span.in_scope(|| {
            tracing::info!(
                target: TARGET,
                status = entry.status,
                latency_ms = entry.latency.as_secs_f64() * 1000.0,
                bytes = entry.bytes,
                cache = entry.cache,
                "request"
            )
        });
        return;
    };
    thread_local! {
        static LINE: RefCell<(Vec<u8>, Clock, Option<NonBlocking>)> = const { RefCell::new((Vec::new(), Clock::new(), None)) };
    }
    LINE.with_borrow_mut(|(line, clock, writer)| {
        line.clear();
        match sink.format {
            LogFormat::Text => text(line, clock, entry),
            LogFormat::Json => json(line, clock, entry),
        }
        let writer = writer.get_or_insert_with(|| sink.writer.clone());
        // The writer thread takes the line whole; it fails only once it has stopped.
        let _ = writer.write_all(line);
    });
}

/// A field's value, as the formatter writes it.
enum Value<'a> {
    /// A `%`-recorded field: as it is in text, a string in JSON.
    Shown(&'a str),
    /// A string: quoted and escaped in both.
    Str(&'a str),
    Number(u64),
    Millis(Duration),
}

/// Four named fields.
type Fields<'a> = [(&'static str, Value<'a>); 4];

/// The event's fields, then the span's.
fn fields<'a>(e: &'a Entry, uri: &'a str) -> (Fields<'a>, Fields<'a>) {
    let event = [
        ("status", Value::Number(u64::from(e.status))),
        ("latency_ms", Value::Millis(e.latency)),
        ("bytes", Value::Str(e.bytes)),
        ("cache", Value::Str(e.cache)),
    ];
    let span = [
        ("method", Value::Shown(e.method)),
        ("uri", Value::Shown(uri)),
        ("route", Value::Str(e.route)),
        ("request_id", Value::Str(e.request_id)),
    ];
    (event, span)
}

/// `2026-11-23T11:48:35.371007Z  INFO request{method=GET uri=/healthz route="/healthz" request_id="…"}: blobcache::http: request status=200 latency_ms=0.370 bytes="15" cache="-"`
fn text(line: &mut Vec<u8>, clock: &mut Clock, e: &Entry) {
    let uri = uri_text(e.uri);
    let (event, span) = fields(e, &uri);
    clock.write(line);
    line.extend_from_slice(b"  INFO request{");
    text_fields(line, &span);
    line.extend_from_slice(b"}: ");
    line.extend_from_slice(TARGET.as_bytes());
    line.extend_from_slice(b": request ");
    text_fields(line, &event);
    line.push(b'\n');
}

fn text_fields(line: &mut Vec<u8>, fields: &[(&str, Value)]) {
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            line.push(b' ');
        }
        line.extend_from_slice(name.as_bytes());
        line.push(b'=');
        match value {
            Value::Shown(s) => line.extend_from_slice(s.as_bytes()),
            Value::Str(s) => quoted(line, s),
            Value::Number(n) => number(line, *n),
            Value::Millis(d) => millis(line, *d),
        }
    }
}

/// A string as `Debug` writes it (quoted, escaped); plain ones are copied.
fn quoted(line: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\') {
        line.push(b'"');
        line.extend_from_slice(s.as_bytes());
        line.push(b'"');
    } else {
        let _ = write!(line, "{s:?}");
    }
}

/// A number in decimal.
fn number(line: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    line.extend_from_slice(&digits[at..]);
}

/// The JSON formatter's shape (`flatten_event`): the event's fields, then the span's under `span` and `spans`.
fn json(line: &mut Vec<u8>, clock: &mut Clock, e: &Entry) {
    let uri = uri_text(e.uri);
    let (event, span) = fields(e, &uri);
    line.extend_from_slice(b"{\"timestamp\":\"");
    clock.write(line);
    line.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",");
    json_fields(line, &event);
    line.extend_from_slice(b",\"target\":\"");
    line.extend_from_slice(TARGET.as_bytes());
    line.extend_from_slice(b"\",\"span\":");
    let span_at = line.len();
    line.push(b'{');
    json_fields(line, &span);
    line.extend_from_slice(b",\"name\":\"request\"}");
    let span_end = line.len();
    line.extend_from_slice(b",\"spans\":[");
    line.extend_from_within(span_at..span_end);
    line.extend_from_slice(b"]}\n");
}

fn json_fields(line: &mut Vec<u8>, fields: &[(&str, Value)]) {
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            line.push(b',');
        }
        string(line, name);
        line.push(b':');
        match value {
            Value::Shown(s) | Value::Str(s) => string(line, s),
            Value::Number(n) => number(line, *n),
            Value::Millis(d) => millis(line, *d),
        }
    }
}

/// The URI as text, as `Display` writes it (HTTP/2 requests carry scheme and authority).
fn uri_text(uri: &axum::http::Uri) -> std::borrow::Cow<'_, str> {
    match uri.path_and_query() {
        Some(pq) if uri.scheme().is_none() => pq.as_str().into(),
        _ => uri.to_string().into(),
    }
}

/// A JSON string.
fn string(line: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *line, s);
}

/// A duration in milliseconds, to the microsecond.
fn millis(line: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    number(line, micros / 1000);
    let frac = micros % 1000;
    line.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// The time of day as RFC 3339 in UTC, to the microsecond; the part up to
/// the seconds is formatted once a second.
struct Clock {
    second: u64,
    prefix: [u8; 19],
}

impl Clock {
    const fn new() -> Self {
        Clock {
            second: u64::MAX,
            prefix: [0; 19],
        }
    }

    fn write(&mut self, line: &mut Vec<u8>) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = now.as_secs();
        if second != self.second {
            self.second = second;
            self.prefix = date_time(second);
        }
        line.extend_from_slice(&self.prefix);
        let mut frac = *b".000000Z";
        let mut micros = now.subsec_micros();
        for d in frac[1..7].iter_mut().rev() {
            *d = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        line.extend_from_slice(&frac);
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time.
fn date_time(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let (y, m, d) = civil(days);
    let mut out = [0u8; 19];
    let mut w = &mut out[..];
    let _ = write!(
        w,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    );
    out
}

/// The proleptic Gregorian date of a count of days since 1970-01-01
/// (the era-based method: 400-year eras of 146,097 days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_are_utc() {
        let s = |secs| String::from_utf8(date_time(secs).to_vec()).unwrap();
        assert_eq!(s(0), "1970-01-01T00:00:00");
        assert_eq!(s(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(s(1_795_433_315), "2026-11-23T11:28:35");
        assert_eq!(s(4_107_542_399), "2100-02-28T23:59:59");
        assert_eq!(s(4_107_542_400), "2100-03-01T00:00:00");
    }

    fn entry(uri: &axum::http::Uri) -> Entry<'_> {
        Entry {
            method: "GET",
            uri,
            route: "/blobs/{key}",
            request_id: "a\"b\\c",
            status: 200,
            latency: Duration::from_micros(1_234_567),
            bytes: "4096",
            cache: "hit",
        }
    }

    #[test]
    fn json_lines_have_the_formatters_shape() {
        let uri: axum::http::Uri = "/blobs/0123456789abcdef0123456789abcdef?x=%22".parse().unwrap();
        let mut line = Vec::new();
        json(&mut line, &mut Clock::new(), &entry(&uri));
        assert_eq!(line.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "request");
        assert_eq!(v["status"], 200);
        assert_eq!(v["latency_ms"], 1234.567);
        assert_eq!(v["bytes"], "4096");
        assert_eq!(v["cache"], "hit");
        assert_eq!(v["target"], TARGET);
        assert_eq!(v["span"]["method"], "GET");
        assert_eq!(v["span"]["request_id"], "a\"b\\c");
        assert_eq!(v["span"]["route"], "/blobs/{key}");
        assert_eq!(v["span"]["uri"], "/blobs/0123456789abcdef0123456789abcdef?x=%22");
        assert_eq!(v["span"]["name"], "request");
        assert_eq!(v["spans"][0], v["span"]);
        let ts = v["timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), "2026-11-23T11:48:37.352767Z".len(), "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    }

    #[test]
    fn numbers_and_milliseconds() {
        let mut line = Vec::new();
        for n in [0, 7, 10, 200, 404, u64::MAX] {
            line.clear();
            number(&mut line, n);
            assert_eq!(line, n.to_string().as_bytes());
        }
        for (micros, text) in [(0, "0.000"), (52, "0.052"), (1_234_567, "1234.567"), (1000, "1.000")] {
            line.clear();
            millis(&mut line, Duration::from_micros(micros));
            assert_eq!(line, text.as_bytes());
        }
    }

    #[test]
    fn text_lines_quote_what_the_client_sent() {
        let uri: axum::http::Uri = "/healthz".parse().unwrap();
        let mut line = Vec::new();
        text(&mut line, &mut Clock::new(), &entry(&uri));
        let line = String::from_utf8(line).unwrap();
        let (_, rest) = line.split_once("Z  INFO ").unwrap();
        assert_eq!(
            rest,
            "request{method=GET uri=/healthz route=\"/blobs/{key}\" request_id=\"a\\\"b\\\\c\"}: blobcache::http: request status=200 latency_ms=1234.567 bytes=\"4096\" cache=\"hit\"\n"
        );
    }
}
