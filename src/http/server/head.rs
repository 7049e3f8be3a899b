//! HTTP/1 request heads, checked before hyper parses them, so that every head
//! hyper would refuse with an empty answer (and a few it would take) gets a
//! JSON error instead. hyper stays the only parser that acts on a request: this
//! module decides only whether a head may reach it, and how long its body is,
//! so the connection knows where the next head begins.

use std::mem::MaybeUninit;

use axum::http::Uri;

/// What an HTTP/2 client with prior knowledge sends first.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper refuses longer request targets (its `MAX_URI_LEN`).
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// Why a request head is refused, before any handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The head did not arrive in time (the limit, in seconds or a fraction).
    HeaderTimeout(std::time::Duration),
    /// The head is larger than the limit (bytes).
    HeadTooLarge(usize),
    /// The request line alone is larger than the limit (bytes).
    TargetTooLong(usize),
    /// More header fields than the limit.
    TooManyHeaders(usize),
    /// Not HTTP/1 syntax; says which part.
    Malformed(&'static str),
    /// An HTTP version other than 1.0 and 1.1.
    UnsupportedVersion,
    /// `Content-Length` is not one decimal number.
    InvalidContentLength,
    /// `Content-Length` beyond any body this server could take.
    ContentLengthTooLarge,
    /// Both `Transfer-Encoding` and `Content-Length`: the framing of request smuggling.
    AmbiguousLength,
    /// A transfer coding other than `chunked`.
    UnsupportedTransferEncoding,
    /// `chunked` twice, not last, or in an HTTP/1.0 request.
    InvalidTransferEncoding,
    /// No `Host` in an HTTP/1.1 request, several, or one that is not a host.
    InvalidHost(&'static str),
    /// CONNECT: this server is not a proxy.
    Connect,
}

/// How the body after a head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// Exactly this many bytes (0: no body).
    Known(u64),
    /// `Transfer-Encoding: chunked`: its end is found by hyper alone.
    Chunked,
}

/// A head that may go to hyper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub body: BodyLength,
}

/// The limits a head is checked against.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_size: usize,
    pub max_headers: usize,
}

/// Where the empty lines a client may send between messages end (they are
/// skipped, here and by hyper). `None` while a lone `\r` may still become `\r\n`.
pub fn skip_empty_lines(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        match buf.get(i..) {
            Some([b'\n', ..]) => i += 1,
            Some([b'\r', b'\n', ..]) => i += 2,
            Some([b'\r']) => return None,
            _ => return Some(i),
        }
    }
}

/// The end of a head (just past its empty line), searching `buf` from
/// `from`, where the search of the bytes before stopped; `buf` starts at the
/// head's first byte. Line ends may be `\r\n` or `\n`, as httparse allows.
pub fn find_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(2);
    let tail = buf.get(start..)?;
    tail.windows(2).enumerate().find_map(|(i, w)| match w {
        [b'\n', b'\n'] => Some(start + i + 2),
        [b'\n', b'\r'] if tail.get(i + 2) == Some(&b'\n') => Some(start + i + 3),
        _ => None,
    })
}

/// What to refuse a head for that has no end yet and has outgrown the limit:
/// a request line that never ended is a target too long, anything else a
/// head too large.
pub fn refuse_unfinished(buf: &[u8], limits: &HeadLimits) -> Option<Refusal> {
    if buf.len() <= limits.max_size {
        return None;
    }
    Some(if buf.contains(&b'\n') {
        Refusal::HeadTooLarge(limits.max_size)
    } else {
        Refusal::TargetTooLong(limits.max_size)
    })
}

/// Whether a head (complete or not) is a HEAD request, whose answer has no body.
pub fn is_head_request(buf: &[u8]) -> bool {
    buf.starts_with(b"HEAD ")
}

/// Check one complete head: `head` ends with its empty line and may start
/// with empty lines.
pub fn check(head: &[u8], limits: &HeadLimits) -> Result<Checked, Refusal> {
    let size = head.len() - skip_empty_lines(head).unwrap_or(0);
    if size > limits.max_size {
        return Err(Refusal::HeadTooLarge(limits.max_size));
    }
    // Uninitialised, on the stack for the usual limits: this runs for every request.
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
    let mut heap = Vec::new();
    let headers = if limits.max_headers <= stack.len() {
        &mut stack[..limits.max_headers]
    } else {
        heap.resize_with(limits.max_headers, MaybeUninit::uninit);
        &mut heap[..]
    };
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, headers) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Refusal::Malformed("the head ended early")),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooManyHeaders(limits.max_headers)),
        Err(e) => return Err(parse_error(e, head, req.method.is_some())),
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Refusal::Malformed("the request line is incomplete"));
    };
    if method == "CONNECT" {
        return Err(Refusal::Connect);
    }
    if target.len() > MAX_TARGET {
        return Err(Refusal::TargetTooLong(MAX_TARGET));
    }
    if Uri::try_from(target).is_err() {
        return Err(Refusal::Malformed("the request target is not a URI"));
    }
    let http11 = version == 1;
    let mut hosts = 0;
    let mut lengths = Vec::new();
    let mut codings = Vec::new();
    let mut transfer_encoding = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
            check_host(h.value)?;
        } else if h.name.eq_ignore_ascii_case("content-length") {
            lengths.push(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            codings.extend(
                h.value
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .filter(|c| !c.is_empty()),
            );
        }
    }
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one in HTTP/1.0.
    match hosts {
        0 if http11 => return Err(Refusal::InvalidHost("an HTTP/1.1 request needs a Host header")),
        0 | 1 => {}
        _ => return Err(Refusal::InvalidHost("a request has one Host header, not several")),
    }
    let body = match (lengths.as_slice(), !transfer_encoding) {
        ([], true) => BodyLength::Known(0),
        ([one], true) => BodyLength::Known(content_length(one)?),
        (_, true) => return Err(Refusal::InvalidContentLength),
        // RFC 9112 §6.1 lets a server refuse both; a proxy in front may have read the other one.
        ([_, ..], false) => return Err(Refusal::AmbiguousLength),
        ([], false) => {
            if !http11 {
                return Err(Refusal::InvalidTransferEncoding);
            }
            if codings.iter().any(|c| !c.eq_ignore_ascii_case(b"chunked")) {
                return Err(Refusal::UnsupportedTransferEncoding);
            }
            if codings.len() != 1 {
                return Err(Refusal::InvalidTransferEncoding);
            }
            BodyLength::Chunked
        }
    };
    Ok(Checked { body })
}

fn parse_error(e: httparse::Error, head: &[u8], have_method: bool) -> Refusal {
    use httparse::Error as E;
    match e {
        E::Version => {
            let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
            let line = &head[..line_end];
            if line.windows(6).any(|w| w == b" HTTP/") {
                Refusal::UnsupportedVersion
            } else {
                Refusal::Malformed("the request line has no HTTP version")
            }
        }
        E::Token if !have_method => Refusal::Malformed("the method is not a token"),
        E::Token => Refusal::Malformed("the request target has a forbidden character"),
        E::HeaderName => Refusal::Malformed("a header name has a forbidden character"),
        E::HeaderValue => Refusal::Malformed("a header value has a forbidden character"),
        E::NewLine | E::Status | E::TooManyHeaders => Refusal::Malformed("a line does not end as HTTP/1 requires"),
    }
}

/// A `Host` value: empty (RFC 9112 allows it), or a host with an optional port and no user info.
fn check_host(value: &[u8]) -> Result<(), Refusal> {
    let bad = Refusal::InvalidHost("the Host header is not a host[:port]");
    if value.is_empty() {
        return Ok(());
    }
    if value.contains(&b'@') {
        return Err(bad);
    }
    let authority = std::str::from_utf8(value).map_err(|_| bad.clone())?;
    authority
        .parse::<axum::http::uri::Authority>()
        .map(|_| ())
        .map_err(|_| bad)
}

/// One `Content-Length`: 1*DIGIT, below the lengths hyper reserves for itself.
fn content_length(value: &[u8]) -> Result<u64, Refusal> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(Refusal::InvalidContentLength);
    }
    let digits = std::str::from_utf8(value).expect("ASCII digits");
    match digits.parse::<u64>() {
        Ok(n) if n < u64::MAX - 1 => Ok(n),
        _ => Err(Refusal::ContentLengthTooLarge),
    }
}

/// A JSON error as a whole HTTP/1.1 response that closes the connection
/// (no body for a HEAD request).
pub(super) fn http1_answer(error: crate::http::error::ApiError, head_request: bool) -> bytes::Bytes {
    use std::fmt::Write;
    let body = serde_json::json!({ "error": error.code, "message": error.message }).to_string();
    let reason = error.status.canonical_reason().unwrap_or("");
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        error.status.as_u16(),
        body.len()
    );
    let id = crate::http::front::request_id(&Default::default());
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let _ = write!(head, "x-request-id: {}\r\ndate: {date}\r\n", id.to_str().unwrap_or(""));
    for (name, value) in &error.headers {
        let _ = write!(head, "{name}: {}\r\n", value.to_str().unwrap_or(""));
    }
    head.push_str("\r\n");
    if !head_request {
        head.push_str(&body);
    }
    bytes::Bytes::from(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_size: 1024,
        max_headers: 8,
    };

    fn run(head: &str) -> Result<Checked, Refusal> {
        check(head.as_bytes(), &LIMITS)
    }

    fn known(n: u64) -> Result<Checked, Refusal> {
        Ok(Checked {
            body: BodyLength::Known(n),
        })
    }

    #[test]
    fn ends_of_heads() {
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest", 0), Some(27));
        assert_eq!(find_end(b"GET / HTTP/1.1\nHost: a\n\nrest", 0), Some(24));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost: a\r\n\nx", 0), Some(26));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        // A search resumed where the last one stopped still finds an end split across reads.
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(find_end(head, 25), Some(27));
        assert_eq!(find_end(head, 26), Some(27));
        assert_eq!(skip_empty_lines(b"\r\n\nGET"), Some(3));
        assert_eq!(skip_empty_lines(b"\r"), None);
        assert_eq!(skip_empty_lines(b"GET"), Some(0));
    }

    #[test]
    fn ordinary_requests_pass() {
        assert_eq!(run("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"), known(0));
        assert_eq!(run("\r\nGET / HTTP/1.1\r\nHost: a:80\r\n\r\n"), known(0));
        assert_eq!(
            run("PUT /blobs/x HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Length: 12\r\n\r\n"),
            known(12)
        );
        assert_eq!(run("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"), known(0));
        assert_eq!(
            run("GET / HTTP/1.1\r\nHost:\r\n\r\n"),
            known(0),
            "empty Host is allowed"
        );
        assert_eq!(run("GET / HTTP/1.0\r\n\r\n"), known(0), "HTTP/1.0 needs no Host");
        assert_eq!(
            run("PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Checked {
                body: BodyLength::Chunked
            })
        );
        assert_eq!(
            run("GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n"),
            known(0),
            "absolute form"
        );
    }

    #[test]
    fn hosts() {
        for head in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            assert!(matches!(run(head), Err(Refusal::InvalidHost(_))), "{head:?}");
        }
    }

    #[test]
    fn lengths_and_codings() {
        use Refusal::*;
        let cases = [
            ("Content-Length: -1", InvalidContentLength),
            ("Content-Length: +5", InvalidContentLength),
            ("Content-Length: 1e3", InvalidContentLength),
            ("Content-Length: 5, 5", InvalidContentLength),
            ("Content-Length: 5\r\nContent-Length: 5", InvalidContentLength),
            ("Content-Length: 5\r\nContent-Length: 6", InvalidContentLength),
            ("Content-Length: 18446744073709551615", ContentLengthTooLarge),
            ("Content-Length: 18446744073709551614", ContentLengthTooLarge),
            ("Content-Length: 99999999999999999999999", ContentLengthTooLarge),
            ("Transfer-Encoding: chunked\r\nContent-Length: 5", AmbiguousLength),
            ("Content-Length: 5\r\nTransfer-Encoding: chunked", AmbiguousLength),
            ("Transfer-Encoding: gzip", UnsupportedTransferEncoding),
            ("Transfer-Encoding: gzip, chunked", UnsupportedTransferEncoding),
            ("Transfer-Encoding: xchunked", UnsupportedTransferEncoding),
            ("Transfer-Encoding: chunked, chunked", InvalidTransferEncoding),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                InvalidTransferEncoding,
            ),
            ("Transfer-Encoding: ,", InvalidTransferEncoding),
        ];
        for (header, want) in cases {
            let head = format!("PUT / HTTP/1.1\r\nHost: a\r\n{header}\r\n\r\n");
            assert_eq!(run(&head), Err(want), "{header:?}");
        }
        assert_eq!(
            run("PUT / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(InvalidTransferEncoding)
        );
        assert_eq!(
            run("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551613\r\n\r\n"),
            known(u64::MAX - 2)
        );
        assert_eq!(
            run("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length:  007 \r\n\r\n"),
            known(7)
        );
    }

    #[test]
    fn syntax_versions_and_sizes() {
        use Refusal::*;
        assert_eq!(run("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), Err(UnsupportedVersion));
        assert_eq!(run("PRI * HTTP/2.0\r\n\r\n"), Err(UnsupportedVersion));
        assert!(matches!(run("GET / FOO\r\n\r\n"), Err(Malformed(_))));
        assert!(matches!(run("G(T / HTTP/1.1\r\n\r\n"), Err(Malformed(_))));
        assert!(matches!(run("GET /a\x01b HTTP/1.1\r\n\r\n"), Err(Malformed(_))));
        assert!(matches!(run("GET / HTTP/1.1\r\nA B: c\r\n\r\n"), Err(Malformed(_))));
        assert!(matches!(
            run("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n"),
            Err(Malformed(_))
        ));
        assert!(matches!(run("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), Err(Malformed(_))));
        assert_eq!(run("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"), Err(Connect));

        let eight: String = (0..7).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(run(&format!("GET / HTTP/1.1\r\nHost: a\r\n{eight}\r\n")), known(0));
        assert_eq!(
            run(&format!("GET / HTTP/1.1\r\nHost: a\r\n{eight}X-8: v\r\n\r\n")),
            Err(TooManyHeaders(8))
        );
        let long = "a".repeat(1100);
        assert_eq!(
            run(&format!("GET / HTTP/1.1\r\nHost: a\r\nX: {long}\r\n\r\n")),
            Err(HeadTooLarge(1024))
        );
        assert_eq!(
            refuse_unfinished(format!("GET /{long}").as_bytes(), &LIMITS),
            Some(TargetTooLong(1024))
        );
        assert_eq!(
            refuse_unfinished(format!("GET / HTTP/1.1\r\nX: {long}").as_bytes(), &LIMITS),
            Some(HeadTooLarge(1024))
        );
        assert_eq!(refuse_unfinished(b"GET / HTTP/1.1\r\n", &LIMITS), None);
    }
}
