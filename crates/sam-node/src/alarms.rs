//! The alarms a node raises from what its network layer counted (DESIGN section 12: a full
//! replay table refuses new senders "with an alarm", two live sessions of one pid "raise a
//! duplicate-pid alarm"; derivations refused under a flood of new sessions likewise). A counter
//! that grew raises its alarm, which stays up for [`ALARM_HOLD`] after the last growth, so
//! that `sam status` shows what happened lately rather than since the start.

use std::time::{Duration, Instant};

use sam_core::Alarms;
use sam_net::NetStats;

/// How long an alarm stays up after its counter last grew.
pub const ALARM_HOLD: Duration = Duration::from_secs(60);
/// How often the counters are looked at.
pub const ALARM_CHECK: Duration = Duration::from_millis(100);

/// The alarms watched, each with the counter that raises it.
const WATCHED: [Alarms; 3] = [Alarms::REPLAY_TABLE_FULL, Alarms::DUPLICATE_PID, Alarms::DERIVATIONS_THROTTLED];

/// The counters behind [`WATCHED`], in its order.
fn counts(stats: &NetStats) -> [u64; 3] {
    use std::sync::atomic::Ordering::Relaxed;
    [stats.replay_table_full.load(Relaxed), stats.duplicate_pids.load(Relaxed), stats.throttled.load(Relaxed)]
}

/// The last counts seen, when each last grew, and when to look again.
#[derive(Debug, Default)]
pub struct AlarmWatch {
    seen: [u64; 3],
    grew_at: [Option<Instant>; 3],
    next_check: Option<Instant>,
}

impl AlarmWatch {
    /// If it is time to look at the counters: each alarm watched, raised (`true`) or not.
    pub fn due(&mut self, now: Instant, stats: &NetStats) -> Option<[(Alarms, bool); 3]> {
        if self.next_check.is_some_and(|t| now < t) {
            return None;
        }
        self.next_check = Some(now + ALARM_CHECK);
        Some(self.update_counts(now, counts(stats)))
    }

    fn update_counts(&mut self, now: Instant, counts: [u64; 3]) -> [(Alarms, bool); 3] {
        std::array::from_fn(|i| {
            if counts[i] > self.seen[i] {
                self.seen[i] = counts[i];
                self.grew_at[i] = Some(now);
            }
            let up = self.grew_at[i].is_some_and(|t| now.duration_since(t) < ALARM_HOLD);
            (WATCHED[i], up)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_that_grew_raises_its_alarm_for_a_minute() {
        let mut watch = AlarmWatch::default();
        let t0 = Instant::now();
        let up = |s: [(Alarms, bool); 3]| s.iter().filter(|(_, on)| *on).map(|(a, _)| *a).collect::<Vec<_>>();
        assert!(up(watch.update_counts(t0, [0, 0, 0])).is_empty());
        assert_eq!(up(watch.update_counts(t0, [0, 3, 0])), vec![Alarms::DUPLICATE_PID]);
        let later = t0 + ALARM_HOLD / 2;
        assert_eq!(up(watch.update_counts(later, [1, 3, 0])), vec![Alarms::REPLAY_TABLE_FULL, Alarms::DUPLICATE_PID]);
        assert_eq!(
            up(watch.update_counts(t0 + ALARM_HOLD, [1, 3, 0])),
            vec![Alarms::REPLAY_TABLE_FULL],
            "held a minute"
        );
        assert!(up(watch.update_counts(later + ALARM_HOLD, [1, 3, 0])).is_empty(), "nothing grew since");
    }
}
