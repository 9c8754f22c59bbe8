//! The cache's three upstream budgets: misses from all clients together, misses from one
//! client address, and refreshes (their own, so a flood of misses never lets cached credentials
//! run out).

use std::net::IpAddr;

use super::{CacheConfig, CacheError};
use crate::rate_limit::{KeyedBuckets, TokenBucket};

pub(super) struct Budgets {
    /// Misses, all clients.
    misses: TokenBucket,
    /// Misses, per client address.
    clients: KeyedBuckets<IpAddr>,
    refreshes: TokenBucket,
}

impl Budgets {
    pub(super) fn new(config: &CacheConfig) -> Self {
        Budgets {
            misses: TokenBucket::new(config.upstream_rate, config.upstream_burst),
            clients: KeyedBuckets::new(config.client_rate, config.client_burst),
            refreshes: TokenBucket::new(config.refresh_rate, config.refresh_burst),
        }
    }

    /// A slot for a miss of `client`'s: from its own bucket first, then from the node's.
    pub(super) fn take_miss(&self, client: IpAddr) -> Result<(), CacheError> {
        if self.clients.take(client).is_err() {
            return Err(CacheError::ClientRateLimited);
        }
        if self.misses.take().is_err() {
            return Err(CacheError::RateLimited);
        }
        Ok(())
    }

    pub(super) fn take_refresh(&self) -> bool {
        self.refreshes.take().is_ok()
    }
}
