//! One process: the roles it holds, fed by one host (DESIGN section 2: "one process may hold
//! several"). It routes each input to the roles that handle it and collects their actions in
//! one [`Outbox`], so that write ids are ordered per process as a host's log orders them.

use std::sync::Arc;

use bytes::Bytes;
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::action::{Action, Outbox, Record, WriteId};
use crate::checkpoint_server::CheckpointServer;
use crate::client::{Client, SendError};
use crate::commit_server::CommitServer;
use crate::config::Config;
use crate::data_server::DataServer;
use crate::ids::{Epoch, Incarnation, Mid, Pid, Seq, Source, Time};
use crate::message::Message;
use crate::sequencer::Sequencer;

/// Which roles a process holds. The sequencer is not chosen: the commit server of rank 0 runs
/// the first epoch when the group starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Roles {
    /// A commit server (its pid must be in `Config::commit_servers`).
    pub commit: bool,
    /// A data server (its pid must be in `Config::data_servers`).
    pub data: bool,
    /// A checkpoint server's block service.
    pub checkpoint: bool,
    /// A member that sends and delivers, with this incarnation.
    pub client: Option<Incarnation>,
}

/// A process of the group: its roles and their pending actions.
#[derive(Debug)]
pub struct Process {
    pid: Pid,
    sequencer: Option<Sequencer>,
    commit: Option<CommitServer>,
    data: Option<DataServer>,
    checkpoint: Option<CheckpointServer>,
    client: Option<Client>,
    out: Outbox,
}

impl Process {
    /// Starts a process from its durable `records` (empty on first start). `seed` seeds the
    /// roles' random choices (NACK jitter, server rotation), so a run replays exactly.
    ///
    /// The commit server of rank 0 starts the first epoch's sequencer when it starts with no
    /// records; a restarted one does not (taking over needs the ballot of DESIGN section 6).
    pub fn start(cfg: Arc<Config>, pid: Pid, roles: Roles, seed: u64, now: Time, records: &[Record]) -> Process {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut fork = || Xoshiro256PlusPlus::from_rng(&mut rng);
        let first_sequencer = roles.commit && cfg.commit_rank(pid) == Some(0) && records.is_empty();
        Process {
            pid,
            sequencer: first_sequencer.then(|| Sequencer::new(cfg.clone(), pid, Epoch::initial(), Seq(1), now)),
            commit: roles.commit.then(|| CommitServer::recover(cfg.clone(), pid, fork(), records)),
            data: roles.data.then(|| DataServer::recover(cfg.clone(), records)),
            checkpoint: roles.checkpoint.then(CheckpointServer::new),
            client: roles.client.map(|incarnation| Client::new(cfg.clone(), Source { pid, incarnation }, fork())),
            out: Outbox::new(),
        }
    }

    /// This process's id.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The sequencer role, if this process runs the current epoch.
    pub fn sequencer(&self) -> Option<&Sequencer> {
        self.sequencer.as_ref()
    }

    /// The commit server role.
    pub fn commit_server(&self) -> Option<&CommitServer> {
        self.commit.as_ref()
    }

    /// The data server role.
    pub fn data_server(&self) -> Option<&DataServer> {
        self.data.as_ref()
    }

    /// The checkpoint server role.
    pub fn checkpoint_server(&mut self) -> Option<&mut CheckpointServer> {
        self.checkpoint.as_mut()
    }

    /// The client role.
    pub fn client(&self) -> Option<&Client> {
        self.client.as_ref()
    }

    /// Sends `payload` to the group from this process's client role.
    pub fn send(&mut self, now: Time, payload: Bytes) -> Result<Mid, SendError> {
        let client = self.client.as_mut().expect("send needs the client role");
        let result = client.send(now, payload, &mut self.out);
        self.check_invariants();
        result
    }

    /// Routes a message from `from` to the roles that handle its kind.
    pub fn handle(&mut self, now: Time, from: Pid, msg: &Message) {
        let out = &mut self.out;
        match msg {
            Message::Data(m) => {
                if let Some(d) = &mut self.data {
                    d.handle_data(m, out);
                }
                if let Some(c) = &mut self.client {
                    c.handle_data(now, m, out);
                }
            }
            Message::Order(m) => {
                if let Some(s) = &mut self.sequencer {
                    s.handle_order(from, m, out);
                }
            }
            Message::Assign(m) => {
                if let Some(c) = &mut self.commit {
                    c.handle_assign(from, m, out);
                }
            }
            Message::Accepted(m) => {
                if let Some(s) = &mut self.sequencer {
                    let mark = out.len();
                    s.handle_accepted(now, from, m, out);
                    self.commit_locally(now, mark);
                }
            }
            Message::Rejected(m) => {
                if let Some(s) = &mut self.sequencer {
                    s.handle_rejected(m);
                }
            }
            Message::Commit(m) => {
                if let Some(c) = &mut self.commit {
                    c.handle_commit(now, m);
                }
                if let Some(d) = &mut self.data {
                    d.handle_commit(m);
                }
                if let Some(c) = &mut self.client {
                    c.handle_commit(now, m, out);
                }
            }
            Message::Heartbeat(m) => {
                if let Some(c) = &mut self.commit {
                    c.handle_heartbeat(now, m);
                }
                if let Some(d) = &mut self.data {
                    d.handle_heartbeat(m);
                }
                if let Some(c) = &mut self.client {
                    c.handle_heartbeat(now, m, out);
                }
            }
            Message::QueryEntries(m) => {
                if let Some(c) = &self.commit {
                    c.handle_query(from, m, out);
                }
            }
            Message::Entries(m) => {
                if let Some(c) = &mut self.commit {
                    c.handle_entries(now, m, out);
                }
                if let Some(c) = &mut self.client {
                    c.handle_entries(now, m, out);
                }
            }
            Message::Fetch(m) => {
                if let Some(d) = &self.data {
                    d.handle_fetch(from, m, out);
                }
            }
            Message::FetchBlocks(m) => {
                if let Some(c) = &self.checkpoint {
                    c.handle_fetch_blocks(from, m, out);
                }
            }
            Message::Block(_) => {}
        }
        self.check_invariants();
    }

    /// Shows the co-located commit server the `Commit`s its sequencer just announced: the
    /// global channel may lose them, and when every commit server has missed one, the
    /// sequencer's own is where the others refill it from.
    fn commit_locally(&mut self, now: Time, mark: usize) {
        let Some(c) = &mut self.commit else { return };
        for action in self.out.since(mark) {
            if let Action::Send { msg: Message::Commit(commit), .. } = action {
                c.handle_commit(now, commit);
            }
        }
    }

    /// Lets every role act on its timers.
    pub fn handle_tick(&mut self, now: Time) {
        let out = &mut self.out;
        if let Some(s) = &mut self.sequencer {
            s.handle_tick(now, out);
        }
        if let Some(c) = &mut self.commit {
            c.handle_tick(now, out);
        }
        if let Some(c) = &mut self.client {
            c.handle_tick(now, out);
        }
        self.check_invariants();
    }

    /// The host made every write up to `upto` durable.
    pub fn handle_durable(&mut self, upto: WriteId) {
        let out = &mut self.out;
        if let Some(c) = &mut self.commit {
            c.handle_durable(upto, out);
        }
        if let Some(d) = &mut self.data {
            d.handle_durable(upto, out);
        }
        self.check_invariants();
    }

    /// When the process next needs [`Process::handle_tick`] (`None`: only inputs wake it).
    pub fn poll_timeout(&self) -> Option<Time> {
        let timers = [
            self.sequencer.as_ref().map(Sequencer::poll_timeout),
            self.commit.as_ref().and_then(CommitServer::poll_timeout),
            self.client.as_ref().and_then(Client::poll_timeout),
        ];
        timers.into_iter().flatten().min()
    }

    /// Takes the actions the last inputs produced, oldest first.
    pub fn drain_actions(&mut self) -> std::vec::Drain<'_, Action> {
        self.out.drain()
    }

    fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            if let Some(s) = &self.sequencer {
                s.check_invariants();
            }
            if let Some(c) = &self.commit {
                c.check_invariants();
            }
            if let Some(c) = &self.client {
                c.check_invariants();
            }
        }
    }
}
