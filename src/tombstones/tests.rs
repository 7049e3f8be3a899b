//! Tests of the tombstone log: records, reopening, retention, torn writes, compaction, a full disk.
use super::*;
use std::io::Write;
use std::process::Command;

const HOUR: Duration = Duration::from_secs(3600);

fn key(i: u32) -> BlobKey {
    let mut b = [0xA5; 16];
    b[..4].copy_from_slice(&i.to_le_bytes());
    BlobKey::from_bytes(b)
}

/// `secs` before one "now" shared by every test (so two calls agree), in whole seconds (so µs round-trip).
fn ago(secs: u64) -> SystemTime {
    static NOW: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let now = *NOW.get_or_init(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs());
    UNIX_EPOCH + Duration::from_secs(now - secs)
}

fn slot_at(path: &Path, n: u64) -> [u8; 32] {
    let mut slot = [0; 32];
    File::open(path).unwrap().read_exact_at(&mut slot, n * SLOT).unwrap();
    slot
}

#[test]
fn record_lookup_and_replace_with_newer() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tombstones::open(&dir.path().join("t.log"), HOUR).unwrap();
    assert!(t.is_empty() && t.deleted_at(&key(1)).is_none());
    t.record(&key(1), ago(100)).unwrap();
    assert_eq!(t.deleted_at(&key(1)), Some(ago(100)));
    t.record(&key(1), ago(50)).unwrap();
    t.record(&key(1), ago(200)).unwrap(); // older: ignored, and not even written
    assert_eq!(t.deleted_at(&key(1)), Some(ago(50)));
    assert_eq!(slot_at(&t.path, 3), [0; 32]);
    assert_eq!((t.len(), t.deleted_at(&key(2))), (1, None));
    assert_eq!(t.since(ago(60)), vec![(key(1), ago(50))]);
    assert!(t.since(ago(40)).is_empty());
    assert!(format!("{t:?}").contains("len: 1"));
}

#[test]
fn reopen_keeps_records_and_retention_drops_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.log");
    let t = Tombstones::open(&path, HOUR).unwrap();
    let size = fs::metadata(&path).unwrap().len();
    assert_eq!(size, (INITIAL_CAPACITY + 1) * SLOT);
    (0..100).for_each(|i| t.record(&key(i), ago(10)).unwrap());
    t.record(&key(100), ago(7200)).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        size,
        "records go into preallocated space"
    );
    drop(t);
    let t = Tombstones::open(&path, HOUR).unwrap();
    assert_eq!(t.len(), 100);
    assert!((0..100).all(|i| t.deleted_at(&key(i)) == Some(ago(10))));
    assert_eq!(t.deleted_at(&key(100)), None);
}

#[test]
fn torn_or_garbage_records_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.log");
    let t = Tombstones::open(&path, HOUR).unwrap();
    (1..=3).for_each(|i| t.record(&key(i), ago(10)).unwrap());
    drop(t);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0xFF; 5], 2 * SLOT + 20).unwrap(); // damage key 2's record
    f.write_all_at(&key(4).as_bytes()[..], 4 * SLOT).unwrap(); // a torn append: key only
    let t = Tombstones::open(&path, HOUR).unwrap();
    assert_eq!((t.len(), t.deleted_at(&key(2)), t.deleted_at(&key(4))), (2, None, None));
    t.record(&key(5), ago(1)).unwrap(); // appended after the torn slot
    drop(t);
    let t = Tombstones::open(&path, HOUR).unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(t.deleted_at(&key(5)), Some(ago(1)));
}

#[test]
fn a_wrong_header_is_an_error_and_the_file_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.log");
    fs::write(&path, [7u8; 4096]).unwrap();
    let err = Tombstones::open(&path, HOUR).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.to_string().contains("bad magic"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), [7u8; 4096]);
    let mut header = [0u8; 24];
    header[..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&99u32.to_le_bytes());
    fs::write(&path, seal(&header)).unwrap();
    let err = Tombstones::open(&path, HOUR).unwrap_err();
    assert!(err.to_string().contains("unsupported version 99"), "{err}");
}

#[test]
fn filling_past_capacity_compacts_and_keeps_live_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.log");
    let t = Tombstones::open_with(&path, HOUR, 8).unwrap();
    t.record(&key(999), ago(7200)).unwrap(); // expired: dropped by compaction
    (0..20).for_each(|i| t.record(&key(i), ago(100 - u64::from(i))).unwrap());
    assert_eq!(t.len(), 20);
    drop(t);
    let t = Tombstones::open_with(&path, HOUR, 8).unwrap();
    assert!((0..20).all(|i| t.deleted_at(&key(i)) == Some(ago(100 - u64::from(i)))));
    assert_eq!(t.deleted_at(&key(999)), None);
    // Many newer records of one key: compaction keeps the file at its size, and reopening compacts the dead.
    let path = dir.path().join("one.log");
    let t = Tombstones::open_with(&path, HOUR, 8).unwrap();
    (0..50).for_each(|s| t.record(&key(0), ago(60 - s)).unwrap());
    assert_eq!(fs::metadata(&path).unwrap().len(), 9 * SLOT);
    assert_ne!(slot_at(&path, 2), [0; 32]);
    drop(t);
    let t = Tombstones::open_with(&path, HOUR, 8).unwrap();
    assert_eq!((t.len(), t.deleted_at(&key(0))), (1, Some(ago(11))));
    assert_eq!(slot_at(&path, 2), [0; 32]);
    assert!(!tmp_path(&path).exists());
}

/// Unmounts on drop, so a failing test does not leave a mount behind.
struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn records_on_a_full_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path();
    match Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(mnt)
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => return eprintln!("skipped: mount failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => return eprintln!("skipped: cannot run mount: {e}"),
    }
    let _unmount = Unmount(mnt.to_owned());
    const CAP: u64 = 1024; // 32 KiB: records span several pages, so each new page must already be reserved
    let path = mnt.join("t.log");
    let t = Tombstones::open_with(&path, HOUR, CAP).unwrap();
    let mut filler = File::create(mnt.join("filler")).unwrap();
    let err = loop {
        if let Err(e) = filler.write_all(&[0xEE; 4096]) {
            break e;
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    drop(filler);
    (0..CAP as u32).for_each(|i| t.record(&key(i), ago(10)).unwrap());
    // The region is full and compaction needs a bigger file: refused, nothing changed, old log in use.
    let err = t.record(&key(CAP as u32), ago(10)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert_eq!((t.len(), t.deleted_at(&key(CAP as u32))), (CAP as usize, None));
    assert!(!tmp_path(&path).exists());
    drop(t);
    let t = Tombstones::open_with(&path, HOUR, CAP).unwrap();
    assert!((0..CAP as u32).all(|i| t.deleted_at(&key(i)) == Some(ago(10))));
}

#[test]
fn is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tombstones>();
}
