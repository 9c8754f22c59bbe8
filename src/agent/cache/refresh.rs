//! Refreshing cached credentials ahead of expiry, in the background, within the refresh budget.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::follow::{Grant, Owner};
use super::{Cache, Key};

impl Cache {
    /// Refreshes the entries that are due, as many as the rate allows; returns how many it
    /// started. A transient failure keeps the cached credentials and retries after a jittered
    /// wait; an auth failure evicts them.
    pub(crate) fn refresh_due(self: &Arc<Self>) -> usize {
        let now = Instant::now();
        self.follow_associations();
        let due: Vec<(Key, Arc<str>, Owner, Grant)> = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries
                .iter()
                .filter(|(_, e)| e.next_refresh <= now)
                .map(|(k, e)| (*k, e.token.clone(), e.owner.clone(), e.grant.clone()))
                .collect()
        };
        let mut started = 0;
        for (k, token, owner, given) in due {
            // Stored stale (its association changed while it was fetched): not renewed.
            if !self.stands(&owner, &given) {
                self.entries.lock().unwrap_or_else(|e| e.into_inner()).pop(&k);
                continue;
            }
            if self
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&k)
            {
                continue;
            }
            if !self.budgets.take_refresh() {
                break;
            }
            // Not retried before the jittered wait, whatever this attempt does.
            let jitter = self.config.retry_after.mul_f64(1.0 + fastrand::f64());
            if let Some(e) = self
                .entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .peek_mut(&k)
            {
                e.next_refresh = now + jitter;
            }
            started += 1;
            let this = self.clone();
            tokio::spawn(async move {
                let grant = this.grant_now(&owner);
                match this.call_upstream(&token).await {
                    Ok(creds) => {
                        let entry = this.entry(token, creds, owner, grant);
                        let mut entries = this.entries.lock().unwrap_or_else(|e| e.into_inner());
                        // Only if still cached: an eviction meanwhile wins.
                        if let Some(slot) = entries.peek_mut(&k) {
                            *slot = entry;
                        }
                        this.metrics.refresh(true);
                    }
                    Err(e) if e.is_auth() => {
                        tracing::info!(error = %e, "refresh refused; credentials evicted");
                        this.entries.lock().unwrap_or_else(|e| e.into_inner()).pop(&k);
                        this.metrics.refresh(false);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?jitter, "refresh failed; cached credentials keep serving");
                        this.metrics.refresh(false);
                    }
                }
            });
        }
        started
    }

    /// Runs [`refresh_due`](Self::refresh_due) every `every` until the cache is dropped elsewhere.
    pub(crate) fn spawn_refresher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(cache) = weak.upgrade() else { return };
                cache.refresh_due();
            }
        })
    }
}
