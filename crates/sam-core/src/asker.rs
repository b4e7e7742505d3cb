//! When and whom a role asks for what it missed (DESIGN section 4, gap recovery).
//!
//! Members and commit servers recover gaps the same way: after a short random delay they ask
//! one server, and if it does not answer in time they ask the next one. The question itself
//! (which numbers, which mids) is the role's business; an [`Asker`] only decides the timing
//! and the target, so that every role rotates and backs off alike, and remembers whom it asked
//! lately: answers are believed only from them (DESIGN section 12, "Entries only as the answer
//! to a query this process has outstanding, from the peer asked").

use rand_xoshiro::rand_core::RngCore;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::ids::{Pid, Time};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing missing.
    Idle,
    /// Something is missing; ask at this time unless it arrives first.
    Delayed(Time),
    /// Asked; if nothing useful arrives by this time, ask the next server.
    Asked(Time),
}

/// Timing and rotation of one kind of recovery question.
#[derive(Clone, Debug)]
pub(crate) struct Asker {
    targets: Vec<Pid>,
    turn: usize,
    state: State,
    delay_us: u64,
    timeout_us: u64,
    /// Per target, until when an answer from it is expected.
    answer_until: Vec<Option<Time>>,
}

/// How many timeouts after a question its answer is still taken: answers are split over
/// datagrams, and a late answer from a server passed over is as true as an early one.
const ANSWER_TIMEOUTS: u64 = 2;

impl Asker {
    /// Asks `targets` in turn, starting from an offset chosen by `rng` so that members spread
    /// over the servers.
    pub(crate) fn new(targets: Vec<Pid>, delay_us: u64, timeout_us: u64, rng: &mut Xoshiro256PlusPlus) -> Asker {
        let turn = if targets.is_empty() { 0 } else { (rng.next_u64() % targets.len() as u64) as usize };
        let answer_until = vec![None; targets.len()];
        Asker { targets, turn, state: State::Idle, delay_us, timeout_us, answer_until }
    }

    /// Something is missing: start the random delay unless a question is already planned.
    pub(crate) fn missing(&mut self, now: Time, rng: &mut Xoshiro256PlusPlus) {
        if self.state == State::Idle && !self.targets.is_empty() {
            let jitter = if self.delay_us == 0 { 0 } else { rng.next_u64() % self.delay_us };
            self.state = State::Delayed(now.plus_us(jitter));
        }
    }

    /// Nothing is missing any more.
    pub(crate) fn settled(&mut self) {
        self.state = State::Idle;
    }

    /// An answer brought something useful: the same server may be asked again at once.
    pub(crate) fn progress(&mut self, now: Time) {
        if let State::Asked(_) = self.state {
            self.state = State::Delayed(now);
        }
    }

    /// The server asked said it cannot answer: ask the next one at once.
    pub(crate) fn refused(&mut self, now: Time) {
        if let State::Asked(_) = self.state {
            self.turn += 1;
            self.state = State::Delayed(now);
        }
    }

    /// The question asked is overdue at `at` if that is before its timeout.
    pub(crate) fn expect_by(&mut self, at: Time) {
        if let State::Asked(deadline) = self.state {
            self.state = State::Asked(deadline.min(at));
        }
    }

    /// Whether a question was asked and its answer is overdue (the next [`Asker::due`] asks
    /// the next server).
    pub(crate) fn timed_out(&self, now: Time) -> bool {
        matches!(self.state, State::Asked(at) if now >= at)
    }

    /// The server to ask now, if it is time to ask. A new question skips `avoid` when another
    /// target exists (members spare the sequencer's process); a question that timed out goes
    /// to the next server in turn, `avoid` included, so that a server only it can answer is
    /// reached too.
    pub(crate) fn due(&mut self, now: Time, avoid: Option<Pid>) -> Option<Pid> {
        let index = match self.state {
            State::Idle => return None,
            State::Delayed(at) | State::Asked(at) if now < at => return None,
            State::Asked(_) if self.targets.is_empty() => return None,
            State::Asked(_) => {
                self.turn += 1;
                self.turn % self.targets.len()
            }
            State::Delayed(_) => self.pick(avoid)?,
        };
        self.state = State::Asked(now.plus_us(self.timeout_us));
        self.answer_until[index] = Some(now.plus_us(ANSWER_TIMEOUTS * self.timeout_us));
        Some(self.targets[index])
    }

    /// Whether `from` was asked lately enough that an answer from it is believed.
    pub(crate) fn awaits(&self, from: Pid, now: Time) -> bool {
        let asked = |(target, until): (&Pid, &Option<Time>)| *target == from && until.is_some_and(|u| now <= u);
        self.targets.iter().zip(&self.answer_until).any(asked)
    }

    /// The index of the next target in turn that is not `avoid` (unless it is the only one).
    fn pick(&mut self, avoid: Option<Pid>) -> Option<usize> {
        let n = self.targets.len();
        for _ in 0..n {
            let index = self.turn % n;
            if Some(self.targets[index]) != avoid || n == 1 {
                return Some(index);
            }
            self.turn += 1;
        }
        None
    }

    /// When this asker next needs a tick.
    pub(crate) fn deadline(&self) -> Option<Time> {
        match self.state {
            State::Idle => None,
            State::Delayed(t) | State::Asked(t) => Some(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_xoshiro::rand_core::SeedableRng;

    #[test]
    fn rotates_on_timeout_and_spares_the_avoided_server_for_new_questions() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let mut a = Asker::new(vec![Pid(1), Pid(2), Pid(3)], 10, 100, &mut rng);
        a.turn = 0;
        a.missing(Time(0), &mut rng);
        assert_eq!(a.due(Time(5), Some(Pid(1))).or(a.due(Time(10), Some(Pid(1)))), Some(Pid(2)));
        assert_eq!(a.due(Time(50), None), None, "still waiting for the answer");
        assert_eq!(a.due(Time(200), Some(Pid(1))), Some(Pid(3)), "timeout: next server");
        assert_eq!(a.due(Time(400), Some(Pid(1))), Some(Pid(1)), "after a timeout the avoided one is asked too");
        a.progress(Time(450));
        assert_eq!(a.due(Time(450), Some(Pid(1))), Some(Pid(2)), "a new question skips the avoided one again");
    }

    #[test]
    fn progress_allows_the_next_question_at_once() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let mut a = Asker::new(vec![Pid(1)], 0, 100, &mut rng);
        a.missing(Time(0), &mut rng);
        assert_eq!(a.due(Time(0), None), Some(Pid(1)));
        a.progress(Time(3));
        assert_eq!(a.due(Time(3), None), Some(Pid(1)));
        a.settled();
        assert_eq!(a.due(Time(500), None), None);
    }

    #[test]
    fn answers_are_awaited_only_from_servers_asked_lately() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let mut a = Asker::new(vec![Pid(1), Pid(2)], 0, 100, &mut rng);
        a.turn = 0;
        assert!(!a.awaits(Pid(1), Time(0)), "nothing was asked");
        a.missing(Time(0), &mut rng);
        assert_eq!(a.due(Time(0), None), Some(Pid(1)));
        assert!(a.awaits(Pid(1), Time(150)) && !a.awaits(Pid(2), Time(150)), "only the server asked");
        assert_eq!(a.due(Time(100), None), Some(Pid(2)), "timeout: the next server");
        assert!(a.awaits(Pid(1), Time(200)), "a late answer from the first is still taken");
        assert!(!a.awaits(Pid(1), Time(201)) && a.awaits(Pid(2), Time(300)));
        assert!(!a.awaits(Pid(2), Time(301)) && !a.awaits(Pid(9), Time(0)));
    }
}
