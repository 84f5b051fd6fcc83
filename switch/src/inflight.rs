//! Requests in flight on this instance, by idempotency key, so that a retransmission
//! arriving while its original is being processed waits for the original's answer
//! instead of causing a second bank request.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::answer::Answer;
use crate::content::ContentDigest;

/// Shards of the map; a power of two well above the core count keeps lock waits rare.
const SHARDS: usize = 64;

/// The owner's answer channel, and the owner's content digest (a follower with another
/// content is not a retransmission).
type Slot = (watch::Sender<Option<Answer>>, ContentDigest);

/// The in-flight table.
#[derive(Debug)]
pub struct InFlight {
    shards: Vec<Mutex<HashMap<String, Slot>>>,
    hasher: RandomState,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

/// The outcome of registering a key.
#[derive(Debug)]
pub enum Registration {
    /// This request owns the key until the guard is resolved or dropped.
    Owner(InFlightGuard),
    /// Another request with the key is in flight here: wait on `answer` for its answer
    /// (`None` if it ended without one), if `owner_content` is the follower's too.
    Follower {
        answer: watch::Receiver<Option<Answer>>,
        owner_content: ContentDigest,
    },
}

/// Removes the key when dropped; waiters get the answer given to `resolve`, if any.
#[derive(Debug)]
pub struct InFlightGuard {
    table: Arc<InFlight>,
    key: String,
    answer: Option<Answer>,
}

impl InFlight {
    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Slot>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    pub fn register(self: &Arc<Self>, key: &str, content: ContentDigest) -> Registration {
        let mut shard = self.shard(key).lock().expect("in-flight lock");
        if let Some((answer, owner_content)) = shard.get(key) {
            return Registration::Follower {
                answer: answer.subscribe(),
                owner_content: *owner_content,
            };
        }
        shard.insert(key.to_string(), (watch::channel(None).0, content));
        Registration::Owner(InFlightGuard {
            table: self.clone(),
            key: key.to_string(),
            answer: None,
        })
    }

    /// The answer channel of the request in flight here under `key`, if any: for waiting
    /// until it ends without owning or following the key (a reversal held for the request
    /// it names).
    pub fn watch(&self, key: &str) -> Option<watch::Receiver<Option<Answer>>> {
        let shard = self.shard(key).lock().expect("in-flight lock");
        shard.get(key).map(|(answer, _)| answer.subscribe())
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("in-flight lock").len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl InFlightGuard {
    /// Gives followers the answer now; the key stays registered until the guard goes.
    pub fn publish(&self, answer: Answer) {
        let shard = self.table.shard(&self.key).lock().expect("in-flight lock");
        if let Some((slot, _)) = shard.get(&self.key) {
            slot.send_replace(Some(answer));
        }
    }

    pub fn resolve(mut self, answer: Answer) {
        self.answer = Some(answer);
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let slot = self
            .table
            .shard(&self.key)
            .lock()
            .expect("in-flight lock")
            .remove(&self.key);
        if let (Some((slot, _)), Some(a)) = (slot, self.answer.take()) {
            slot.send_replace(Some(a));
        }
    }
}

/// Waits until the owner is gone (its key removed), whatever it answered.
pub async fn owner_gone(mut rx: watch::Receiver<Option<Answer>>) {
    while rx.changed().await.is_ok() {}
}

/// Waits for the owner's answer.
pub async fn follow(mut rx: watch::Receiver<Option<Answer>>) -> Option<Answer> {
    loop {
        if let Some(a) = rx.borrow().clone() {
            return Some(a);
        }
        if rx.changed().await.is_err() {
            return rx.borrow().clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::Rc;

    // Proves a follower with the owner's content receives the owner's answer, one with
    // other content is told the owner's content, and the key is free afterwards.
    #[tokio::test]
    async fn follower_gets_owner_answer() {
        let t = Arc::new(InFlight::default());
        let mine = ContentDigest([1; crate::content::DIGEST_LEN]);
        let other = ContentDigest([2; crate::content::DIGEST_LEN]);
        let Registration::Owner(g) = t.register("k", mine) else {
            panic!("first is owner")
        };
        let Registration::Follower {
            answer,
            owner_content,
        } = t.register("k", mine)
        else {
            panic!("second follows")
        };
        assert_eq!(owner_content, mine);
        let Registration::Follower { owner_content, .. } = t.register("k", other) else {
            panic!("third follows")
        };
        assert_ne!(
            owner_content, other,
            "the caller can tell a reused identity"
        );
        let waiter = tokio::spawn(follow(answer));
        g.resolve(Answer::refused(Rc::DO_NOT_HONOUR));
        assert_eq!(waiter.await.unwrap().unwrap().rc, Rc::DO_NOT_HONOUR);
        assert!(t.is_empty());
        assert!(matches!(t.register("k", other), Registration::Owner(_)));
    }
}
