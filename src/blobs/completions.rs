//! Revocable completions: the tasks that will mark a blob complete in the cache
//! (a fill, a warm after a PUT) hold a token; a DELETE revokes every token of
//! its blob, so a task that started before the DELETE cannot bring the blob
//! back into the cache after it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::cache::{BlobCache, BlobMeta};
use crate::key::BlobKey;

#[derive(Debug, Default)]
pub(super) struct Completions {
    tokens: Mutex<HashMap<BlobKey, Vec<Arc<AtomicBool>>>>,
}

/// A task's right to complete a blob; false once a DELETE revoked it.
#[derive(Debug, Clone)]
pub(super) struct Token(Arc<AtomicBool>);

impl Token {
    pub(super) fn revoked(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Completions {
    pub(super) fn begin(&self, key: BlobKey) -> Token {
        let token = Arc::new(AtomicBool::new(false));
        self.tokens
            .lock()
            .expect("completions lock")
            .entry(key)
            .or_default()
            .push(token.clone());
        Token(token)
    }

    /// Insert the metadata unless a DELETE revoked the token; forget the token either way.
    pub(super) fn finish(&self, cache: &BlobCache, key: BlobKey, token: &Token, meta: Option<BlobMeta>) {
        let mut tokens = self.tokens.lock().expect("completions lock");
        if let Some(meta) = meta
            && !token.revoked()
        {
            // Under the lock: a DELETE either revokes before this, or removes the entry after it.
            cache.insert_meta(&key, &meta);
        }
        if let Some(list) = tokens.get_mut(&key) {
            list.retain(|t| !Arc::ptr_eq(t, &token.0));
            if list.is_empty() {
                tokens.remove(&key);
            }
        }
    }

    pub(super) fn revoke(&self, key: &BlobKey) {
        let tokens = self.tokens.lock().expect("completions lock");
        for t in tokens.get(key).into_iter().flatten() {
            t.store(true, Ordering::Release);
        }
    }
}
