//! Replay protection (DESIGN section 12, "Replay"): per sender, the two newest sessions, each
//! with a sliding window of counters in the manner of RFC 6479; bounded, and holding only
//! senders that authenticated.

use std::collections::HashMap;

use sam_core::Pid;

use super::envelope::Session;

/// Counters a window remembers below the highest seen.
pub const WINDOW_COUNTERS: u64 = 2_048;
/// How long a sender's entry lasts after its last authenticated frame.
pub const ENTRY_IDLE_MS: u64 = 180_000;
/// Sessions that began longer ago than this are refused.
pub const SESSION_PAST_MS: u64 = 180_000;
/// Sessions that begin further in the future than this are refused (clocks are in sync).
pub const SESSION_FUTURE_MS: u64 = 60_000;
/// One credential's processes hold at most this fraction (1/n) of a replay table.
pub const CREDENTIAL_SHARE_DIVISOR: usize = 8;
/// A frame of an older session this long after a newer one began to be heard means two
/// processes use one pid.
pub const DUPLICATE_AFTER_MS: u64 = 5_000;

const WORDS: usize = (WINDOW_COUNTERS / 64) as usize;

/// Which counters of one session were seen.
#[derive(Clone, Debug)]
pub struct Window {
    highest: u64,
    seen_any: bool,
    bits: [u64; WORDS],
}

impl Default for Window {
    fn default() -> Self {
        Window { highest: 0, seen_any: false, bits: [0; WORDS] }
    }
}

impl Window {
    /// Whether `counter` is new: above the highest seen, or within the window and not seen.
    pub fn fresh(&self, counter: u64) -> bool {
        if !self.seen_any || counter > self.highest {
            return true;
        }
        self.highest - counter < WINDOW_COUNTERS && self.bits[Self::word(counter)] & Self::bit(counter) == 0
    }

    /// Marks `counter` seen (it was [`Window::fresh`] and its frame authenticated).
    pub fn mark(&mut self, counter: u64) {
        if !self.seen_any || counter > self.highest {
            let ahead = if self.seen_any { counter - self.highest } else { WINDOW_COUNTERS };
            if ahead >= WINDOW_COUNTERS {
                self.bits = [0; WORDS];
            } else {
                // Clear the slots of the counters skipped over: they are new again.
                for c in self.highest + 1..=counter {
                    self.bits[Self::word(c)] &= !Self::bit(c);
                }
            }
            self.highest = counter;
            self.seen_any = true;
        }
        self.bits[Self::word(counter)] |= Self::bit(counter);
    }

    fn word(counter: u64) -> usize {
        ((counter / 64) % WORDS as u64) as usize
    }

    fn bit(counter: u64) -> u64 {
        1 << (counter % 64)
    }
}

/// Windows kept per session: one for frames sent to the global channel (in unicast mode they
/// arrive relayed, a hop later) and one for the rest, so that frames overtaking each other on
/// the two paths never push one another out of a window.
pub const LANES: usize = 2;

/// What a sender's entry holds for one session.
#[derive(Debug)]
pub struct SessionState<K> {
    /// The session.
    pub session: Session,
    /// Its counters, per lane.
    pub windows: [Window; LANES],
    /// When (ms since 1970) its first frame was heard.
    pub first_heard_ms: u64,
    /// Keys derived for it, kept so that they are derived once (per tier).
    pub keys: K,
}

/// One sender's entry: its two newest sessions.
#[derive(Debug)]
struct Entry<K> {
    newest: SessionState<K>,
    previous: Option<SessionState<K>>,
    last_used_ms: u64,
}

/// Why a frame is refused before or after it authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its counter was seen, or lies below the window.
    Replayed,
    /// Its session is older than the two kept, or its time is out of bounds.
    StaleSession,
    /// The table is full of live senders: a new one is refused (alarm).
    TableFull,
}

/// Which of a sender's sessions a frame belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Its newest session.
    Newest,
    /// The one before.
    Previous,
    /// A newer session, or a sender not in the table: nothing cached, admitted once it
    /// authenticates.
    New,
}

/// The senders heard, bounded.
#[derive(Debug)]
pub struct ReplayTable<K> {
    entries: HashMap<Pid, Entry<K>>,
    max: usize,
    /// The members' entries, per credential: none may hold more than its share of `max`.
    per_credential: HashMap<Pid, usize>,
    /// Frames of an older session heard long after a newer one: two processes share a pid.
    pub duplicate_pid_alarms: u64,
}

impl<K> ReplayTable<K> {
    /// A table of at most `max` senders.
    pub fn new(max: usize) -> Self {
        ReplayTable {
            entries: HashMap::new(),
            max: max.max(1),
            per_credential: HashMap::new(),
            duplicate_pid_alarms: 0,
        }
    }

    /// The senders held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no sender is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pre-check, before any key is tried: which session slot a frame falls in, or why
    /// it is refused.
    pub fn check(&self, now_ms: u64, pid: Pid, session: Session, lane: usize, counter: u64) -> Result<Slot, Refusal> {
        let in_bounds = session.time_ms.saturating_add(SESSION_PAST_MS) >= now_ms
            && session.time_ms <= now_ms.saturating_add(SESSION_FUTURE_MS);
        let Some(entry) = self.entries.get(&pid) else {
            return if in_bounds { Ok(Slot::New) } else { Err(Refusal::StaleSession) };
        };
        let (slot, windows) = if session == entry.newest.session {
            (Slot::Newest, &entry.newest.windows)
        } else if let Some(prev) = entry.previous.as_ref().filter(|p| p.session == session) {
            (Slot::Previous, &prev.windows)
        } else if session > entry.newest.session && in_bounds {
            return Ok(Slot::New);
        } else {
            return Err(Refusal::StaleSession);
        };
        if windows[lane % LANES].fresh(counter) {
            Ok(slot)
        } else {
            Err(Refusal::Replayed)
        }
    }

    /// The keys cached for a slot [`ReplayTable::check`] returned.
    pub fn keys_mut(&mut self, pid: Pid, slot: Slot) -> Option<&mut K> {
        let entry = self.entries.get_mut(&pid)?;
        match slot {
            Slot::Newest => Some(&mut entry.newest.keys),
            Slot::Previous => entry.previous.as_mut().map(|p| &mut p.keys),
            Slot::New => None,
        }
    }

    /// Room for a new sender: members' entries are bounded in all and per credential (one
    /// credential's many processes cannot lock the others out); servers, whose pids are
    /// configured and few, always get one. Idle entries make room; live ones are never
    /// evicted (their windows are what refuses replays).
    fn make_room(&mut self, now_ms: u64, pid: Pid) -> Result<(), Refusal> {
        if !pid.is_member() {
            return Ok(());
        }
        let share = (self.max / CREDENTIAL_SHARE_DIVISOR).max(1);
        let over = |t: &Self| {
            t.entries.len() >= t.max || t.per_credential.get(&pid.credential()).copied().unwrap_or(0) >= share
        };
        if over(self) {
            let per_credential = &mut self.per_credential;
            self.entries.retain(|p, e| {
                let live = e.last_used_ms.saturating_add(ENTRY_IDLE_MS) >= now_ms;
                if !live && p.is_member() {
                    if let Some(n) = per_credential.get_mut(&p.credential()) {
                        *n -= 1;
                    }
                }
                live
            });
            per_credential.retain(|_, n| *n > 0);
            if over(self) {
                return Err(Refusal::TableFull);
            }
        }
        *self.per_credential.entry(pid.credential()).or_default() += 1;
        Ok(())
    }

    /// Records an authenticated frame in `slot` (as [`ReplayTable::check`] returned it just
    /// before); a new session brings `keys` and pushes the oldest out.
    pub fn admit(
        &mut self,
        now_ms: u64,
        pid: Pid,
        session: Session,
        (lane, counter): (usize, u64),
        slot: Slot,
        keys: impl FnOnce() -> K,
    ) -> Result<(), Refusal> {
        if !self.entries.contains_key(&pid) {
            self.make_room(now_ms, pid)?;
        }
        let fresh = |keys| SessionState { session, windows: Default::default(), first_heard_ms: now_ms, keys };
        let entry = match (self.entries.get_mut(&pid), slot) {
            (None, _) => {
                self.entries.entry(pid).or_insert(Entry { newest: fresh(keys()), previous: None, last_used_ms: now_ms })
            }
            (Some(entry), Slot::New) => {
                let old = std::mem::replace(&mut entry.newest, fresh(keys()));
                entry.previous = Some(old);
                entry
            }
            (Some(entry), Slot::Previous) => {
                if entry.newest.first_heard_ms.saturating_add(DUPLICATE_AFTER_MS) <= now_ms {
                    self.duplicate_pid_alarms += 1;
                }
                entry
            }
            (Some(entry), Slot::Newest) => entry,
        };
        entry.last_used_ms = now_ms;
        let state = match slot {
            Slot::Previous => entry.previous.as_mut().unwrap_or(&mut entry.newest),
            _ => &mut entry.newest,
        };
        state.windows[lane % LANES].mark(counter);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn session(time_ms: u64, random: u64) -> Session {
        Session { time_ms, random }
    }

    #[test]
    fn window_accepts_each_counter_once_and_nothing_below_it() {
        let mut w = Window::default();
        for c in [5, 3, 4, 100, 6] {
            assert!(w.fresh(c), "{c}");
            w.mark(c);
            assert!(!w.fresh(c), "{c} again");
        }
        assert!(w.fresh(2), "unseen, within the window");
        w.mark(5_000);
        assert!(!w.fresh(100), "below the window now");
        assert!(w.fresh(5_000 - WINDOW_COUNTERS + 1));
        assert!(!w.fresh(5_000 - WINDOW_COUNTERS));
        // A counter skipped over by a jump of less than the window is still new.
        w.mark(5_010);
        assert!(w.fresh(5_005));
        assert!(!w.fresh(5_000));
    }

    #[test]
    fn window_survives_counters_near_the_top() {
        let mut w = Window::default();
        w.mark(u64::MAX - 1);
        assert!(w.fresh(u64::MAX));
        w.mark(u64::MAX);
        assert!(!w.fresh(u64::MAX) && !w.fresh(u64::MAX - 1));
    }

    #[test]
    fn sessions_newest_two_are_kept_and_older_or_out_of_bounds_refused() {
        let mut t = ReplayTable::<()>::new(4);
        let (a, b, c) = (session(NOW - 1_000, 1), session(NOW, 2), session(NOW + 10, 3));
        let p = Pid(9);
        assert_eq!(t.check(NOW, p, session(NOW - SESSION_PAST_MS - 1, 0), 0, 0), Err(Refusal::StaleSession));
        assert_eq!(t.check(NOW, p, session(NOW + SESSION_FUTURE_MS + 1, 0), 0, 0), Err(Refusal::StaleSession));
        for (s, slot) in [(a, Slot::New), (b, Slot::New), (c, Slot::New)] {
            assert_eq!(t.check(NOW, p, s, 0, 1), Ok(slot));
            t.admit(NOW, p, s, (0, 1), slot, || ()).unwrap();
        }
        assert_eq!(t.check(NOW, p, a, 0, 2), Err(Refusal::StaleSession), "only two sessions are kept");
        assert_eq!(t.check(NOW, p, b, 0, 1), Err(Refusal::Replayed));
        assert_eq!(t.check(NOW, p, b, 1, 1), Ok(Slot::Previous), "each lane has a window of its own");
        assert_eq!(t.check(NOW, p, b, 0, 2), Ok(Slot::Previous));
        assert_eq!(t.check(NOW, p, c, 0, 2), Ok(Slot::Newest));
        t.admit(NOW + DUPLICATE_AFTER_MS, p, b, (0, 2), Slot::Previous, || ()).unwrap();
        assert_eq!(t.duplicate_pid_alarms, 1, "the older session still talking long after");
    }

    /// A member pid of credential `c`, instance `i`.
    fn member(c: u64, i: u64) -> Pid {
        Pid(Pid::MEMBER | c << Pid::INSTANCE_BITS | i)
    }

    #[test]
    fn a_full_table_refuses_new_senders_until_entries_go_idle() {
        let mut t = ReplayTable::<()>::new(2 * CREDENTIAL_SHARE_DIVISOR);
        let s = session(NOW, 1);
        let credentials: Vec<u64> = (1..=CREDENTIAL_SHARE_DIVISOR as u64).collect();
        for c in &credentials {
            for i in 0..2 {
                t.admit(NOW, member(*c, i), s, (0, 0), Slot::New, || ()).unwrap();
            }
        }
        assert_eq!(t.admit(NOW, member(99, 0), s, (0, 0), Slot::New, || ()), Err(Refusal::TableFull));
        assert_eq!(t.admit(NOW, Pid(3), s, (0, 0), Slot::New, || ()), Ok(()), "a server always gets an entry");
        t.admit(NOW, member(1, 0), s, (0, 1), Slot::Newest, || ()).unwrap();
        let later = NOW + ENTRY_IDLE_MS + 1;
        let s2 = session(later, 1);
        assert_eq!(t.admit(later, member(99, 0), s2, (0, 0), Slot::New, || ()), Ok(()), "idle entries make room");
        assert_eq!(t.len(), 1, "every idle entry, the server's too, made room");
    }

    #[test]
    fn one_credential_holds_at_most_its_share() {
        let mut t = ReplayTable::<()>::new(16 * CREDENTIAL_SHARE_DIVISOR);
        let s = session(NOW, 1);
        for i in 0..16 {
            t.admit(NOW, member(1, i), s, (0, 0), Slot::New, || ()).unwrap();
        }
        assert_eq!(t.admit(NOW, member(1, 16), s, (0, 0), Slot::New, || ()), Err(Refusal::TableFull));
        assert_eq!(t.admit(NOW, member(2, 0), s, (0, 0), Slot::New, || ()), Ok(()), "others still get in");
    }
}
