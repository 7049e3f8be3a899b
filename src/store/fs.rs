//! The local-directory store: the embedded default, so blobcache runs with no S3 at all.
//!
//! Layout: `<root>/ab/cd/<md5>`; writes go to `<root>/.tmp/` first and are renamed
//! into place after an fsync, so a reader never sees a partial blob. Tombstones
//! are empty files in `<root>/.blobcache-tombstones/`, named by time and key.

use std::io::{self, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{ByteStream, Store, StoreError, StoreErrorKind, Tombstone};
use crate::fsutil;
use crate::key::BlobKey;

const READ_BUFFER: usize = 256 * 1024;

/// A store in a local directory.
#[derive(Debug)]
pub struct FsStore {
    root: PathBuf,
    tmp: PathBuf,
    tombstones: PathBuf,
}

impl FsStore {
    /// Open (and create) the store directory; leftovers of interrupted writes
    /// are removed. A directory that cannot be used yet (a disk not mounted, a
    /// broken staging directory) is not an error here: like an unreachable S3,
    /// it is what `probe` reports, so a node with data to serve still starts.
    pub async fn open(root: &Path) -> io::Result<Self> {
        let tmp = root.join(".tmp");
        let prepared = async {
            tokio::fs::create_dir_all(&tmp).await?;
            fsutil::clear_dir(&tmp).await
        };
        if let Err(e) = prepared.await {
            tracing::warn!(store = %root.display(), error = %e, "the local store cannot be prepared yet");
        }
        Ok(FsStore {
            root: root.to_path_buf(),
            tmp,
            tombstones: root.join(super::TOMBSTONE_DIR),
        })
    }

    fn path_of(&self, key: &BlobKey) -> PathBuf {
        let hex = key.to_string();
        self.root.join(&hex[0..2]).join(&hex[2..4]).join(hex)
    }
}

fn unavailable(what: &str, e: io::Error) -> StoreError {
    StoreError::new(StoreErrorKind::Unavailable, format!("{what} in the local store")).with_source(e)
}

fn io_error(key: &BlobKey, what: &str, e: io::Error) -> StoreError {
    let kind = match e.kind() {
        io::ErrorKind::NotFound => StoreErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => StoreErrorKind::Denied,
        _ => StoreErrorKind::Unavailable,
    };
    StoreError::new(kind, format!("{what} {key} in the local store")).with_source(e)
}

#[async_trait]
impl Store for FsStore {
    async fn head(&self, key: &BlobKey) -> Result<u64, StoreError> {
        let meta = tokio::fs::metadata(self.path_of(key))
            .await
            .map_err(|e| io_error(key, "stat", e))?;
        Ok(meta.len())
    }

    async fn get(&self, key: &BlobKey, range: Range<u64>) -> Result<ByteStream, StoreError> {
        let mut file = tokio::fs::File::open(self.path_of(key))
            .await
            .map_err(|e| io_error(key, "open", e))?;
        if range.start > 0 {
            file.seek(SeekFrom::Start(range.start))
                .await
                .map_err(|e| io_error(key, "seek", e))?;
        }
        let key = *key;
        let reader = file.take(range.end - range.start);
        Ok(ReaderStream::with_capacity(reader, READ_BUFFER)
            .map(move |r| r.map_err(|e| io_error(&key, "read", e)))
            .boxed())
    }

    /// The caller checked the file against the blob's digests just before; the
    /// store shares its inode (a hard link), or copies it across filesystems.
    async fn put_file(&self, key: &BlobKey, path: &Path, _size: u64, _: &[[u8; 16]]) -> Result<(), StoreError> {
        let dest = self.path_of(key);
        let tmp = self.tmp.join(format!("{key}.{:016x}", rand::random::<u64>()));
        let src = path.to_path_buf();
        let key = *key;
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let parent = dest.parent().expect("fan-out directories");
            std::fs::create_dir_all(parent)?;
            let result = (|| {
                // Blobs are immutable, so the store may share the spool file's inode:
                // a hard link costs nothing. Across filesystems, copy.
                match std::fs::hard_link(&src, &tmp) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EXDEV) || e.kind() == io::ErrorKind::PermissionDenied => {
                        std::fs::copy(&src, &tmp)?;
                    }
                    Err(e) => return Err(e),
                }
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &dest)?;
                fsutil::sync_dir(parent)
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        })
        .await
        .map_err(|e| StoreError::new(StoreErrorKind::Unavailable, "store write task failed").with_source(e))?
        .map_err(|e| io_error(&key, "write", e))
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.path_of(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(key, "delete", e)),
        }
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let unavailable = || {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("local store {} cannot take writes", self.root.display()),
            )
        };
        match tokio::fs::metadata(&self.tmp).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(unavailable()),
            Err(e) => Err(unavailable().with_source(e)),
        }
    }

    async fn put_tombstone(&self, key: &BlobKey, at: SystemTime) -> Result<(), StoreError> {
        let dir = self.tombstones.clone();
        let name = super::tombstone_name(&Tombstone { key: *key, at }, SystemTime::now());
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            std::fs::File::create(dir.join(name))?.sync_all()?;
            fsutil::sync_dir(&dir)
        })
        .await
        .expect("store task")
        .map_err(|e| io_error(key, "record the deletion of", e))
    }

    async fn tombstones(&self, since: SystemTime) -> Result<Vec<Tombstone>, StoreError> {
        let dir = self.tombstones.clone();
        let start = super::tombstone_start(since);
        tokio::task::spawn_blocking(move || -> io::Result<Vec<Tombstone>> {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let mut names = Vec::new();
            for entry in entries {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if name > start {
                    names.push(name);
                }
            }
            names.sort();
            Ok(names.iter().filter_map(|n| super::parse_tombstone_name(n)).collect())
        })
        .await
        .expect("store task")
        .map_err(|e| unavailable("list the tombstones", e))
    }

    async fn expire_tombstones(&self, before: SystemTime) -> Result<u64, StoreError> {
        let dir = self.tombstones.clone();
        let end = super::tombstone_start(before);
        tokio::task::spawn_blocking(move || -> io::Result<u64> {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return Ok(0);
            };
            let mut removed = 0;
            for entry in entries {
                let entry = entry?;
                if entry.file_name().to_string_lossy().as_ref() < end.as_str() {
                    std::fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
        .expect("store task")
        .map_err(|e| unavailable("expire the tombstones", e))
    }

    /// Any bucket; the object is the blob's file, by its name.
    fn blob_of_object(&self, _bucket: &str, object: &str) -> Option<BlobKey> {
        let name = object.rsplit('/').next()?;
        if name.len() != 32 {
            return None;
        }
        name.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[tokio::test]
    async fn put_get_range_head_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(&dir.path().join("store")).await.unwrap();
        let data = b"hello, blobcache".to_vec();
        let key = BlobKey::of(&data);
        let src = dir.path().join("src");
        std::fs::write(&src, &data).unwrap();

        assert!(store.head(&key).await.unwrap_err().is_not_found());
        store.put_file(&key, &src, data.len() as u64, &[]).await.unwrap();
        assert_eq!(store.head(&key).await.unwrap(), data.len() as u64);
        let hex = key.to_string();
        assert!(
            dir.path()
                .join("store")
                .join(&hex[..2])
                .join(&hex[2..4])
                .join(&hex)
                .is_file()
        );

        let got: Vec<u8> = store
            .get(&key, 7..16)
            .await
            .unwrap()
            .map_ok(|b| b.to_vec())
            .try_concat()
            .await
            .unwrap();
        assert_eq!(got, b"blobcache");

        store.delete(&key).await.unwrap();
        store.delete(&key).await.unwrap();
        assert!(store.head(&key).await.unwrap_err().is_not_found());
        assert_eq!(std::fs::read_dir(dir.path().join("store/.tmp")).unwrap().count(), 0);
    }
}
