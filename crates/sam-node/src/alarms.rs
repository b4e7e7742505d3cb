//! The alarms a node raises from what its network layer counted (DESIGN section 12: a full
//! replay table refuses new senders "with an alarm", two live sessions of one pid "raise a
//! duplicate-pid alarm"; derivations refused under a flood of new sessions likewise). A counter
//! that grew raises its alarm, which stays up for [`ALARM_HOLD`] after the last growth, so
//! that `sam status` shows what happened lately rather than since the start. Every drop is
//! also summed up in the log every [`DROPS_REPORT_EVERY`] when there were any, never a line
//! per datagram.

use std::time::{Duration, Instant};

use sam_core::Alarms;
use sam_net::{NetStats, DROP_REASONS};

/// How long an alarm stays up after its counter last grew.
pub const ALARM_HOLD: Duration = Duration::from_secs(60);
/// How often the counters are looked at.
pub const ALARM_CHECK: Duration = Duration::from_millis(100);
/// How often the drops since the last report are logged (when there were any).
pub const DROPS_REPORT_EVERY: Duration = Duration::from_secs(10);

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

/// The drops last reported, and when to report again.
#[derive(Debug, Default)]
pub struct DropReport {
    seen: [u64; DROP_REASONS],
    next: Option<Instant>,
}

impl DropReport {
    /// If a report is due and something was dropped since the last one: how many of each, as
    /// "3 replayed, 1 malformed".
    pub fn due(&mut self, now: Instant, stats: &NetStats) -> Option<String> {
        if self.next.is_some_and(|t| now < t) {
            return None;
        }
        self.next = Some(now + DROPS_REPORT_EVERY);
        let drops = stats.drops();
        let grown: Vec<String> = drops
            .iter()
            .zip(&self.seen)
            .filter(|((_, count), seen)| count > seen)
            .map(|((reason, count), seen)| format!("{} {reason}", count - seen))
            .collect();
        self.seen = drops.map(|(_, count)| count);
        (!grown.is_empty()).then(|| grown.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_reported_as_what_grew_and_at_most_every_ten_seconds() {
        use std::sync::atomic::Ordering::Relaxed;
        let (mut report, stats, t0) = (DropReport::default(), NetStats::default(), Instant::now());
        assert_eq!(report.due(t0, &stats), None, "nothing dropped");
        stats.replayed.store(3, Relaxed);
        stats.malformed.store(1, Relaxed);
        assert_eq!(report.due(t0 + DROPS_REPORT_EVERY / 2, &stats), None, "not due yet");
        assert_eq!(report.due(t0 + DROPS_REPORT_EVERY, &stats).as_deref(), Some("1 malformed, 3 replayed"));
        stats.replayed.store(5, Relaxed);
        assert_eq!(report.due(t0 + DROPS_REPORT_EVERY * 2, &stats).as_deref(), Some("2 replayed"), "only what grew");
    }

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
