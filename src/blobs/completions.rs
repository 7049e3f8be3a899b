//! Revocable completions: the tasks that will mark a blob complete in the cache
//! (a fill, a warm after a PUT) hold a token; a DELETE revokes every token of
//! its blob, and every token begun while it runs, so a task that started
//! before the DELETE or during it cannot bring the blob back into the cache
//! after it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::cache::{BlobCache, BlobMeta};
use crate::key::BlobKey;

#[derive(Debug, Default)]
pub(super) struct Completions {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    tokens: HashMap<BlobKey, Vec<Arc<AtomicBool>>>,
    /// DELETEs under way, by key. A fill that begins meanwhile may have found
    /// the blob in the store just before the DELETE removed it from there.
    deleting: HashMap<BlobKey, usize>,
}

/// A task's right to complete a blob; false once a DELETE revoked it.
#[derive(Debug, Clone)]
pub(super) struct Token(Arc<AtomicBool>);

impl Token {
    pub(super) fn revoked(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A DELETE under way: until it is dropped, new tokens of its key are born revoked.
#[derive(Debug)]
pub(super) struct Deleting<'a> {
    completions: &'a Completions,
    key: BlobKey,
}

impl Drop for Deleting<'_> {
    fn drop(&mut self) {
        let mut state = self.completions.state.lock().expect("completions lock");
        if let Some(n) = state.deleting.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                state.deleting.remove(&self.key);
            }
        }
    }
}

impl Completions {
    pub(super) fn begin(&self, key: BlobKey) -> Token {
        let mut state = self.state.lock().expect("completions lock");
        let token = Arc::new(AtomicBool::new(state.deleting.contains_key(&key)));
        state.tokens.entry(key).or_default().push(token.clone());
        Token(token)
    }

    /// Insert the metadata unless a DELETE revoked the token; forget the token either way.
    pub(super) fn finish(&self, cache: &BlobCache, key: BlobKey, token: &Token, meta: Option<BlobMeta>) {
        let mut state = self.state.lock().expect("completions lock");
        if let Some(meta) = meta
            && !token.revoked()
        {
            // Under the lock: a DELETE either revokes before this, or removes the entry after it.
            cache.insert_meta(&key, &meta);
        }
        if let Some(list) = state.tokens.get_mut(&key) {
            list.retain(|t| !Arc::ptr_eq(t, &token.0));
            if list.is_empty() {
                state.tokens.remove(&key);
            }
        }
    }

    /// Revoke every token of `key`, and every token begun until the guard is dropped.
    pub(super) fn deleting(&self, key: BlobKey) -> Deleting<'_> {
        let mut state = self.state.lock().expect("completions lock");
        *state.deleting.entry(key).or_default() += 1;
        for t in state.tokens.get(&key).into_iter().flatten() {
            t.store(true, Ordering::Release);
        }
        Deleting { completions: self, key }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_begun_before_or_during_a_delete_are_revoked() {
        let c = Completions::default();
        let (key, other) = (BlobKey::of(b"a"), BlobKey::of(b"b"));
        let before = c.begin(key);
        let first = c.deleting(key);
        assert!(before.revoked());
        assert!(c.begin(key).revoked(), "begun during the DELETE");
        assert!(!c.begin(other).revoked(), "another key is not affected");
        let second = c.deleting(key);
        drop(first);
        assert!(c.begin(key).revoked(), "a second DELETE still runs");
        drop(second);
        assert!(!c.begin(key).revoked(), "begun after every DELETE ended");
        assert!(c.state.lock().unwrap().deleting.is_empty());
    }
}
