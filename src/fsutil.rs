//! Small filesystem helpers for durable writes.

use std::io;
use std::path::Path;

/// fsync a directory so a rename or unlink inside it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Allocate `len` bytes for `file` up front, so that later writes into them
/// cannot fail for lack of space. Where the filesystem cannot (EOPNOTSUPP) the
/// file is only sized, with a warning.
pub fn allocate(file: &std::fs::File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let off = libc::off_t::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
    loop {
        // SAFETY: a plain syscall on a file descriptor that `file` keeps open.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) => {
                tracing::warn!(error = %err, "this filesystem cannot allocate space up front");
                return file.set_len(len.max(file.metadata()?.len()));
            }
            _ => return Err(err),
        }
    }
}

/// Whether an I/O error says the filesystem is full.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Remove every file directly inside `dir` (leftovers of interrupted writes).
pub async fn clear_dir(dir: &Path) -> io::Result<u64> {
    let mut removed = 0;
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        if entry.file_type().await?.is_file() {
            tokio::fs::remove_file(entry.path()).await?;
            removed += 1;
        }
    }
    Ok(removed)
}
