//! Group commit: which records are durable, and the thread that makes them so.
//!
//! The writer (the [`Log`](crate::Log)) writes records to the file and then announces how far it
//! has written. The sync thread, whenever it is idle and the writer is ahead of the durable
//! position, takes the written position as its target, runs one `fdatasync`, and only when that
//! returns publishes the target as durable. Records written while an fsync runs wait for the
//! next, which covers all of them: the fsyncs form a pipeline and each covers everything that
//! arrived while the previous one ran (DESIGN section 9).
//!
//! The durable position only grows, is published in order by one thread, and never passes a
//! target whose fsync has not returned. A failed fsync stops everything: after one, the kernel
//! may have dropped pages that were never written, so no later position may be reported durable.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::StoreError;
use crate::log::Durability;
use crate::Position;

/// A callback the log calls with the new durable position each time it grows. It runs on the
/// sync thread (on the caller's thread under [`Durability::Os`]), so it must be quick and must not
/// panic: wake the event loop, send on a channel, and return.
pub type OnDurable = Arc<dyn Fn(Position) + Send + Sync>;

/// A callback the sync thread calls with how long each fsync took (for a metric); like
/// [`OnDurable`], it must be quick and must not panic.
pub type OnFsync = Arc<dyn Fn(Duration) + Send + Sync>;

/// A handle that reads and waits for the durable position of a log, from any thread. It stays
/// valid after the log is dropped (the position then stops growing).
#[derive(Clone)]
pub struct DurableWatch {
    shared: Arc<Shared>,
}

impl DurableWatch {
    /// The durable position: every record before it is durable. Never blocks.
    pub fn position(&self) -> Position {
        Position(self.shared.durable.load(Ordering::Acquire))
    }

    /// Blocks until every record before `target` is durable, or until `timeout` (if given) has
    /// passed, and returns the durable position then (below `target` only on a timeout). Fails
    /// if the log failed. Waiting for a target beyond what was flushed waits for a later flush.
    pub fn wait_for(&self, target: Position, timeout: Option<Duration>) -> Result<Position, StoreError> {
        self.shared.wait_for(target, timeout.map(|timeout| Instant::now() + timeout))
    }
}

impl std::fmt::Debug for DurableWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableWatch").field("position", &self.position()).finish()
    }
}

/// The writer's side of group commit; stops the sync thread when dropped.
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The state the writer, the sync thread and the watches share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the sync thread: there is something to sync, or it must stop.
    work: Condvar,
    /// Wakes waiters: the durable position grew, or the log failed.
    progress: Condvar,
    /// A copy of `State::durable` to read without the lock.
    durable: AtomicU64,
    /// Whether `State::failure` is set, to check without the lock.
    failed: AtomicBool,
    /// The number of fsyncs the sync thread has run.
    fsyncs: AtomicU64,
    on_durable: Option<OnDurable>,
}

struct State {
    /// Every record before this is written to `file` (or to a sealed, synced segment).
    written: Position,
    /// Every record before this is durable.
    durable: Position,
    /// The segment the writer appends to.
    file: Arc<File>,
    failure: Option<Arc<io::Error>>,
    stopping: bool,
    /// Whether the sync thread sleeps on `work`: only then does a write wake it (a wake is a
    /// system call, and a busy thread looks again before it sleeps).
    sync_idle: bool,
    /// Threads sleeping on `progress`: only with some does progress wake anyone.
    waiters: usize,
}

impl GroupCommit {
    /// Starts group commit for a log whose records before `durable` are durable and which appends
    /// to `file`; `on_fsync` hears how long each fsync took.
    pub fn start(
        durability: Durability,
        durable: Position,
        file: Arc<File>,
        on_durable: Option<OnDurable>,
        on_fsync: Option<OnFsync>,
    ) -> io::Result<GroupCommit> {
        let timed_sync = move |file: &File| {
            let began = Instant::now();
            let synced = file.sync_data();
            if let Some(on_fsync) = &on_fsync {
                on_fsync(began.elapsed());
            }
            synced
        };
        match durability {
            Durability::Fsync => GroupCommit::spawn(durable, file, on_durable, timed_sync),
            Durability::Os => Ok(GroupCommit { shared: Shared::new(durable, file, on_durable), thread: None }),
        }
    }

    /// Starts a sync thread that makes a file durable with `sync_file` (tests pass one they can
    /// hold back or fail).
    pub fn spawn<F>(
        durable: Position,
        file: Arc<File>,
        on_durable: Option<OnDurable>,
        sync_file: F,
    ) -> io::Result<GroupCommit>
    where
        F: FnMut(&File) -> io::Result<()> + Send + 'static,
    {
        let shared = Shared::new(durable, file, on_durable);
        let thread_shared = Arc::clone(&shared);
        let thread =
            std::thread::Builder::new().name("sam-store-sync".into()).spawn(move || thread_shared.run(sync_file))?;
        Ok(GroupCommit { shared, thread: Some(thread) })
    }

    /// Announces that every record before `upto` is written. Under [`Durability::Os`] that makes
    /// them durable at once; under [`Durability::Fsync`] it asks the sync thread for an fsync.
    pub fn written(&self, upto: Position) {
        if self.thread.is_some() {
            let mut state = self.shared.lock();
            assert!(upto >= state.written, "written positions only grow");
            state.written = upto;
            if state.sync_idle {
                self.shared.work.notify_one();
            }
        } else {
            self.shared.publish(upto);
        }
    }

    /// Makes the sync thread sync `file`, the new segment, from now on. The writer calls it only
    /// after the previous segment is sealed and durable.
    pub fn switch_file(&self, file: Arc<File>) {
        self.shared.lock().file = file;
    }

    /// Records that a write failed: the log accepts no more writes.
    pub fn fail(&self, error: io::Error) {
        self.shared.fail(error);
    }

    /// Fails if the log failed.
    pub fn check(&self) -> Result<(), StoreError> {
        if !self.shared.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        match &self.shared.lock().failure {
            Some(failure) => Err(StoreError::Failed(Arc::clone(failure))),
            None => Ok(()),
        }
    }

    /// The durable position.
    pub fn durable(&self) -> Position {
        self.watch().position()
    }

    /// A handle on the durable position.
    pub fn watch(&self) -> DurableWatch {
        DurableWatch { shared: Arc::clone(&self.shared) }
    }

    /// The number of fsyncs run so far.
    pub fn fsyncs(&self) -> u64 {
        self.shared.fsyncs.load(Ordering::Relaxed)
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take() {
            // A panic on the sync thread (in an `OnDurable` callback) has nowhere left to go.
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn new(durable: Position, file: Arc<File>, on_durable: Option<OnDurable>) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(State {
                written: durable,
                durable,
                file,
                failure: None,
                stopping: false,
                sync_idle: false,
                waiters: 0,
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            durable: AtomicU64::new(durable.0),
            failed: AtomicBool::new(false),
            fsyncs: AtomicU64::new(0),
            on_durable,
        })
    }

    /// The lock, whether or not a thread panicked holding it: every update under it is a single
    /// assignment, so the state is never half changed.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sync thread: one fsync per round, covering everything written when it started.
    fn run<F: FnMut(&File) -> io::Result<()>>(&self, mut sync_file: F) {
        while let Some((target, file)) = self.next_target() {
            let synced = sync_file(&file);
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            match synced {
                Ok(()) => self.publish(target),
                Err(error) => self.fail(error),
            }
        }
    }

    /// Waits until something written is not yet durable, and returns how far to sync and which
    /// file; `None` when the thread must stop.
    fn next_target(&self) -> Option<(Position, Arc<File>)> {
        let mut state = self.lock();
        loop {
            if state.stopping || state.failure.is_some() {
                return None;
            }
            if state.written > state.durable {
                return Some((state.written, Arc::clone(&state.file)));
            }
            state.sync_idle = true;
            state = self.work.wait(state).unwrap_or_else(PoisonError::into_inner);
            state.sync_idle = false;
        }
    }

    /// Makes every record before `upto` durable: calls the callback, then tells the waiters,
    /// so that whoever waited for a position has seen its callback. One thread publishes (the
    /// fsync thread, or the caller with no fsync), so callbacks come in order.
    fn publish(&self, upto: Position) {
        {
            let state = self.lock();
            if upto <= state.durable || state.failure.is_some() {
                return;
            }
        }
        if let Some(on_durable) = &self.on_durable {
            on_durable(upto);
        }
        let mut state = self.lock();
        state.durable = state.durable.max(upto);
        self.durable.store(state.durable.0, Ordering::Release);
        if state.waiters > 0 {
            self.progress.notify_all();
        }
    }

    fn fail(&self, error: io::Error) {
        let mut state = self.lock();
        state.failure.get_or_insert_with(|| Arc::new(error));
        self.failed.store(true, Ordering::Release);
        self.progress.notify_all();
    }

    fn wait_for(&self, target: Position, deadline: Option<Instant>) -> Result<Position, StoreError> {
        let mut state = self.lock();
        loop {
            if let Some(failure) = &state.failure {
                return Err(StoreError::Failed(Arc::clone(failure)));
            }
            if state.durable >= target {
                return Ok(state.durable);
            }
            let left = match deadline {
                None => None,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(state.durable),
                },
            };
            state.waiters += 1;
            state = match left {
                None => self.progress.wait(state).unwrap_or_else(PoisonError::into_inner),
                Some(left) => self.progress.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0,
            };
            state.waiters -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The ordering contract of group commit, with an fsync the test holds back.

    use std::sync::mpsc::{self, Receiver, Sender};

    use super::*;

    /// An fsync that tells the test it started, then waits for the test's word.
    struct HeldFsync {
        started: Receiver<()>,
        release: Sender<io::Result<()>>,
    }

    fn spawn_held(on_durable: Option<OnDurable>) -> (GroupCommit, HeldFsync) {
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<io::Result<()>>();
        let file = Arc::new(tempfile::tempfile().expect("temporary file"));
        let sync_file = move |_: &File| {
            started_tx.send(()).expect("test alive");
            release_rx.recv().expect("test alive")
        };
        let commit = GroupCommit::spawn(Position::ZERO, file, on_durable, sync_file).expect("spawn");
        (commit, HeldFsync { started, release })
    }

    fn recorder() -> (OnDurable, Arc<Mutex<Vec<Position>>>) {
        let reported = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&reported);
        let on_durable: OnDurable = Arc::new(move |position| sink.lock().expect("no panic").push(position));
        (on_durable, reported)
    }

    #[test]
    fn nothing_is_durable_before_its_fsync_returns_and_the_next_fsync_covers_the_backlog() {
        let (on_durable, reported) = recorder();
        let (commit, fsync) = spawn_held(Some(on_durable));
        commit.written(Position(1));
        fsync.started.recv().expect("first fsync starts");
        // The first fsync is running; records written meanwhile must wait for the next one.
        commit.written(Position(5));
        commit.written(Position(9));
        assert_eq!(commit.durable(), Position::ZERO, "reported before its fsync returned");
        fsync.release.send(Ok(())).expect("thread alive");
        fsync.started.recv().expect("second fsync starts");
        assert_eq!(commit.durable(), Position(1), "the first fsync covers only what was written before it");
        fsync.release.send(Ok(())).expect("thread alive");
        assert_eq!(commit.watch().wait_for(Position(9), None).expect("no failure"), Position(9));
        assert_eq!(commit.fsyncs(), 2, "one fsync covered positions 1 to 9");
        assert_eq!(*reported.lock().expect("no panic"), [Position(1), Position(9)]);
    }

    #[test]
    fn a_failed_fsync_reports_nothing_more_and_fails_every_waiter() {
        let (on_durable, reported) = recorder();
        let (commit, fsync) = spawn_held(Some(on_durable));
        commit.written(Position(3));
        fsync.started.recv().expect("fsync starts");
        fsync.release.send(Err(io::Error::other("disk gone"))).expect("thread alive");
        assert!(matches!(commit.watch().wait_for(Position(3), None), Err(StoreError::Failed(_))));
        assert!(matches!(commit.check(), Err(StoreError::Failed(_))));
        commit.written(Position(4));
        assert_eq!(commit.durable(), Position::ZERO);
        assert!(reported.lock().expect("no panic").is_empty());
    }

    #[test]
    fn a_wait_times_out_with_the_position_reached() {
        let (commit, _fsync) = spawn_held(None);
        let reached = commit.watch().wait_for(Position(1), Some(Duration::from_millis(10)));
        assert_eq!(reached.expect("no failure"), Position::ZERO);
    }

    #[test]
    fn each_fsync_is_timed_for_whoever_asked() {
        let times = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&times);
        let on_fsync: OnFsync = Arc::new(move |took| sink.lock().expect("no panic").push(took));
        let file = Arc::new(tempfile::tempfile().expect("temporary file"));
        let commit = GroupCommit::start(Durability::Fsync, Position::ZERO, file, None, Some(on_fsync)).expect("start");
        commit.written(Position(1));
        commit.watch().wait_for(Position(1), None).expect("no failure");
        assert_eq!(times.lock().expect("no panic").len() as u64, commit.fsyncs());
        assert!(commit.fsyncs() >= 1);
    }

    #[test]
    fn os_durability_publishes_on_write() {
        let (on_durable, reported) = recorder();
        let file = Arc::new(tempfile::tempfile().expect("temporary file"));
        let commit = GroupCommit::start(Durability::Os, Position(2), file, Some(on_durable), None).expect("start");
        commit.written(Position(4));
        assert_eq!(commit.durable(), Position(4));
        assert_eq!(commit.fsyncs(), 0);
        assert_eq!(*reported.lock().expect("no panic"), [Position(4)]);
    }
}
