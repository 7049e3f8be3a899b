//! blobcache in front of a real S3-protocol server (s3s-fs over HTTP, in process):
//! the API, uploads, cold reads, coalescing and partial fills.

use crate::common::s3_nodes::*;
use crate::common::s3_server::{Fault, Pace, S3Server};
use crate::common::{CHUNK, TestApp, assert_error, data, eventually};
use blobcache::key::BlobKey;
use bytesize::ByteSize;

#[tokio::test]
async fn the_whole_api_works_through_s3() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let small = data(1000, 1);
    let big = data(3 * CHUNK + CHUNK / 2, 2);
    let (ks, kb) = (BlobKey::of(&small), BlobKey::of(&big));
    assert_eq!(a.put(&small).await.status(), 201);
    assert_eq!(a.put(&big).await.status(), 201);
    let posted = a.post_to("/blobs", b"posted by the server").await;
    assert_eq!(posted.status(), 201);
    let kp = BlobKey::of(b"posted by the server");
    a.replicated().await;

    // Each blob is an object at <prefix>/<md5>; a single PUT's ETag is the MD5,
    // and the MD5 is in the metadata as well.
    for (key, bytes) in [(ks, &small[..]), (kb, &big[..]), (kp, &b"posted by the server"[..])] {
        let (stored, out) = s3.object(&key).await.expect("object in the bucket");
        assert!(stored == bytes, "object bytes of {key}");
        assert_eq!(out.e_tag().unwrap().trim_matches('"'), key.to_string());
        assert_eq!(out.metadata().unwrap()["md5"], key.to_string());
    }
    let puts = s3.requests_for("PUT", &kb);
    assert_eq!(puts.len(), 1);
    assert!(puts[0].content_md5.is_some(), "uploads carry Content-MD5");

    let st: serde_json::Value = a
        .client
        .get(a.url(&format!("/blobs/{kb}/status")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["in_store"], true);
    assert_eq!(st["pending"], false);

    // A second node, with nothing cached, reads each blob through from S3.
    let b = node(&s3).await;
    s3.clear_log();
    let head = b.client.head(b.blob_url(&kb)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], big.len().to_string());
    assert!(
        s3.requests().iter().all(|s| s.method == "HEAD"),
        "HEAD of a cold blob never downloads it: {:?}",
        s3.requests()
    );
    for (key, bytes) in [(ks, &small[..]), (kb, &big[..])] {
        let resp = b.get(&key).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-cache"], "miss");
        assert_eq!(resp.headers()["x-blob-durability"], "stored");
        assert!(resp.bytes().await.unwrap() == bytes, "body of {key}");
    }
    b.cached(&kb).await;
    let again = b.get(&kb).await;
    assert_eq!(again.headers()["x-cache"], "hit");
    assert!(again.bytes().await.unwrap() == big);

    // DELETE on one node removes the object from S3.
    assert_eq!(b.client.delete(b.blob_url(&ks)).send().await.unwrap().status(), 204);
    assert!(s3.object(&ks).await.is_none(), "the object is gone from the bucket");
    assert_error(b.get(&ks).await, 404, "not_found").await;
    let fresh = node(&s3).await;
    assert_error(fresh.get(&ks).await, 404, "not_found").await;
    assert_eq!(
        fresh.client.delete(fresh.blob_url(&ks)).send().await.unwrap().status(),
        204
    );
}

#[tokio::test]
async fn objects_written_by_another_tool_are_served() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let bytes = data(CHUNK + 12_345, 3);
    let key = s3.put_object(&bytes).await;
    let resp = a.get(&key).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap() == bytes);
    let range = a.get_range(&key, "bytes=100-199").await;
    assert_eq!(range.status(), 206);
    assert!(range.bytes().await.unwrap() == bytes[100..200]);
    // A PUT of a blob the bucket already has is answered without storing it again.
    s3.clear_log();
    assert_eq!(a.put(&bytes).await.status(), 200);
    assert!(s3.requests_for("PUT", &key).is_empty());
}

#[tokio::test]
async fn large_blobs_go_up_in_parts_each_checked() {
    let s3 = S3Server::start().await;
    let mut settings = node_settings(&s3);
    settings.store.s3_multipart_threshold = Some(ByteSize::mib(5));
    settings.store.s3_part_size = Some(ByteSize::mib(5));
    let a = TestApp::spawn_with(settings).await;
    let bytes = data(12 * 1024 * 1024 + 7, 4);
    let key = BlobKey::of(&bytes);
    let resp = a.put_stored(&key, &bytes).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-blob-durability"], "stored");

    let parts: Vec<_> = s3
        .requests_for("PUT", &key)
        .into_iter()
        .filter(|s| s.query.contains("partNumber"))
        .collect();
    assert_eq!(parts.len(), 3, "three parts of 5 MiB, 5 MiB and 2 MiB");
    assert!(parts.iter().all(|p| p.content_md5.is_some() && p.status == 200));
    let (stored, out) = s3.object(&key).await.expect("object");
    assert!(stored == bytes);
    assert_eq!(
        out.metadata().unwrap()["md5"],
        key.to_string(),
        "the MD5 survives multipart"
    );

    // Read back through a cold node.
    let b = node(&s3).await;
    assert!(b.get(&key).await.bytes().await.unwrap() == bytes);
}

#[tokio::test]
async fn a_failed_multipart_upload_is_aborted_and_nothing_is_stored() {
    let s3 = S3Server::start().await;
    let mut settings = node_settings(&s3);
    settings.store.s3_multipart_threshold = Some(ByteSize::mib(5));
    settings.store.s3_part_size = Some(ByteSize::mib(5));
    let a = TestApp::spawn_with(settings).await;
    let bytes = data(11 * 1024 * 1024, 5);
    let key = BlobKey::of(&bytes);
    s3.fail(
        |m, u| m == http::Method::PUT && u.query().is_some_and(|q| q.contains("partNumber=2")),
        Fault::Error(500, "InternalError"),
    );
    let resp = a.put_stored(&key, &bytes).await;
    assert_error(resp, 503, "store_unavailable").await;
    assert!(
        s3.requests()
            .iter()
            .any(|s| s.method == "DELETE" && s.query.contains("uploadId")),
        "the upload was aborted: {:?}",
        s3.requests()
    );
    s3.heal();
    // s3s-fs keeps an unfinished upload as `.upload*` files at its root.
    let left: Vec<_> = std::fs::read_dir(&s3.root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".upload"))
        .collect();
    assert!(left.is_empty(), "no unfinished upload is left: {left:?}");
    assert!(s3.object(&key).await.is_none(), "nothing was stored");
    assert!(a.spool_files().is_empty(), "nothing is left in the spool");
}

#[tokio::test]
async fn a_range_of_a_cold_blob_reads_only_its_chunks() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let bytes = data(3 * CHUNK + CHUNK / 2, 6);
    let key = s3.put_object(&bytes).await;
    s3.clear_log();

    let start = 2 * CHUNK + 10;
    let resp = a.get_range(&key, &format!("bytes={start}-{}", start + 99)).await;
    assert_eq!(resp.status(), 206);
    assert!(resp.bytes().await.unwrap() == bytes[start..start + 100]);
    let gets: Vec<_> = s3.requests().into_iter().filter(is_object_get).collect();
    assert_eq!(gets.len(), 1, "one ranged read: {gets:?}");
    assert_eq!(
        gets[0].range.as_deref(),
        Some(format!("bytes={}-{}", 2 * CHUNK, 3 * CHUNK - 1).as_str()),
        "chunk-aligned"
    );
    assert_eq!(gets[0].bytes, CHUNK as u64);

    // A full read later fetches only the chunks still missing.
    s3.clear_log();
    assert!(a.get(&key).await.bytes().await.unwrap() == bytes);
    let gets: Vec<_> = s3.requests().into_iter().filter(is_object_get).collect();
    assert_eq!(gets.len(), 3, "chunks 0, 1 and 3: {gets:?}");
    assert_eq!(gets.iter().map(|g| g.bytes).sum::<u64>(), (bytes.len() - CHUNK) as u64);
}

#[tokio::test]
async fn a_cold_herd_costs_one_read_per_chunk() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let bytes = data(3 * CHUNK + CHUNK / 2, 7);
    let key = s3.put_object(&bytes).await;
    s3.clear_log();

    let clients = (0..32).map(|_| {
        let client = a.client.clone();
        let url = a.blob_url(&key);
        async move {
            let resp = client.get(url).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap()
        }
    });
    for body in futures::future::join_all(clients).await {
        assert!(body == bytes);
    }
    let gets: Vec<_> = s3.requests().into_iter().filter(is_object_get).collect();
    assert_eq!(gets.len(), 4, "one read per chunk: {gets:?}");
    assert_eq!(gets.iter().map(|g| g.bytes).sum::<u64>(), bytes.len() as u64);
    let heads = s3.requests_for("HEAD", &key).len();
    assert!(heads <= 2, "concurrent lookups share a HeadObject, got {heads}");
}

#[tokio::test]
async fn a_cold_read_streams_to_every_client_as_the_bytes_arrive() {
    let s3 = S3Server::start().await;
    let a = patient_node(&s3).await;
    let bytes = data(3 * CHUNK, 14);
    let key = s3.put_object(&bytes).await;
    // Every read of the object sends its first 512 KiB, then waits.
    s3.stall_reads_of(&key, 512 * 1024);
    // No chunk can be complete, yet every client already has bytes.
    let clients = readers_with_first_bytes(&a, &key, 8, 512 * 1024).await;
    assert_eq!(a.stat("metrics.fills").await, 1);
    s3.release();
    for c in clients {
        assert!(c.await.unwrap().expect("a whole body") == bytes);
    }
    let gets: Vec<_> = s3.requests().into_iter().filter(is_object_get).collect();
    assert_eq!(gets.len(), 3, "one read per chunk: {gets:?}");
}

/// With a store that takes a while to answer each request (as S3 does over a
/// network), a cold read asks for several chunks at once, still reads each
/// chunk once, and still checks the whole blob against its key.
#[tokio::test]
async fn a_cold_read_of_a_slow_store_reads_chunks_in_parallel_once_each() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let bytes = data(5 * CHUNK + 17, 15);
    let key = s3.put_object(&bytes).await;
    let mut bad = data(3 * CHUNK, 16);
    let bad_key = BlobKey::of(&bad);
    bad[2 * CHUNK + 1] ^= 1;
    s3.put_object_as(&bad_key, &bad).await;
    s3.clear_log();
    s3.pace(Pace {
        latency: std::time::Duration::from_millis(100),
        bandwidth: 64 * 1024 * 1024,
    });

    let resp = a.get(&key).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap() == bytes);
    let gets: Vec<_> = s3.requests().into_iter().filter(is_object_get).collect();
    assert_eq!(gets.len(), 6, "one read per chunk: {gets:?}");
    assert_eq!(gets.iter().map(|g| g.bytes).sum::<u64>(), bytes.len() as u64);
    assert!(
        s3.most_concurrent_gets() >= 2,
        "chunks are read in parallel: at most {} at once",
        s3.most_concurrent_gets()
    );
    a.cached(&key).await;

    // A damaged object read the same way is cut short and never cached.
    let resp = a.get(&bad_key).await;
    if resp.status() == 200 {
        let body = resp.bytes().await;
        assert!(
            body.is_err() || body.unwrap().len() < bad.len(),
            "the response was cut short"
        );
    }
    assert!(!a.is_cached(&bad_key).await, "not cached");
}

/// A cold GET asks for the first chunk alongside the lookup of the blob's
/// size (one round trip to S3 before the first byte, not two), and that read
/// is the chunk's only one. A HEAD, a range or a cached first chunk ask for nothing.
#[tokio::test]
async fn a_cold_read_asks_for_its_first_chunk_without_waiting_for_the_lookup() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let bytes = data(2 * CHUNK + 3, 17);
    let key = s3.put_object(&bytes).await;
    s3.clear_log();
    let object = S3Server::object_path(&key);
    s3.fail(move |m, u| m == http::Method::HEAD && u.path() == object, Fault::Hold);
    let (client, url) = (a.client.clone(), a.blob_url(&key));
    let get = tokio::spawn(async move { client.get(url).send().await.unwrap().bytes().await.unwrap() });
    eventually("the first chunk to be read while the lookup waits", || {
        s3.held() == 1 && s3.requests().iter().any(is_object_get)
    })
    .await;
    s3.release();
    assert!(get.await.unwrap() == bytes);
    let gets: Vec<_> = s3.requests().into_iter().filter(is_object_get).collect();
    assert_eq!(gets.len(), 3, "one read per chunk: {gets:?}");
    assert_eq!(gets.iter().map(|g| g.bytes).sum::<u64>(), bytes.len() as u64);

    s3.heal();
    let other = s3.put_object(&data(CHUNK + 1, 18)).await;
    s3.clear_log();
    assert_eq!(a.client.head(a.blob_url(&other)).send().await.unwrap().status(), 200);
    assert_eq!(a.get_range(&other, "bytes=1-2").await.status(), 206);
    let gets: Vec<_> = s3.requests().into_iter().filter(is_object_get).collect();
    assert_eq!(gets.len(), 1, "only the range's chunk was read: {gets:?}");
}

#[tokio::test]
async fn an_object_that_does_not_match_its_key_is_never_served_whole_nor_cached() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let good = data(2 * CHUNK + 99, 8);
    let key = BlobKey::of(&good);
    let mut bad = good.clone();
    bad[CHUNK + 5] ^= 1;
    s3.put_object_as(&key, &bad).await;

    for _ in 0..2 {
        match a.get(&key).await {
            resp if resp.status() == 200 => {
                let body = resp.bytes().await;
                assert!(
                    body.is_err() || body.unwrap().len() < bad.len(),
                    "the response was cut short"
                );
            }
            resp => assert_eq!(resp.status(), 502),
        }
    }
    assert!(!a.is_cached(&key).await, "not cached");
    assert!(a.stat("metrics.integrity_failures").await >= 1);
    let metrics = a.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("blobcache_integrity_failures_total") && !l.ends_with(" 0")),
        "the failure is counted"
    );
}

/// Sizes at the edges (empty, one byte, a chunk either side) go up and come back through S3.
#[tokio::test]
async fn edge_sizes_round_trip_through_s3() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let blobs: Vec<Vec<u8>> = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1]
        .iter()
        .enumerate()
        .map(|(i, &n)| data(n, 200 + i as u64))
        .collect();
    for b in &blobs {
        assert_eq!(a.put(b).await.status(), 201, "{} bytes", b.len());
    }
    a.replicated().await;
    let cold = node(&s3).await;
    for b in &blobs {
        let key = BlobKey::of(b);
        let (stored, _) = s3.object(&key).await.expect("in the bucket");
        assert!(&stored == b, "{} bytes stored", b.len());
        let resp = cold.get(&key).await;
        assert_eq!(resp.status(), 200, "{} bytes", b.len());
        assert_eq!(resp.headers()["content-length"], b.len().to_string());
        assert!(
            resp.bytes().await.unwrap() == b.as_slice(),
            "{} bytes read back",
            b.len()
        );
    }
}

/// Lookups of a cold blob's size (HEAD, GET, range GET) share one HeadObject when concurrent.
#[tokio::test]
async fn concurrent_heads_share_one_head_object() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let key = s3.put_object(&data(10_000, 17)).await;
    s3.clear_log();
    let heads = (0..32).map(|_| a.client.head(a.blob_url(&key)).send());
    for resp in futures::future::join_all(heads).await {
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-length"], "10000");
    }
    let sent = s3.requests_for("HEAD", &key).len();
    assert!((1..=8).contains(&sent), "32 HEADs sent {sent} HeadObjects");
    assert!(s3.requests().iter().all(|s| s.method == "HEAD"), "no body was read");
}

/// A whole GET after a range read of the first chunk reads only the chunks still missing.
#[tokio::test]
async fn a_whole_read_after_a_range_of_the_first_chunk() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let bytes = data(2 * CHUNK + 5, 18);
    let key = s3.put_object(&bytes).await;
    let range = a.get_range(&key, "bytes=0-9").await;
    assert_eq!(range.status(), 206);
    assert!(range.bytes().await.unwrap() == bytes[..10]);
    let resp = a.get(&key).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], bytes.len().to_string());
    assert!(resp.bytes().await.unwrap() == bytes);
    let gets: Vec<_> = s3.requests().into_iter().filter(is_object_get).collect();
    assert_eq!(gets.len(), 3, "each chunk read once: {gets:?}");
}
