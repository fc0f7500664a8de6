//! A config the policy produced, kept with when and in which epoch it
//! was asked for (spec §11).

use std::sync::Arc;

/// A config the policy produced, with when and in which epoch it was asked
/// for: `Ttl` configs are asked again after `refresh_interval`, `Epoch`
/// ones only after a reload (spec §11).
pub struct Fetched<T> {
    /// The config as the policy returned it.
    pub value: Arc<T>,
    /// tokio's clock, so a test with paused time can age it.
    at: tokio::time::Instant,
    epoch: u64,
}

impl<T> Fetched<T> {
    /// `value` as fetched now, in the policy epoch `epoch`.
    pub fn new(value: Arc<T>, epoch: u64) -> Self {
        Fetched {
            value,
            at: tokio::time::Instant::now(),
            epoch,
        }
    }

    /// Whether it may still be used: within `interval` of the fetch for
    /// `Ttl`, still in the same `epoch` for `Epoch`.
    pub fn is_fresh(
        &self,
        strategy: sluice_common::queue_config::RefreshStrategy,
        interval: std::time::Duration,
        epoch: u64,
    ) -> bool {
        match strategy {
            sluice_common::queue_config::RefreshStrategy::Ttl => self.at.elapsed() < interval,
            sluice_common::queue_config::RefreshStrategy::Epoch => self.epoch == epoch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Fetched;
    use sluice_common::queue_config::RefreshStrategy;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_ttl_config_is_asked_again_after_its_refresh_interval() {
        let f = Fetched::new(Arc::new(()), 1);
        let interval = Duration::from_secs(60);
        assert!(f.is_fresh(RefreshStrategy::Ttl, interval, 1));
        // a reload does not matter to a Ttl config
        assert!(f.is_fresh(RefreshStrategy::Ttl, interval, 2));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(f.is_fresh(RefreshStrategy::Ttl, interval, 1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!f.is_fresh(RefreshStrategy::Ttl, interval, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_epoch_config_is_asked_again_after_a_reload_only() {
        let f = Fetched::new(Arc::new(()), 7);
        let interval = Duration::from_secs(60);
        tokio::time::advance(Duration::from_secs(86_400)).await;
        assert!(f.is_fresh(RefreshStrategy::Epoch, interval, 7));
        assert!(!f.is_fresh(RefreshStrategy::Epoch, interval, 8));
    }
}
