//! A small memo table that travels with a [`Config`](crate::config::Config):
//! what a review computes from the config and a key alone (the rendered
//! sidecar for a set of injection settings) is computed once and shared by
//! every later review with the same key. Type-erased so that the config, a
//! leaf, need not know what is kept in it.

use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError};

/// Entries kept at most; past it the oldest goes. Keys are the few distinct
/// settings a cluster's namespaces use, so this is rarely reached.
const CAPACITY: usize = 32;

#[derive(Default)]
pub struct Memo {
    entries: Mutex<Vec<Arc<dyn Any + Send + Sync>>>,
}

impl Memo {
    /// The entry whose key `is_key` accepts: the one kept, or `make()`'s,
    /// kept from now on. A key must hold everything its value is computed
    /// from. (A predicate rather than a key, so a lookup need not build one.)
    pub fn get<K, V>(&self, is_key: impl Fn(&K) -> bool, make: impl FnOnce() -> (K, V)) -> Arc<(K, V)>
    where
        K: Send + Sync + 'static,
        V: Send + Sync + 'static,
    {
        let found = {
            let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            entries
                .iter()
                .filter_map(|e| Arc::clone(e).downcast::<(K, V)>().ok())
                .find(|e| is_key(&e.0))
        };
        if let Some(found) = found {
            return found;
        }
        // Computed outside the lock: two reviews may both compute it once.
        let entry = Arc::new(make());
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CAPACITY {
            entries.remove(0);
        }
        entries.push(entry.clone());
        entry
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A copy of a config starts with an empty memo: what it kept was computed
/// from the original, which the copy may then change.
impl Clone for Memo {
    fn clone(&self) -> Memo {
        Memo::default()
    }
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Memo({} entries)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_once_per_key_and_forgets_the_oldest_past_capacity() {
        let memo = Memo::default();
        let mut made = 0;
        let get = |memo: &Memo, key: u32, made: &mut u32| {
            memo.get(
                |k: &u32| *k == key,
                || {
                    *made += 1;
                    (key, key * 10)
                },
            )
        };
        for _ in 0..3 {
            assert_eq!(get(&memo, 1, &mut made).1, 10);
        }
        assert_eq!(made, 1);
        // Another value type under an equal key is another entry.
        assert_eq!(memo.get(|k: &u32| *k == 1, || (1, "one")).1, "one");
        for k in 0..CAPACITY as u32 {
            get(&memo, 100 + k, &mut made);
        }
        assert_eq!(memo.len(), CAPACITY);
        let before = made;
        get(&memo, 1, &mut made);
        let again = made > before;
        assert!(again, "the oldest entries were dropped");
        assert_eq!(memo.clone().len(), 0);
    }
}
