//! The multipart uploads this node has under way, one small file each, so that
//! uploads a crash (`kill -9`) cut short are aborted at the next start instead
//! of lying in the bucket, billed, forever.

use std::io;
use std::path::{Path, PathBuf};

/// A directory of records `<random>.upload`, each `object\nupload id\n`.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
}

/// A multipart upload recorded in the journal.
#[derive(Debug, Clone)]
pub struct Unfinished {
    pub path: PathBuf,
    pub object: String,
    pub upload_id: String,
}

impl Journal {
    pub fn open(dir: &Path) -> io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        Ok(Journal { dir: dir.to_path_buf() })
    }

    /// Record an upload before its first part is sent; durable when this returns.
    pub async fn begin(&self, object: &str, upload_id: &str) -> io::Result<PathBuf> {
        let path = self.dir.join(format!("{:016x}.upload", rand::random::<u64>()));
        let (dir, file, text) = (self.dir.clone(), path.clone(), format!("{object}\n{upload_id}\n"));
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(&file)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            crate::fsutil::sync_dir(&dir)
        })
        .await
        .map_err(io::Error::other)??;
        Ok(path)
    }

    /// Forget an upload that completed or was aborted.
    pub async fn end(&self, record: &Path) {
        if let Err(e) = tokio::fs::remove_file(record).await
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(file = ?record, error = %e, "could not remove a multipart journal record");
        }
    }

    /// The uploads recorded and not ended: what an earlier run left unfinished.
    pub fn unfinished(&self) -> io::Result<Vec<Unfinished>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "upload") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            match text.lines().collect::<Vec<_>>()[..] {
                [object, upload_id] if !object.is_empty() && !upload_id.is_empty() => out.push(Unfinished {
                    object: object.to_string(),
                    upload_id: upload_id.to_string(),
                    path,
                }),
                // Torn by a crash before its fsync: the upload never got a part.
                _ => {
                    tracing::warn!(file = ?path, "dropping an unreadable multipart journal record");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_survive_until_ended() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let a = j.begin("cache/aa", "id-1").await.unwrap();
        let _b = j.begin("cache/bb", "id-2").await.unwrap();
        std::fs::write(dir.path().join("torn.upload"), "cache/cc").unwrap();
        j.end(&a).await;
        let left = Journal::open(dir.path()).unwrap().unfinished().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(
            (left[0].object.as_str(), left[0].upload_id.as_str()),
            ("cache/bb", "id-2")
        );
        assert!(!dir.path().join("torn.upload").exists());
    }
}
