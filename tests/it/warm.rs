//! Warm-up jobs (`POST /warm`, `GET /warm/{id}`): blobs read from the store
//! into the cache in the background, what they cost, how bad lists are
//! refused, and the `blobcache warm` client against a node.

use std::collections::HashSet;
use std::process::Output;
use std::time::Duration;

use crate::common::s3_nodes;
use crate::common::s3_server::{Fault, S3Server};
use crate::common::{TestApp, assert_error, break_store, data, eventually, eventually_async, mend_store};
use blobcache::key::BlobKey;
use serde_json::Value;

use crate::common;

/// Start a job with a JSON list.
async fn warm_json(app: &TestApp, keys: &[BlobKey]) -> reqwest::Response {
    app.client
        .post(app.url("/warm"))
        .json(keys)
        .send()
        .await
        .expect("POST /warm")
}

/// Start a job with a text list, sent with `content_type` (none if `None`).
async fn warm_text(app: &TestApp, text: &str, content_type: Option<&str>) -> reqwest::Response {
    let mut req = app.client.post(app.url("/warm")).body(text.to_string());
    if let Some(t) = content_type {
        req = req.header("content-type", t);
    }
    req.send().await.expect("POST /warm")
}

/// The id of the job a 202 started, after checking the answer's shape.
async fn accepted(resp: reqwest::Response, total: u64) -> String {
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    let id = body["id"].as_str().expect("an id").to_string();
    assert_eq!(id.len(), 16, "{body}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{body}");
    assert_eq!(location, format!("/warm/{id}"));
    assert_eq!(body["total"], total, "{body}");
    id
}

async fn job(app: &TestApp, id: &str) -> Value {
    let resp = app.client.get(app.url(&format!("/warm/{id}"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let job: Value = resp.json().await.unwrap();
    let n = |f: &str| job[f].as_u64().unwrap_or_else(|| panic!("{f} in {job}"));
    assert_eq!(job["id"], id);
    assert_eq!(
        n("done") + n("failed") + n("not_found") + n("remaining"),
        n("total"),
        "{job}"
    );
    assert_eq!(job["failed_keys"].as_array().unwrap().len() as u64, n("failed"));
    assert_eq!(job["not_found_keys"].as_array().unwrap().len() as u64, n("not_found"));
    job
}

/// Wait for a job to finish and give its last status.
async fn finished(app: &TestApp, id: &str) -> Value {
    eventually_async("the warm-up job to finish", || async {
        job(app, id).await["state"] == "finished"
    })
    .await;
    let job = job(app, id).await;
    assert_eq!(job["remaining"], 0, "{job}");
    job
}

fn counts(job: &Value) -> [u64; 4] {
    ["total", "done", "failed", "not_found"].map(|f| job[f].as_u64().unwrap())
}

fn keys_of(v: &Value) -> HashSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

async fn scrape(app: &TestApp) -> String {
    app.metrics_text().await
}

#[tokio::test]
async fn warmed_blobs_are_hits_and_cost_one_store_read_each() {
    let app = TestApp::spawn().await;
    let bodies: Vec<Vec<u8>> = (0..100).map(|i| data(1000 + i, i as u64)).collect();
    let keys: Vec<BlobKey> = bodies.iter().map(|b| app.seed_store(b)).collect();
    let gets = app.store_gets().await;

    let id = accepted(warm_json(&app, &keys).await, 100).await;
    let job = finished(&app, &id).await;
    assert_eq!(counts(&job), [100, 100, 0, 0], "{job}");
    assert_eq!(app.store_gets().await - gets, 100, "one store read per blob");

    for (key, body) in keys.iter().zip(&bodies) {
        let resp = app.get(key).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-cache"], "hit", "{key}");
        assert!(resp.bytes().await.unwrap().as_ref() == body.as_slice());
    }
    assert_eq!(
        app.store_gets().await - gets,
        100,
        "the GETs read nothing from the store"
    );

    let metrics = scrape(&app).await;
    for line in [
        "blobcache_warm_blobs_total{result=\"fetched\"} 100",
        "blobcache_warm_read_bytes_total ",
        "blobcache_warm_jobs_total 1",
        "blobcache_warm_jobs_running 0",
    ] {
        assert!(metrics.lines().any(|l| l.starts_with(line)), "{line} in:\n{metrics}");
    }
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    assert!(metrics.contains(&format!("blobcache_warm_read_bytes_total {bytes}\n")));
}

#[tokio::test]
async fn unknown_blobs_are_not_found_and_the_job_finishes() {
    let app = TestApp::spawn().await;
    let present = app.seed_store(&data(500, 1));
    let absent: Vec<BlobKey> = (0..3).map(|i| BlobKey::of(format!("absent {i}").as_bytes())).collect();
    let mut list = absent.clone();
    list.insert(1, present);

    let id = accepted(warm_json(&app, &list).await, 4).await;
    let job = finished(&app, &id).await;
    assert_eq!(counts(&job), [4, 1, 0, 3], "{job}");
    let expected: HashSet<String> = absent.iter().map(ToString::to_string).collect();
    assert_eq!(keys_of(&job["not_found_keys"]), expected);
    assert!(job["failed_keys"].as_array().unwrap().is_empty());
    assert!(app.is_cached(&present).await);
}

#[tokio::test]
async fn blobs_this_node_holds_cost_no_store_request() {
    let app = TestApp::spawn().await;
    // Cached: written here, replicated, and copied into the cache.
    let cached: Vec<BlobKey> = (0..5).map(|i| data(2000, 10 + i)).map(|b| BlobKey::of(&b)).collect();
    for i in 0..5 {
        assert_eq!(app.put(&data(2000, 10 + i)).await.status(), 201);
    }
    for key in &cached {
        app.cached(key).await;
    }
    app.replicated().await;
    // Pending: acknowledged here while the store refuses writes.
    break_store(&app.store_dir());
    let pending_body = data(3000, 20);
    let pending = BlobKey::of(&pending_body);
    assert_eq!(app.put(&pending_body).await.status(), 201);
    // Only in the store.
    let cold: Vec<BlobKey> = (0..4).map(|i| app.seed_store(&data(1500, 30 + i))).collect();

    let gets = app.store_gets().await;
    let mut list = cached.clone();
    list.push(pending);
    list.extend(&cold);
    let id = accepted(warm_json(&app, &list).await, 10).await;
    let job = finished(&app, &id).await;
    assert_eq!(counts(&job), [10, 10, 0, 0], "{job}");
    assert_eq!(app.store_gets().await - gets, 4, "only the cold blobs are read");
    assert_eq!(app.status(&pending).await["pending"], true);
    for key in &cold {
        assert!(app.is_cached(key).await, "{key}");
    }
    let metrics = scrape(&app).await;
    assert!(
        metrics.contains("blobcache_warm_blobs_total{result=\"cached\"} 6\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("blobcache_warm_blobs_total{result=\"fetched\"} 4\n"),
        "{metrics}"
    );

    // Once everything is cached, the same list costs the store nothing at all.
    mend_store(&app.store_dir());
    app.replicated().await;
    app.cached(&pending).await;
    let (gets, heads) = (app.store_gets().await, app.stat("store.heads").await);
    let id = accepted(warm_json(&app, &list).await, 10).await;
    assert_eq!(counts(&finished(&app, &id).await), [10, 10, 0, 0]);
    assert_eq!(app.store_gets().await, gets, "no read");
    assert_eq!(app.stat("store.heads").await, heads, "no lookup");
}

#[tokio::test]
async fn at_most_two_blobs_are_warmed_at_once_and_clients_go_by() {
    let s3 = S3Server::start().await;
    let app = s3_nodes::patient_node(&s3).await;
    let mut keys = Vec::new();
    for i in 0..6 {
        keys.push(s3.put_object(&data(1000, 80 + i)).await);
    }
    let other = data(1000, 90);
    let other_key = s3.put_object(&other).await;
    // Every store request about the listed blobs waits until released.
    let held: Vec<String> = keys.iter().map(S3Server::object_path).collect();
    s3.fail(move |_, uri| held.iter().any(|p| uri.path() == p), Fault::Hold);

    let first = accepted(warm_json(&app, &keys[..3]).await, 3).await;
    let second = accepted(warm_json(&app, &keys[3..]).await, 3).await;
    eventually("two warm-up requests waiting on the store", || s3.held() == 2).await;
    // A client's cold read goes by while both jobs wait.
    let resp = app.get(&other_key).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().as_ref() == other.as_slice());
    assert_eq!(s3.held(), 2, "no more than two blobs at once, all jobs together");
    for id in [&first, &second] {
        let job = job(&app, id).await;
        assert_eq!(
            (job["state"].as_str(), job["remaining"].as_u64()),
            (Some("running"), Some(3))
        );
    }

    s3.release();
    for id in [&first, &second] {
        assert_eq!(counts(&finished(&app, id).await), [3, 3, 0, 0]);
    }
    for key in &keys {
        assert!(app.is_cached(key).await, "{key}");
    }
}

#[tokio::test]
async fn text_and_json_lists() {
    let app = TestApp::spawn().await;
    let keys: Vec<BlobKey> = (0..3).map(|i| app.seed_store(&data(100, 40 + i))).collect();
    let [a, b, c] = [0, 1, 2].map(|i| keys[i].to_string());

    // Text: comments, blank lines, either case, repeats dropped; any type but JSON is text.
    let text = format!(
        "# app 1 droplets\n{a}\n\n   \n{}  # upper case\r\n\t{a}\t\n{c}",
        b.to_uppercase()
    );
    for content_type in [
        Some("text/plain; charset=utf-8"),
        None,
        Some("application/octet-stream"),
    ] {
        let id = accepted(warm_text(&app, &text, content_type).await, 3).await;
        let job = finished(&app, &id).await;
        assert_eq!(counts(&job), [3, 3, 0, 0], "{content_type:?}: {job}");
    }
    // JSON, with parameters on its type; repeats dropped here too.
    let body = serde_json::to_string(&[&a, &b, &a]).unwrap();
    let id = accepted(warm_text(&app, &body, Some("Application/JSON; charset=utf-8")).await, 2).await;
    assert_eq!(counts(&finished(&app, &id).await), [2, 2, 0, 0]);
    // An empty list is a job that is done at once.
    let id = accepted(warm_json(&app, &[]).await, 0).await;
    assert_eq!(job(&app, &id).await["state"], "finished");
    let id = accepted(warm_text(&app, "# nothing today\n", None).await, 0).await;
    assert_eq!(counts(&finished(&app, &id).await), [0, 0, 0, 0]);
}

#[tokio::test]
async fn bad_lists_are_refused_and_start_no_job() {
    let app = TestApp::spawn().await;
    let good = app.seed_store(&data(100, 50)).to_string();

    let resp = warm_text(&app, &format!("[\"{good}\", \"{good}0\"]"), Some("application/json")).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_key");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{good}0")) && message.contains("item 1"),
        "{message}"
    );

    let resp = warm_text(&app, &format!("{good}\nnot-an-md5  # oops\n"), None).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_key");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("not-an-md5") && message.contains("line 2"),
        "{message}"
    );

    for json in ["{\"keys\": []}", "[1]", "[\"a\",", ""] {
        assert_error(
            warm_text(&app, json, Some("application/json")).await,
            400,
            "invalid_body",
        )
        .await;
    }
    assert_error(
        app.client
            .post(app.url("/warm"))
            .body(vec![0xff, 0xfe, b'\n'])
            .send()
            .await
            .unwrap(),
        400,
        "invalid_body",
    )
    .await;

    let metrics = scrape(&app).await;
    assert!(
        metrics.contains("blobcache_warm_jobs_total 0\n"),
        "no job started:\n{metrics}"
    );
    assert_eq!(app.stat("store.heads").await, 0);
    assert!(!app.is_cached(&good.parse().unwrap()).await);
}

#[tokio::test]
async fn oversized_lists_are_413() {
    let app = TestApp::spawn().await;
    let many: Vec<BlobKey> = (0..10_001u32).map(|i| BlobKey::of(&i.to_le_bytes())).collect();
    assert_error(warm_json(&app, &many).await, 413, "too_large").await;
    // Repeats do not count.
    let mut list = many[..10_000].to_vec();
    list.extend_from_slice(&many[..100]);
    let id = accepted(warm_json(&app, &list).await, 10_000).await;
    assert_eq!(job(&app, &id).await["total"], 10_000);

    // A body over 1 MiB is refused from its declared length, before it is read.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /warm HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        (1 << 20) + 1
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut answer))
        .await
        .expect("an answer without the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"too_large\""), "{answer}");
}

#[tokio::test]
async fn unknown_jobs_are_404() {
    let app = TestApp::spawn().await;
    for id in ["0123456789abcdef", "not-a-job"] {
        let resp = app.client.get(app.url(&format!("/warm/{id}"))).send().await.unwrap();
        assert_error(resp, 404, "not_found").await;
    }
}

#[tokio::test]
async fn a_delete_during_a_warm_wins() {
    let app = TestApp::spawn().await;
    // Blobs of a few chunks, so that reading one takes a while; each deleted
    // while its warm-up has just started.
    for seed in 0..12 {
        let body = data(3 * common::CHUNK + 1000, 60 + seed);
        let key = app.seed_store(&body);
        let gets = app.store_gets().await;
        let id = accepted(warm_json(&app, &[key]).await, 1).await;
        if seed % 2 == 1 {
            // Let the warm-up reach the store first.
            eventually_async("the warm-up to read the store", || async {
                app.store_gets().await > gets
            })
            .await;
        }
        let resp = app.client.delete(app.blob_url(&key)).send().await.unwrap();
        assert_eq!(resp.status(), 204);
        finished(&app, &id).await;
        assert_eq!(app.get(&key).await.status(), 404, "seed {seed}: deleted means gone");
        assert!(
            !app.is_cached(&key).await,
            "seed {seed}: not brought back into the cache"
        );
    }
}

/// Run `blobcache warm ARGS` against `app`, with a bounded wait.
async fn client_warm(app: &TestApp, list: &std::path::Path) -> Output {
    let dir = list.parent().expect("a list in a directory");
    let list = list.to_str().expect("a UTF-8 path");
    common::process::client(dir, &app.base, &["warm", list]).await
}

#[tokio::test]
async fn the_client_warms_a_list() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<BlobKey> = (0..5).map(|i| app.seed_store(&data(800, 70 + i))).collect();
    let mut text = String::from("# droplets\n");
    for k in &keys {
        text.push_str(&format!("{k}\n"));
    }
    let list = dir.path().join("list.txt");
    std::fs::write(&list, &text).unwrap();

    let out = client_warm(&app, &list).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}, stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim_end(), "total 5  done 5  failed 0  not_found 0");
    for k in &keys {
        assert!(app.is_cached(k).await, "{k}");
        assert_eq!(app.get(k).await.headers()["x-cache"], "hit");
    }

    // Some keys not found (and none failed): exit code 3, each named.
    let absent = BlobKey::of(b"never stored");
    std::fs::write(&list, format!("{}\n{absent}\n{}\n", keys[0], keys[1])).unwrap();
    let out = client_warm(&app, &list).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "stdout: {stdout}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            format!("{absent}  not_found").as_str(),
            "total 3  done 2  failed 0  not_found 1"
        ]
    );
}
