//! The node's own disk and its shutdown under faults: a full filesystem, a
//! store that is down at SIGTERM, a client that stalls mid-upload.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::{TestApp, assert_error, break_store, data, partial_put};
use blobcache::key::BlobKey;
use bytesize::ByteSize;

/// A small tmpfs mounted for one test (needs root, as CI runs), unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (this test needs root, as CI has)");
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a node of the test may still hold files open as it winds down.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs on a valid C string into a zeroed struct.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

#[tokio::test]
async fn a_full_disk_refuses_uploads_with_507_keeps_serving_and_deletes_hold() {
    let Some(disk) = SmallDisk::mount("300m") else { return };
    let data_dir = disk.path();
    std::fs::create_dir_all(&data_dir).unwrap();
    let mut settings = common::test_settings();
    settings.cache.memory_cache = Some(ByteSize::mib(64));
    settings.cache.disk_cache = Some(ByteSize::mib(256));
    settings.shutdown_grace = Some(Duration::from_secs(2));
    let dir = tempfile::TempDir::new_in(&data_dir).unwrap();
    let app = TestApp::spawn_in(dir, settings.clone()).await;
    // The disk tier's files were allocated in full up front: foyer never meets a full disk.
    use std::os::unix::fs::MetadataExt;
    let cache_files = common::files_under(&app.data_dir.join("cache"));
    let (len, allocated) = cache_files.iter().fold((0, 0), |(l, a), f| {
        let m = std::fs::metadata(f).unwrap();
        (l + m.len(), a + m.blocks() * 512)
    });
    assert!(
        len >= 128 << 20 && allocated >= len,
        "{len} bytes, {allocated} allocated"
    );
    let free_before = free_bytes(&data_dir);

    // Fill the rest with uploads (the local store shares the disk).
    let mut stored = Vec::new();
    let refused = loop {
        let body = data(4 << 20, 100 + stored.len() as u64);
        let resp = app.put(&body).await;
        if resp.status() != 201 {
            break resp;
        }
        stored.push(body);
        assert!(stored.len() < 40, "the disk never filled");
    };
    assert!(stored.len() >= 5, "some blobs fitted");
    assert!(
        free_bytes(&data_dir) < 4 << 20,
        "the disk is full: {} of {free_before} free",
        free_bytes(&data_dir)
    );
    assert_eq!(refused.headers()["retry-after"], "30");
    assert_error(refused, 507, "insufficient_storage").await;
    assert_eq!(
        common::files_under(&app.data_dir.join("spool/tmp")).len(),
        0,
        "nothing half-stored"
    );
    // What the node has, it keeps serving.
    for b in &stored {
        assert!(app.get(&BlobKey::of(b)).await.bytes().await.unwrap() == *b);
    }
    // DELETEs work on the full disk, and hold across a restart.
    let (gone, kept) = stored.split_at(2);
    for b in gone {
        let resp = app.client.delete(app.blob_url(&BlobKey::of(b))).send().await.unwrap();
        assert_eq!(resp.status(), 204);
    }
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, settings).await;
    for b in gone {
        assert_eq!(
            app.get(&BlobKey::of(b)).await.status(),
            404,
            "a deleted blob stays deleted"
        );
    }
    for b in kept {
        assert!(app.get(&BlobKey::of(b)).await.bytes().await.unwrap() == *b);
    }
    // Space comes back (deleting frees it): uploads are taken again, without a restart.
    for b in kept {
        let resp = app.client.delete(app.blob_url(&BlobKey::of(b))).send().await.unwrap();
        assert_eq!(resp.status(), 204);
    }
    let body = data(4 << 20, 999);
    assert_eq!(app.put(&body).await.status(), 201);
    assert!(app.get(&BlobKey::of(&body)).await.bytes().await.unwrap() == body);
}

#[tokio::test]
async fn a_disk_cache_larger_than_the_disk_is_refused_at_start() {
    let Some(disk) = SmallDisk::mount("64m") else { return };
    std::fs::create_dir_all(disk.path()).unwrap();
    let mut settings = common::test_settings();
    settings.data_dir = Some(disk.path());
    let config = blobcache::config::Config::from_settings(settings).unwrap();
    let e = match blobcache::app::App::build(config).await {
        Ok(_) => panic!("a 256 MiB disk cache on a 64 MiB disk started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("--disk-cache"), "{e}");
    // With no disk tier, the node runs there.
    let mut settings = common::test_settings();
    settings.cache.disk_cache = Some(ByteSize::b(0));
    let app = TestApp::spawn_in(tempfile::TempDir::new_in(disk.path()).unwrap(), settings).await;
    assert_eq!(app.put(b"small disk").await.status(), 201);
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_store_that_is_down() {
    let mut settings = common::test_settings();
    settings.shutdown_grace = Some(Duration::from_secs(30));
    let app = TestApp::spawn_with(settings).await;
    break_store(&app.store_dir());
    for i in 0..10 {
        assert_eq!(app.put(&data(50_000, 200 + i)).await.status(), 201);
    }
    common::eventually_async("the uploads to fail", || async {
        let stats = app.stats().await;
        stats["replication"]["upload_failures"].as_u64() >= Some(10) || stats["store"]["circuit"] == "open"
    })
    .await;
    let started = Instant::now();
    let dir = app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stopped in {:?}, not the 30 s grace",
        started.elapsed()
    );
    let pending = common::files_under(&dir.path().join("spool/pending"));
    assert_eq!(
        pending.iter().filter(|p| p.extension().is_none()).count(),
        10,
        "all kept"
    );
}

#[tokio::test]
async fn shutdown_cuts_an_upload_whose_client_stalled() {
    let mut settings = common::test_settings();
    settings.shutdown_grace = Some(Duration::from_secs(30));
    let app = TestApp::spawn_with(settings).await;
    let body = data(1 << 20, 300);
    let _sock = partial_put(&app.base, &body, 300_000).await;
    common::eventually_async("the upload to be under way", || async {
        app.stat("metrics.bytes_in").await >= 300_000
    })
    .await;
    let started = Instant::now();
    let dir = app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "stopped in {:?}, not the 30 s grace",
        started.elapsed()
    );
    assert!(
        common::files_under(&dir.path().join("spool")).is_empty(),
        "nothing stored"
    );
}
