//! Checks of one throttle made while a Redis round trip for it is in
//! flight wait for it to end and then go together, as one "how many of n
//! may pass" (the GCRA script takes n): the first k in arrival order pass,
//! the rest get the wait for the next unit, exactly what n checks one after
//! another would have got. Under load that is one round trip per batch,
//! not per message.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// What a batch's call answers: how many of the `n` asked pass, and the
/// wait for the others; `None` when the call failed (each then decides
/// alone).
pub type Answer = Option<(u64, Option<Duration>)>;

/// One waiting check's reply: `Some(wait)` throttled, `None` allowed; the
/// outer `None` when the batch's call failed.
type Reply = oneshot::Sender<Option<Option<Duration>>>;

/// Waiting checks by throttle key; a key is present while its flusher runs.
#[derive(Default)]
pub struct Batches {
    waiting: Mutex<HashMap<String, Vec<Reply>>>,
}

impl Batches {
    /// Check one unit of `key`: join the waiting batch, starting a flusher
    /// that calls `call(key, n)` batch after batch if none runs. `None`
    /// when the call failed.
    pub async fn check<F, Fut>(self: &Arc<Self>, key: &str, call: F) -> Option<Option<Duration>>
    where
        F: Fn(String, u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Answer> + Send,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut waiting = self.waiting.lock();
            match waiting.get_mut(key) {
                Some(list) => {
                    list.push(tx);
                    false
                }
                None => {
                    waiting.insert(key.to_string(), vec![tx]);
                    true
                }
            }
        };
        if start {
            let (me, key) = (self.clone(), key.to_string());
            tokio::spawn(async move { me.flush(key, call).await });
        }
        rx.await.unwrap_or(None)
    }

    async fn flush<F, Fut>(&self, key: String, call: F)
    where
        F: Fn(String, u64) -> Fut,
        Fut: Future<Output = Answer>,
    {
        loop {
            let batch = {
                let mut waiting = self.waiting.lock();
                let list = waiting
                    .get_mut(&key)
                    .map(std::mem::take)
                    .unwrap_or_default();
                if list.is_empty() {
                    waiting.remove(&key);
                    return;
                }
                list
            };
            let answer = call(key.clone(), batch.len() as u64).await;
            for (i, reply) in batch.into_iter().enumerate() {
                let r = answer.map(|(granted, wait)| match (i as u64) < granted {
                    true => None,
                    false => Some(wait.unwrap_or(Duration::from_secs(1))),
                });
                let _ = reply.send(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test]
    async fn concurrent_checks_share_calls_and_keep_their_order() {
        let batches = Arc::new(Batches::default());
        let calls = Arc::new(AtomicU64::new(0));
        let left = Arc::new(AtomicU64::new(5));
        let call = {
            let (calls, left) = (calls.clone(), left.clone());
            move |_key: String, n: u64| {
                let (calls, left) = (calls.clone(), left.clone());
                async move {
                    calls.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let k = n.min(left.load(Ordering::Relaxed));
                    left.fetch_sub(k, Ordering::Relaxed);
                    Some((k, Some(Duration::from_secs(3))))
                }
            }
        };
        let mut tasks = vec![];
        for _ in 0..20 {
            let (b, c) = (batches.clone(), call.clone());
            tasks.push(tokio::spawn(async move { b.check("k", c).await }));
        }
        let mut allowed = 0;
        for t in tasks {
            match t.await.unwrap() {
                Some(None) => allowed += 1,
                Some(Some(wait)) => assert_eq!(wait, Duration::from_secs(3)),
                None => panic!("no call failed"),
            }
        }
        assert_eq!(allowed, 5, "as many pass as the throttle grants");
        let n = calls.load(Ordering::Relaxed);
        assert!(n < 20, "{n} calls for 20 concurrent checks");
        // a failed call fails every check of its batch
        let failed = batches.check("k", |_, _| async { None }).await;
        assert_eq!(failed, None);
    }
}
