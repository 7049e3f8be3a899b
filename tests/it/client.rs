//! The client subcommands, run as the real binary against an in-process node,
//! or against tiny stand-in servers that misbehave on purpose.

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use crate::common::{self, TestApp, data};
use blobcache::key::BlobKey;

const NOT_FOUND: i32 = 3;
const INTEGRITY: i32 = 4;
const UNAUTHORIZED: i32 = 5;
const UNAVAILABLE: i32 = 6;

/// Run `blobcache ARGS` in `dir` against `url`, with a bounded wait.
fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("UTF-8 stdout")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("UTF-8 stderr")
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "exit {:?}, stderr: {}", out.status, stderr(out));
    assert!(
        out.stderr.is_empty(),
        "nothing on stderr when scripted: {}",
        stderr(out)
    );
}

/// Exactly one line on stderr, the client's error line.
fn assert_one_error_line(out: &Output) -> String {
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {err:?}");
    assert!(lines[0].starts_with("blobcache: error: "), "{err:?}");
    lines[0].to_string()
}

/// The `md5  size  status  path` lines of a `put`.
fn put_lines(out: &Output) -> Vec<[String; 4]> {
    stdout(out)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, "  ").collect();
            assert_eq!(f.len(), 4, "md5  size  status  path: {l:?}");
            [f[0], f[1], f[2], f[3]].map(String::from)
        })
        .collect()
}

/// Files in `dir` (not below it), by name.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn stats(app: &TestApp) -> serde_json::Value {
    let resp = app.client.get(app.url("/stats")).send().await.unwrap();
    resp.json().await.unwrap()
}

#[tokio::test]
async fn put_then_get_round_trips_every_size() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let sizes = [0usize, 1, 5 << 20, 20 << 20];
    let mut names = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let name = format!("blob{i}");
        std::fs::write(dir.path().join(&name), data(*size, 10 + i as u64)).unwrap();
        names.push(name);
    }
    let args: Vec<&str> = std::iter::once("put").chain(names.iter().map(String::as_str)).collect();
    let out = common::process::client(dir.path(), &app.base, &args).await;
    assert_ok(&out);
    let mut lines = put_lines(&out);
    lines.sort_by(|a, b| a[3].cmp(&b[3]));
    assert_eq!(lines.len(), sizes.len());
    for (i, size) in sizes.iter().enumerate() {
        let body = data(*size, 10 + i as u64);
        let key = BlobKey::of(&body).to_string();
        assert_eq!(
            lines[i],
            [key.clone(), size.to_string(), "uploaded".into(), names[i].clone()]
        );

        let target = format!("back{i}");
        let out = common::process::client(dir.path(), &app.base, &["get", &key, "-o", &target]).await;
        assert_ok(&out);
        assert!(
            std::fs::read(dir.path().join(&target)).unwrap() == body,
            "{size} bytes back"
        );
        // Without -o, the file is named by its MD5.
        let out = common::process::client(dir.path(), &app.base, &["get", &key]).await;
        assert_ok(&out);
        assert!(std::fs::read(dir.path().join(&key)).unwrap() == body);
        let out = common::process::client(dir.path(), &app.base, &["get", &key, "-o", "-"]).await;
        assert_ok(&out);
        assert!(out.stdout == body, "{size} bytes on stdout");
    }
    assert!(
        !names_in(dir.path()).iter().any(|n| n.ends_with(".blobcache-partial")),
        "no partial file left: {:?}",
        names_in(dir.path())
    );
}

#[tokio::test]
async fn put_of_a_blob_the_server_has_sends_no_body() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let body = data(3 << 20, 20);
    std::fs::write(dir.path().join("a"), &body).unwrap();
    let out = common::process::client(dir.path(), &app.base, &["put", "a"]).await;
    assert_ok(&out);
    assert_eq!(put_lines(&out)[0][2], "uploaded");
    let before = stats(&app).await["metrics"].clone();
    assert_eq!(before["puts_created"], 1);

    let out = common::process::client(dir.path(), &app.base, &["put", "a", "--durability", "stored"]).await;
    assert_ok(&out);
    let key = BlobKey::of(&body).to_string();
    assert_eq!(
        put_lines(&out),
        [[key, body.len().to_string(), "exists".into(), "a".into()]]
    );
    let after = stats(&app).await["metrics"].clone();
    assert_eq!(after["puts_created"], before["puts_created"], "no new blob");
    assert_eq!(after["puts_existing"], before["puts_existing"], "no PUT at all");
    assert_eq!(after["bytes_in"], before["bytes_in"], "no body sent");
}

#[tokio::test]
async fn put_r_uploads_a_tree_and_a_bare_directory_is_refused() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    let files = ["tree/a", "tree/sub/b", "tree/sub/deeper/c", "tree/z"];
    for (i, f) in files.iter().enumerate() {
        std::fs::write(dir.path().join(f), data(1000 * (i + 1), 30 + i as u64)).unwrap();
    }

    let out = common::process::client(dir.path(), &app.base, &["put", "tree"]).await;
    assert_eq!(out.status.code(), Some(2), "a directory without -r is a usage error");
    assert!(assert_one_error_line(&out).contains("-r"));
    assert_eq!(put_lines(&out)[0][2], "failed");

    let out = common::process::client(dir.path(), &app.base, &["put", "-r", "--jobs", "2", "tree"]).await;
    assert_ok(&out);
    let mut lines = put_lines(&out);
    lines.sort_by(|a, b| a[3].cmp(&b[3]));
    let paths: Vec<&str> = lines.iter().map(|l| l[3].as_str()).collect();
    assert_eq!(paths, files);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line[2], "uploaded");
        let body = data(1000 * (i + 1), 30 + i as u64);
        let resp = app.client.get(app.blob_url(&BlobKey::of(&body))).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.bytes().await.unwrap() == body);
    }
}

#[tokio::test]
async fn stat_shows_a_table_or_json() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (data(12345, 40), data(7, 41));
    for b in [&one, &two] {
        let resp = app
            .client
            .put(app.blob_url(&BlobKey::of(b)))
            .body(b.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    let (k1, k2) = (BlobKey::of(&one).to_string(), BlobKey::of(&two).to_string());
    let unknown = "0123456789abcdef0123456789abcdef";

    let out = common::process::client(dir.path(), &app.base, &["stat", &k1, &k2, unknown]).await;
    assert_ok(&out);
    let text = stdout(&out);
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["MD5", "SIZE", "CACHED", "PENDING", "IN_STORE"]);
    assert_eq!(rows[1][..2], [k1.as_str(), "12345"]);
    assert_eq!(rows[2][..2], [k2.as_str(), "7"]);
    assert_eq!(rows[3], [unknown, "-", "no", "no", "no"]);
    // Aligned: sizes end under SIZE, the flags start under their headings.
    let header = text.lines().next().unwrap();
    let size_end = header.find("SIZE").unwrap() + 4;
    for line in text.lines().skip(1) {
        assert_ne!(line.as_bytes()[size_end - 1], b' ', "SIZE right-aligned in {line:?}");
        for col in ["CACHED", "PENDING", "IN_STORE"] {
            let at = header.find(col).unwrap();
            assert_eq!(line.as_bytes()[at - 1], b' ', "{col} aligned in {line:?}");
            assert_ne!(line.as_bytes()[at], b' ', "{col} aligned in {line:?}");
        }
    }

    let out = common::process::client(dir.path(), &app.base, &["stat", "--json", &k1, unknown]).await;
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("one JSON document");
    let arr = v.as_array().expect("a JSON array");
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["md5"], k1.as_str());
    assert_eq!(arr[0]["size"], 12345);
    assert_eq!(arr[1]["md5"], unknown);
    assert_eq!(arr[1]["cached"], false);
    for field in ["cached", "pending", "in_store", "size"] {
        assert!(arr[0].get(field).is_some(), "{field} in {}", arr[0]);
    }
}

#[tokio::test]
async fn rm_then_stat_shows_it_gone_and_get_says_not_found() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let body = data(100_000, 50);
    let key = BlobKey::of(&body).to_string();
    std::fs::write(dir.path().join("f"), &body).unwrap();
    assert_ok(&common::process::client(dir.path(), &app.base, &["put", "f"]).await);

    let out = common::process::client(dir.path(), &app.base, &["rm", &key]).await;
    assert_ok(&out);
    assert_eq!(stdout(&out), format!("{key}  deleted\n"));

    let out = common::process::client(dir.path(), &app.base, &["stat", "--json", &key]).await;
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (&v[0]["cached"], &v[0]["pending"], &v[0]["in_store"]),
        (&false.into(), &false.into(), &false.into())
    );

    let out = common::process::client(dir.path(), &app.base, &["get", &key, "-o", "back"]).await;
    assert_eq!(out.status.code(), Some(NOT_FOUND));
    assert!(assert_one_error_line(&out).contains("404"));
    assert_eq!(names_in(dir.path()), ["f"], "neither the file nor a partial one");
}

#[tokio::test]
async fn an_unreachable_server_is_exit_6_with_one_line() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
        // Dropped here: nothing listens on the port any more.
    };
    let url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let key = BlobKey::of(b"x").to_string();
    for args in [
        vec!["get", &key],
        vec!["put", "f"],
        vec!["stat", &key],
        vec!["rm", &key],
    ] {
        let out = common::process::client(dir.path(), &url, &args).await;
        assert_eq!(out.status.code(), Some(UNAVAILABLE), "{args:?}: {}", stderr(&out));
        let line = assert_one_error_line(&out);
        assert!(line.contains(&url), "names the server: {line}");
    }
    assert_eq!(names_in(dir.path()), ["f"], "no partial file left by get");
}

mod stand_in;

use stand_in::Reply;

/// The honest answer to a GET of `body`, honouring `Range: bytes=N-` if `ranges`.
fn serve(body: &[u8], parts: &http::request::Parts, ranges: bool) -> Reply {
    let from = parts
        .headers
        .get("range")
        .and_then(|v| v.to_str().unwrap().strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .map(|n| n.parse::<usize>().unwrap())
        .filter(|_| ranges);
    let len = body.len();
    match from {
        Some(n) => Reply {
            status: 206,
            headers: vec![
                ("content-length", (len - n).to_string()),
                ("content-range", format!("bytes {n}-{}/{len}", len - 1)),
            ],
            body: body[n..].to_vec(),
            cut: false,
        },
        None => Reply {
            status: 200,
            headers: vec![("content-length", len.to_string())],
            body: body.to_vec(),
            cut: false,
        },
    }
}

fn header(parts: &http::request::Parts, name: &str) -> Option<String> {
    parts.headers.get(name).map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn a_corrupted_download_leaves_no_file_and_exits_4() {
    let body = data(300_000, 60);
    let key = BlobKey::of(&body).to_string();
    let server = stand_in::start(|_, parts| {
        let mut wrong = data(300_000, 60);
        wrong[150_000] ^= 1;
        serve(&wrong, parts, true)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = common::process::client(dir.path(), &server.base, &["get", &key, "-o", "target"]).await;
    assert_eq!(out.status.code(), Some(INTEGRITY), "{}", stderr(&out));
    assert!(assert_one_error_line(&out).contains("integrity"));
    assert!(
        names_in(dir.path()).is_empty(),
        "neither target nor partial: {:?}",
        names_in(dir.path())
    );

    let out = common::process::client(dir.path(), &server.base, &["get", &key, "-o", "-"]).await;
    assert_eq!(out.status.code(), Some(INTEGRITY), "stdout is verified at the end too");
    assert!(assert_one_error_line(&out).contains("integrity"));
}

#[tokio::test]
async fn a_cut_download_resumes_with_a_range() {
    let body = Arc::new(data(2 << 20, 61));
    let key = BlobKey::of(&body).to_string();
    let half = body.len() / 2;
    let b = body.clone();
    let server = stand_in::start(move |n, parts| {
        let mut reply = serve(&b, parts, true);
        if n == 0 {
            // The first answer declares the whole blob and breaks off half-way.
            reply.body.truncate(half);
            reply.cut = true;
        }
        reply
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = common::process::client(dir.path(), &server.base, &["get", &key, "-o", "blob"]).await;
    assert_ok(&out);
    assert!(std::fs::read(dir.path().join("blob")).unwrap() == *body);
    assert_eq!(names_in(dir.path()), ["blob"]);
    let requests = server.requests.lock().unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(header(&requests[0], "range"), None);
    assert_eq!(header(&requests[1], "range"), Some(format!("bytes={half}-")));
    assert_eq!(header(&requests[1], "if-range"), Some(format!("\"{key}\"")));
}

#[tokio::test]
async fn a_partial_file_from_an_earlier_run_is_resumed_or_replaced() {
    let body = Arc::new(data(1 << 20, 62));
    let key = BlobKey::of(&body).to_string();
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join(".blob.blobcache-partial");

    // Its first 300,000 bytes are there: only the rest is asked for.
    let b = body.clone();
    let server = stand_in::start(move |_, parts| serve(&b, parts, true)).await;
    std::fs::write(&partial, &body[..300_000]).unwrap();
    let out = common::process::client(dir.path(), &server.base, &["get", &key, "-o", "blob"]).await;
    assert_ok(&out);
    assert!(std::fs::read(dir.path().join("blob")).unwrap() == *body);
    assert!(!partial.exists());
    let requests: Vec<_> = server.requests.lock().unwrap().drain(..).collect();
    assert_eq!(requests.len(), 1);
    assert_eq!(header(&requests[0], "range").as_deref(), Some("bytes=300000-"));

    // A server that ignores Range: the client starts over from its 200.
    let b = body.clone();
    let server = stand_in::start(move |_, parts| serve(&b, parts, false)).await;
    std::fs::remove_file(dir.path().join("blob")).unwrap();
    std::fs::write(&partial, &body[..300_000]).unwrap();
    let out = common::process::client(dir.path(), &server.base, &["get", &key, "-o", "blob"]).await;
    assert_ok(&out);
    assert!(std::fs::read(dir.path().join("blob")).unwrap() == *body);
    assert_eq!(names_in(dir.path()), ["blob"]);

    // Stale bytes of another blob under the same name: resumed, found wrong, fetched again whole.
    let b = body.clone();
    let server = stand_in::start(move |_, parts| serve(&b, parts, true)).await;
    std::fs::remove_file(dir.path().join("blob")).unwrap();
    std::fs::write(&partial, data(300_000, 999)).unwrap();
    let out = common::process::client(dir.path(), &server.base, &["get", &key, "-o", "blob"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(dir.path().join("blob")).unwrap() == *body);
    assert_eq!(names_in(dir.path()), ["blob"]);
    let requests = server.requests.lock().unwrap();
    let ranges: Vec<_> = requests.iter().map(|r| header(r, "range")).collect();
    assert_eq!(ranges, [Some("bytes=300000-".to_string()), None]);
}

#[tokio::test]
async fn a_busy_server_is_retried_after_its_retry_after() {
    let body = Arc::new(data(10_000, 63));
    let key = BlobKey::of(&body).to_string();
    let b = body.clone();
    let server = stand_in::start(move |n, parts| match n {
        0 => Reply {
            status: 503,
            headers: vec![("retry-after", "0".into()), ("content-type", "application/json".into())],
            body: br#"{"error":"store_unavailable","message":"the store is slow"}"#.to_vec(),
            cut: false,
        },
        _ => serve(&b, parts, true),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = common::process::client(dir.path(), &server.base, &["get", &key, "-o", "-"]).await;
    assert_ok(&out);
    assert!(out.stdout == *body);
    assert_eq!(server.requests.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_refused_token_is_exit_5_naming_the_servers_message() {
    let server = stand_in::start(|_, _| Reply {
        status: 401,
        headers: vec![("content-type", "application/json".into())],
        body: br#"{"error":"unauthorized","message":"this token is not valid"}"#.to_vec(),
        cut: false,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = BlobKey::of(b"x").to_string();
    for args in [
        vec!["get", &key, "--token", "t0ken"],
        vec!["stat", &key, "--token", "t0ken"],
    ] {
        let out = common::process::client(dir.path(), &server.base, &args).await;
        assert_eq!(out.status.code(), Some(UNAUTHORIZED), "{args:?}");
        assert!(assert_one_error_line(&out).contains("this token is not valid"));
    }
    let requests = server.requests.lock().unwrap();
    assert!(
        requests
            .iter()
            .all(|r| header(r, "authorization").as_deref() == Some("Bearer t0ken"))
    );
    assert!(names_in(dir.path()).is_empty(), "no partial file left");
}

#[test]
fn bad_arguments_are_usage_errors() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_blobcache"))
        .args(["get", "not-an-md5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
