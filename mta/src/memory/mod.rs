//! Memory pressure (KumoMTA's `set_memory_hard_limit`, `_soft_limit`,
//! `_low_thresh`): a pod's memory limit is a hard kill, so the MTA watches
//! its working set and sheds load before it gets there.
//!
//! * Below the low threshold nothing changes.
//! * Above it (level [`Level::Low`]) bodies are not kept in memory once
//!   they are in the spool: they are read back when a connection takes the
//!   message.
//! * Above the soft limit (level [`Level::Short`]) new mail is refused with
//!   a 4xx, readiness fails, the bodies of every spooled message waiting in
//!   memory are released, and promotion stops feeding ready queues beyond
//!   what their connections take. It lasts until usage is back below the
//!   low threshold, so the MTA does not flap at the soft limit.
//!
//! Defaults follow KumoMTA: the hard limit is the cgroup's (else the
//! machine's memory), the soft limit 75 % of it, the low threshold 80 % of
//! the soft limit.

pub mod account;

use account::Accounting;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// The limits set by the policy (`kumo.set_memory_*`), in bytes; `None`
/// takes the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    /// `kumo.set_memory_hard_limit`.
    pub hard: Option<u64>,
    /// `kumo.set_memory_soft_limit`.
    pub soft: Option<u64>,
    /// `kumo.set_memory_low_thresh`.
    pub low: Option<u64>,
}

/// The limits in force, in bytes: `low <= soft <= hard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// What the process must never reach (a cgroup kills it there).
    pub hard: u64,
    /// Above it, new mail is refused.
    pub soft: u64,
    /// Above it, bodies are released; below it, refusal ends.
    pub low: u64,
}

impl Limits {
    /// The policy's settings over the defaults: `found` is the cgroup's limit
    /// and `physical` the machine's memory.
    pub fn resolve(settings: Settings, found: Option<u64>, physical: u64) -> Limits {
        let hard = settings.hard.or(found).unwrap_or(physical);
        let soft = settings.soft.unwrap_or(hard / 4 * 3).min(hard);
        let low = settings.low.unwrap_or(soft / 5 * 4).min(soft);
        Limits { hard, soft, low }
    }
}

/// How much pressure there is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// Below the low threshold.
    Normal = 0,
    /// Above the low threshold: bodies are not kept once spooled.
    Low = 1,
    /// Above the soft limit (and not yet back below the low threshold):
    /// new mail is refused.
    Short = 2,
}

impl Level {
    fn from_u8(n: u8) -> Level {
        match n {
            0 => Level::Normal,
            1 => Level::Low,
            _ => Level::Short,
        }
    }

    /// The level at `usage`, coming from `self`: once short, only dropping
    /// below the low threshold ends it.
    pub fn next(self, usage: u64, limits: &Limits) -> Level {
        if usage >= limits.soft || (self == Level::Short && usage >= limits.low) {
            Level::Short
        } else if usage >= limits.low {
            Level::Low
        } else {
            Level::Normal
        }
    }
}

/// Why new mail is refused: the working set and the soft limit it passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryShort {
    /// The working set when last measured.
    pub usage: u64,
    /// The soft limit.
    pub soft: u64,
}

impl fmt::Display for MemoryShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "memory is short: working set {} MiB over the soft limit of {} MiB",
            self.usage >> 20,
            self.soft >> 20
        )
    }
}

/// The memory watch: measured usage, the level it puts the MTA at, and a
/// signal to release memory.
pub struct Memory {
    accounting: Accounting,
    limits: Limits,
    usage: AtomicU64,
    level: AtomicU8,
    /// How many times usage passed the soft limit.
    short_spells: AtomicU64,
    /// Notified on entering [`Level::Short`], and every check while it lasts.
    shed: Notify,
}

impl Memory {
    /// Find the cgroup (or the process) to measure and resolve the limits.
    pub fn new(settings: Settings) -> Memory {
        let found = account::find();
        let limits = Limits::resolve(settings, found.limit, account::physical());
        Memory::with(found.accounting, limits)
    }

    /// A watch over `accounting` with these limits.
    pub fn with(accounting: Accounting, limits: Limits) -> Memory {
        Memory {
            accounting,
            limits,
            usage: AtomicU64::new(0),
            level: AtomicU8::new(Level::Normal as u8),
            short_spells: AtomicU64::new(0),
            shed: Notify::new(),
        }
    }

    /// How usage is measured.
    pub fn accounting(&self) -> &Accounting {
        &self.accounting
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The working set when last measured.
    pub fn usage(&self) -> u64 {
        self.usage.load(Ordering::Relaxed)
    }

    /// The level when last measured.
    pub fn level(&self) -> Level {
        Level::from_u8(self.level.load(Ordering::Relaxed))
    }

    /// How many times usage has passed the soft limit: spells of refusal can
    /// be shorter than a scrape, and this counts each.
    pub fn short_spells(&self) -> u64 {
        self.short_spells.load(Ordering::Relaxed)
    }

    /// Why new mail is refused now, if it is.
    pub fn shortage(&self) -> Option<MemoryShort> {
        (self.level() == Level::Short).then(|| MemoryShort {
            usage: self.usage(),
            soft: self.limits.soft,
        })
    }

    /// Measure, move to the level that usage gives, log a change, and while
    /// short ask for memory to be released.
    pub fn check(&self) -> Level {
        let usage = match account::working_set(&self.accounting) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(accounting = %self.accounting, "cannot measure memory: {e}");
                return self.level();
            }
        };
        self.observe(usage)
    }

    /// Take `usage` as the working set (what [`Memory::check`] measured).
    pub fn observe(&self, usage: u64) -> Level {
        self.usage.store(usage, Ordering::Relaxed);
        let was = self.level();
        let now = was.next(usage, &self.limits);
        self.level.store(now as u8, Ordering::Relaxed);
        let mib = |n: u64| n >> 20;
        if now == Level::Short && was != Level::Short {
            self.short_spells.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                usage_mib = mib(usage),
                soft_mib = mib(self.limits.soft),
                hard_mib = mib(self.limits.hard),
                "memory is short: refusing new mail and releasing message bodies until usage is below {} MiB",
                mib(self.limits.low)
            );
        } else if was == Level::Short && now != Level::Short {
            tracing::info!(
                usage_mib = mib(usage),
                "memory is back below the low threshold: accepting mail again"
            );
        }
        if now == Level::Short {
            self.shed.notify_waiters();
        }
        now
    }

    /// Wait until memory is to be released.
    pub async fn released_wanted(&self) {
        self.shed.notified().await
    }

    /// Measure every `every`, for the life of the process, calling `after`
    /// after each measurement (the one place metrics are updated from, so a
    /// counter is never bumped twice by concurrent readers).
    pub async fn watch(self: Arc<Self>, every: Duration, mut after: impl FnMut(&Memory)) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.check();
            after(&self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn defaults_follow_the_cgroup_limit_then_the_machine() {
        let l = Limits::resolve(Settings::default(), Some(1000 * MIB), 64000 * MIB);
        assert_eq!((l.hard, l.soft, l.low), (1000 * MIB, 750 * MIB, 600 * MIB));
        let l = Limits::resolve(Settings::default(), None, 4000 * MIB);
        assert_eq!(l.hard, 4000 * MIB);
        // the policy's values win, and never exceed the one above them
        let set = Settings {
            hard: None,
            soft: Some(2000 * MIB),
            low: Some(3000 * MIB),
        };
        let l = Limits::resolve(set, Some(1000 * MIB), 4000 * MIB);
        assert_eq!(
            (l.hard, l.soft, l.low),
            (1000 * MIB, 1000 * MIB, 1000 * MIB)
        );
    }

    #[test]
    fn short_lasts_until_usage_is_below_the_low_threshold() {
        let limits = Limits {
            hard: 100,
            soft: 80,
            low: 60,
        };
        let mut level = Level::Normal;
        let mut seen = vec![];
        for usage in [10, 60, 79, 80, 95, 70, 61, 59, 70, 80] {
            level = level.next(usage, &limits);
            seen.push(level);
        }
        use Level::*;
        assert_eq!(
            seen,
            [
                Normal, Low, Low, Short, Short, Short, Short, Normal, Low, Short
            ]
        );
    }

    #[tokio::test]
    async fn observing_short_asks_for_release_and_names_the_limit() {
        let memory = Arc::new(Memory::with(
            Accounting::Process,
            Limits {
                hard: 100 * MIB,
                soft: 80 * MIB,
                low: 60 * MIB,
            },
        ));
        let waiter = {
            let m = memory.clone();
            tokio::spawn(async move { m.released_wanted().await })
        };
        tokio::task::yield_now().await;
        assert_eq!(memory.observe(50 * MIB), Level::Normal);
        assert!(memory.shortage().is_none());
        assert_eq!(memory.observe(90 * MIB), Level::Short);
        waiter.await.unwrap();
        let short = memory.shortage().unwrap();
        assert_eq!(
            short.to_string(),
            "memory is short: working set 90 MiB over the soft limit of 80 MiB"
        );
        assert_eq!(memory.observe(70 * MIB), Level::Short);
        assert_eq!(memory.short_spells(), 1, "one spell, however long");
        assert_eq!(memory.observe(10 * MIB), Level::Normal);
        assert!(memory.shortage().is_none());
        memory.observe(85 * MIB);
        assert_eq!(memory.short_spells(), 2);
    }
}
