//! The processes of a fault run: the servers (`sam server`), which the harness kills, pauses
//! and restarts from their disks, and the members (`sam fault member`), whose history records
//! a thread per member reads from its standard output. Every process is stopped by its pid
//! when the fleet is dropped (killed if it does not stop in time), and dies with the harness
//! if the harness itself is killed. A process that exits on its own is reported.

use std::fs;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::history::Record;
use super::hosts::Hosts;

/// How a server process stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Running.
    Up,
    /// Killed (`SIGKILL`), not restarted yet.
    Down,
    /// Stopped (`SIGSTOP`).
    Paused,
}

/// One server process.
struct Server {
    id: u64,
    child: Option<Child>,
    state: State,
}

/// One member process and the thread that reads its records.
struct Member {
    child: Option<Child>,
    reader: Option<JoinHandle<()>>,
}

/// How long a process asked to stop may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// What a member's reader thread passes on: a record, or a line that is none.
pub enum Line {
    /// A history record.
    Record(Record),
    /// A line that did not parse (reported, never silently dropped).
    Garbled(String),
}

/// The run's processes, and the hosts they run on (removed after the processes stop).
pub struct Fleet {
    exe: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    servers: Vec<Server>,
    members: Vec<Member>,
    lines: mpsc::Sender<Line>,
    hosts: Option<Hosts>,
}

impl Fleet {
    /// A fleet of the servers `ids` of the cluster whose configuration is `config`, on
    /// `hosts` (loopback when `None`); member records go to `lines`.
    pub fn new(
        config: &Path,
        dir: &Path,
        ids: &[u64],
        lines: mpsc::Sender<Line>,
        hosts: Option<Hosts>,
    ) -> Result<Fleet> {
        fs::create_dir_all(dir.join("logs"))?;
        let servers = ids.iter().map(|id| Server { id: *id, child: None, state: State::Down }).collect();
        let exe = std::env::current_exe().context("finding the sam binary")?;
        let (config, dir) = (config.to_path_buf(), dir.to_path_buf());
        Ok(Fleet { exe, config, dir, servers, members: Vec::new(), lines, hosts })
    }

    /// The namespaces the processes run in, if not on loopback.
    pub fn hosts(&self) -> Option<&Hosts> {
        self.hosts.as_ref()
    }

    fn command(&self, host: Option<usize>) -> Command {
        match &self.hosts {
            Some(h) => h.command(host, &self.exe),
            None => Command::new(&self.exe),
        }
    }

    /// Starts server `i` (0-based): on new storage (`init`), or recovering its directory.
    pub fn start_server(&mut self, i: usize, init: bool) -> Result<()> {
        let id = self.servers[i].id;
        let log =
            fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("logs/server-{id}.log")))?;
        let mut command = self.command(Some(i + 1));
        command.arg("server").arg("--config").arg(&self.config).arg("--id").arg(id.to_string());
        if init {
            command.arg("--init");
        }
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = spawn(&mut command).with_context(|| format!("starting server {id}"))?;
        let server = &mut self.servers[i];
        (server.child, server.state) = (Some(child), State::Up);
        Ok(())
    }

    /// Starts member `member` with `args` (`sam fault member ...`), in the members' host.
    pub fn start_member(&mut self, member: usize, args: &[String]) -> Result<()> {
        let log = fs::File::create(self.dir.join(format!("logs/member-{member}.log")))?;
        let mut command = self.command(None);
        command.args(["fault", "member", "--config"]).arg(&self.config).arg("--member").arg(member.to_string());
        command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
        let mut child = spawn(&mut command).with_context(|| format!("starting member {member}"))?;
        let stdout = child.stdout.take().context("a member's output")?;
        let lines = self.lines.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let parsed = serde_json::from_str(&line).map_or(Line::Garbled(line), Line::Record);
                if lines.send(parsed).is_err() {
                    break;
                }
            }
        });
        self.members.push(Member { child: Some(child), reader: Some(reader) });
        Ok(())
    }

    /// A process that exited without being asked to: its name and how it ended.
    pub fn unexpected_exit(&mut self) -> Option<String> {
        for server in &mut self.servers {
            if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                server.child = None;
                server.state = State::Down;
                return Some(format!(
                    "server {} exited by itself ({status}); see logs/server-{}.log",
                    server.id, server.id
                ));
            }
        }
        for (i, member) in self.members.iter_mut().enumerate() {
            if let Some(status) = member.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                member.child = None;
                return Some(format!("member {i} exited by itself ({status}); see logs/member-{i}.log"));
            }
        }
        None
    }

    /// Server `i`'s state.
    pub fn state(&self, i: usize) -> State {
        self.servers[i].state
    }

    /// The index of the server with pid `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.servers.iter().position(|s| s.id == id)
    }

    /// Kills server `i` at once (`SIGKILL`: no chance to sync or say goodbye).
    pub fn kill(&mut self, i: usize) {
        let server = &mut self.servers[i];
        if let Some(mut child) = server.child.take() {
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
        server.state = State::Down;
    }

    /// Pauses server `i` (`SIGSTOP`) or lets it go on (`SIGCONT`).
    pub fn pause(&mut self, i: usize, paused: bool) {
        let server = &mut self.servers[i];
        if let Some(child) = &server.child {
            signal(child.id(), if paused { libc::SIGSTOP } else { libc::SIGCONT });
            server.state = if paused { State::Paused } else { State::Up };
        }
    }

    /// Asks the members `members` to stop (`SIGTERM`), waits for them, and for their readers
    /// to pass on the last of their records.
    pub fn stop_members(&mut self, members: std::ops::Range<usize>) {
        for member in &self.members[members.clone()] {
            if let Some(child) = &member.child {
                signal(child.id(), libc::SIGTERM);
            }
        }
        for member in &mut self.members[members] {
            if let Some(child) = member.child.take() {
                wait_or_kill(child);
            }
            if let Some(reader) = member.reader.take() {
                let _ = reader.join();
            }
        }
    }

    /// Stops every process: members, then servers (paused ones are let go first).
    pub fn stop(&mut self) {
        let all = 0..self.members.len();
        self.stop_members(all);
        for server in &mut self.servers {
            if let Some(child) = server.child.take() {
                signal(child.id(), libc::SIGCONT);
                signal(child.id(), libc::SIGTERM);
                wait_or_kill(child);
            }
            server.state = State::Down;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `command` so that the process dies with the harness (`PR_SET_PDEATHSIG` survives
/// the exec of `ip netns exec` and of `sam`, which `ip` execs in place: its pid is the
/// server's).
fn spawn(command: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2),
    // which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Waits for a process asked to stop; kills it if it takes longer than [`STOP_GRACE`].
fn wait_or_kill(mut child: Child) {
    let deadline = Instant::now() + STOP_GRACE;
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() >= deadline {
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) of a process this fleet started and has not reaped (each `Child` is
    // taken out of the fleet when it is waited for, so a reaped pid is never signalled).
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}
