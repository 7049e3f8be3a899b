//! The spool: uploads land in `tmp/` while they stream and are hashed; a
//! verified blob is fsynced and renamed to `pending/<md5>`, and only then
//! acknowledged. `pending/` is the durable write-back queue: plain files, never
//! the cache (which may evict).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::writer::SpoolWriter;
use crate::fsutil;
use crate::key::BlobKey;

/// The spool directories.
#[derive(Debug)]
pub struct Spool {
    tmp: PathBuf,
    pending: PathBuf,
}

/// A blob found in `pending/` at start-up.
#[derive(Debug, Clone, Copy)]
pub struct PendingFile {
    pub key: BlobKey,
    pub size: u64,
    pub modified: std::time::SystemTime,
}

impl Spool {
    /// Open the spool; half-written uploads (never acknowledged) are removed.
    /// Returns the pending blobs found, to be replayed.
    pub async fn open(dir: &Path) -> io::Result<(Spool, Vec<PendingFile>)> {
        let tmp = dir.join("tmp");
        let pending = dir.join("pending");
        tokio::fs::create_dir_all(&tmp).await?;
        tokio::fs::create_dir_all(&pending).await?;
        let removed = fsutil::clear_dir(&tmp).await?;
        if removed > 0 {
            tracing::info!(removed, "removed half-written uploads from the spool");
        }
        let mut found = Vec::new();
        let mut entries = tokio::fs::read_dir(&pending).await?;
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            let key = name.to_str().and_then(|n| n.parse::<BlobKey>().ok());
            let meta = entry.metadata().await?;
            match key {
                Some(key) if meta.is_file() => found.push(PendingFile {
                    key,
                    size: meta.len(),
                    modified: meta.modified()?,
                }),
                _ => tracing::warn!(file = ?entry.path(), "ignoring a stray file in the pending spool"),
            }
        }
        found.sort_by_key(|p| p.modified);
        Ok((Spool { tmp, pending }, found))
    }

    /// A writer for a new temporary upload file; the file is removed when the
    /// guard drops unless the upload is committed.
    pub fn temp_file(&self) -> io::Result<(SpoolWriter, TempGuard)> {
        let path = self.tmp.join(format!("{:016x}", rand::random::<u64>()));
        let (file, direct) = super::writer::create(&path)?;
        Ok((SpoolWriter::new(file, direct), TempGuard { path: Some(path) }))
    }

    pub fn pending_path(&self, key: &BlobKey) -> PathBuf {
        self.pending.join(key.to_string())
    }

    /// Make a verified upload durable: fsync the data, rename it into
    /// `pending/`, fsync the directory. Blocking; call off the async threads.
    pub fn commit(&self, mut guard: TempGuard, file: &File, key: &BlobKey) -> io::Result<PathBuf> {
        file.sync_all()?;
        let from = guard.path.take().expect("an armed guard");
        let to = self.pending_path(key);
        if let Err(e) = std::fs::rename(&from, &to) {
            let _ = std::fs::remove_file(&from);
            return Err(e);
        }
        fsutil::sync_dir(&self.pending)?;
        Ok(to)
    }

    /// Open a pending blob for reading, if it is still pending.
    pub fn open_pending(&self, key: &BlobKey) -> io::Result<Option<(File, u64)>> {
        match File::open(self.pending_path(key)) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Remove a pending blob (it reached the store, or was deleted). Blocking.
    pub fn remove_pending(&self, key: &BlobKey) -> io::Result<bool> {
        match std::fs::remove_file(self.pending_path(key)) {
            Ok(()) => {
                fsutil::sync_dir(&self.pending)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Removes an uncommitted temporary upload file when dropped (a failed
/// upload, a digest mismatch, a client that went away).
#[derive(Debug)]
pub struct TempGuard {
    path: Option<PathBuf>,
}

impl TempGuard {
    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("an armed guard")
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take()
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(file = ?path, error = %e, "could not remove an abandoned upload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commit_moves_to_pending_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, found) = Spool::open(dir.path()).await.unwrap();
        assert!(found.is_empty());

        let (mut w, guard) = spool.temp_file().unwrap();
        let tmp_path = guard.path().to_path_buf();
        w.write(b"abc").unwrap();
        drop(guard);
        assert!(!tmp_path.exists(), "an abandoned upload is removed");

        let (mut w, guard) = spool.temp_file().unwrap();
        w.write(b"abc").unwrap();
        let f = w.finish().unwrap();
        let key = BlobKey::of(b"abc");
        let path = spool.commit(guard, &f, &key).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        assert_eq!(spool.open_pending(&key).unwrap().unwrap().1, 3);

        // A leftover temp file is cleaned at the next open; the pending blob is found.
        let (_f, guard) = spool.temp_file().unwrap();
        std::mem::forget(guard);
        let (spool, found) = Spool::open(dir.path()).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key, key);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(spool.remove_pending(&key).unwrap());
        assert!(!spool.remove_pending(&key).unwrap());
    }
}
