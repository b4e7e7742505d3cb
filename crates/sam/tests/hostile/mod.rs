//! The machinery of the hostile-network suite (DESIGN section 12): clusters of real `sam`
//! processes on loopback, the legitimate traffic and what it must deliver, and the attacker's
//! tools — a plain UDP socket, a sniffer on the multicast groups, frames built by hand
//! (wire version 1, and version 2 headers with garbage where the tags go), and a member
//! credential of its own with the library's `Sealer`.
//!
//! Every process started here is stopped by its pid when its guard is dropped, also when a
//! test fails.

use std::collections::{BTreeMap, HashSet};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use sam_core::message::{CheckpointInfo, Data, Heartbeat};
use sam_core::wire::{encode_frame, FramePacker};
use sam_core::{Chain, Channel, Digest, Entry, Epoch, Incarnation, Message, Mid, Pid, Seq, Source};
use sam_net::security::envelope::Mode;
use sam_net::security::keys::MEMBER_PIDS;
use sam_net::security::{Opener, SealFor, Sealer, SecurityPlan, ServerKeys};
use sam_net::Group;
use sam_node::config::{ClusterConfig, KeyUser};

/// The `sam` binary under test.
pub const SAM: &str = env!("CARGO_BIN_EXE_sam");

/// What every forged payload contains, so that a delivery of one is recognised at once.
pub const FORGED: &[u8] = b"FORGED";

/// The size of every legitimate generated message.
pub const SIZE: usize = 40;

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A `sam` process whose output goes to files (a pipe nobody reads would block it); killed by
/// its pid when dropped.
pub struct Running {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

/// Starts `command` with its stdout and stderr in files of their own.
pub fn spawn(mut command: Command) -> Running {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = std::env::temp_dir().join(format!("sam-hostile-{}-{n}", std::process::id()));
    let (out, err) = (base.with_extension("out"), base.with_extension("err"));
    let file = |p: &Path| std::fs::File::create(p).expect("create an output file for a sam process");
    let child = command.stdin(Stdio::null()).stdout(file(&out)).stderr(file(&err)).spawn().expect("spawn sam");
    Running { child, out, err }
}

impl Running {
    /// What it printed so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits for it at most `limit`, killing it if it takes longer: its exit status, stdout and
    /// stderr.
    pub fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let start = Instant::now();
        while self.child.try_wait().expect("wait for a sam process").is_none() {
            if start.elapsed() > limit {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = self.child.wait().expect("wait for a sam process");
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        (status, read(&self.out), read(&self.err))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(&self.err);
    }
}

/// Runs `command` to its end (at most `limit`) and asserts it succeeded: its stdout.
pub fn run_ok(command: Command, limit: Duration) -> String {
    let what = format!("{command:?}");
    let (status, out, err) = spawn(command).finish(limit);
    assert!(status.success(), "{what} failed ({status}): {err}");
    out
}

/// A message of `size` bytes that says which one it is: what `sam send --count` sends as its
/// `i`-th message.
pub fn generated(i: u64, size: usize) -> Vec<u8> {
    let mut text = format!("message {i} ").into_bytes();
    text.resize(size.max(text.len()), b'.');
    text.truncate(size.max(1));
    text
}

/// The pid and counter of a message id as `sam` prints it (`pid/incarnation/counter`).
pub fn mid_parts(mid: &str) -> (u64, u64, u64) {
    let parts: Vec<&str> = mid.split('/').collect();
    let [pid, incarnation, counter] = parts[..] else { panic!("not a message id: {mid}") };
    let number = |s: &str, radix| u64::from_str_radix(s, radix).unwrap_or_else(|_| panic!("not a message id: {mid}"));
    (number(pid, 10), number(incarnation, 16), number(counter, 10))
}

/// The resident memory of process `pid`, from /proc.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS in kB");
    kb * 1024
}

/// The bytes of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// A local cluster
// ---------------------------------------------------------------------------------------------

/// A cluster `sam local up --detach` started in a temporary directory; `sam local down` when
/// dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    up_args: Vec<String>,
}

impl Cluster {
    /// Starts a new cluster on `base_port` and the ports after it.
    pub fn up(base_port: u16, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("a temporary directory for the cluster");
        let mut up_args = vec!["--base-port".to_string(), base_port.to_string()];
        up_args.extend(extra.iter().map(|s| s.to_string()));
        let cluster = Cluster { dir, up_args };
        let (status, err) = cluster.start();
        assert!(status.success(), "sam local up failed: {err}");
        cluster
    }

    /// `sam local up --detach` on this directory (again: then without the options that make
    /// a new cluster, which an existing one refuses): its exit status and stderr.
    pub fn start(&self) -> (ExitStatus, String) {
        let new = !self.path().join("sam.toml").exists();
        let out = Command::new(SAM)
            .args(["local", "up", "--detach"])
            .args(if new { &self.up_args[..] } else { &[] })
            .arg("--dir")
            .arg(self.path())
            .output()
            .expect("run sam local up");
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `sam local down`.
    pub fn stop(&self) {
        let out = Command::new(SAM).args(["local", "down", "--dir"]).arg(self.path()).output().expect("sam local down");
        assert!(out.status.success(), "sam local down failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Its configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.path().join("sam.toml")
    }

    /// Its configuration.
    pub fn config(&self) -> ClusterConfig {
        ClusterConfig::load(&self.config_path()).expect("load the cluster's sam.toml")
    }

    /// `sam ARGS[0] --config sam.toml ARGS[1..]`.
    pub fn sam(&self, args: &[&str]) -> Command {
        sam_with(&self.config_path(), args)
    }

    /// The server processes' ids, in the configuration's order.
    pub fn server_pids(&self) -> Vec<u32> {
        let text = std::fs::read_to_string(self.path().join("pids")).expect("the cluster's pids file");
        text.lines().map(|l| l.trim().parse().expect("a pid")).collect()
    }

    /// How many records server `id` said it recovered when it last started.
    pub fn records_recovered(&self, id: u64) -> u64 {
        let log = self.path().join("logs").join(format!("server-{id}.log"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("records recovered")) {
                let before = &line[..line.find(" records recovered").expect("the phrase is in the line")];
                let count = before.rsplit('(').next().and_then(|n| n.parse().ok());
                return count.unwrap_or_else(|| panic!("no count in {line:?}"));
            }
            assert!(Instant::now() < deadline, "server {id} never said what it recovered: {text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(SAM).args(["local", "down", "--dir"]).arg(self.path()).output();
    }
}

/// `sam ARGS[0] --config CONFIG ARGS[1..]`.
pub fn sam_with(config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(SAM);
    command.args(&args[..1]).arg("--config").arg(config).args(&args[1..]);
    command
}

/// Server processes started one by one with `sam server --init`; killed by pid when dropped.
pub struct Servers {
    children: Vec<Child>,
}

impl Servers {
    /// Starts every server of the configuration in file `config`.
    pub fn start(config_path: &Path, config: &ClusterConfig, logs: &Path) -> Servers {
        std::fs::create_dir_all(logs).expect("a logs directory");
        let mut servers = Servers { children: Vec::new() };
        for server in &config.servers {
            let log = std::fs::File::create(logs.join(format!("server-{}.log", server.id.0))).expect("a server log");
            let child = sam_with(config_path, &["server", "--id", &server.id.0.to_string(), "--init"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("a second handle on the log"))
                .stderr(log)
                .spawn()
                .expect("spawn sam server");
            servers.children.push(child);
        }
        servers
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the group says: status and deliveries
// ---------------------------------------------------------------------------------------------

/// What `sam status --json` says.
#[derive(Clone, Debug)]
pub struct Status {
    /// `round.rank`, when the sequencer was heard.
    pub epoch: Option<String>,
    /// The sequencer's pid.
    pub sequencer: Option<u64>,
    /// The highest committed number.
    pub committed: u64,
    /// The advertised checkpoint (JSON null when none).
    pub checkpoint: serde_json::Value,
}

impl Status {
    /// The epoch as a number.
    pub fn epoch(&self) -> Epoch {
        let text = self.epoch.as_deref().expect("an epoch in the status");
        let (round, rank) = text.split_once('.').expect("epoch as round.rank");
        Epoch::new(round.parse().expect("a round"), rank.parse().expect("a rank"))
    }

    /// The sequencer's pid.
    pub fn sequencer(&self) -> Pid {
        Pid(self.sequencer.expect("a sequencer in the status"))
    }
}

/// `sam status --json` of the cluster whose configuration is `config`, again until it heard the
/// sequencer (at most a few times).
pub fn status_of(config: &Path) -> Status {
    let mut last = String::new();
    for _ in 0..10 {
        let (_, out, err) = spawn(sam_with(config, &["status", "--json"])).finish(Duration::from_secs(20));
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) {
            let status = Status {
                epoch: v["epoch"].as_str().map(str::to_owned),
                sequencer: v["sequencer"].as_u64(),
                committed: v["committed"].as_u64().expect("committed in the status"),
                checkpoint: v["checkpoint"].clone(),
            };
            if status.epoch.is_some() && status.sequencer.is_some() {
                return status;
            }
        }
        last = format!("{out}{err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("sam status never heard a sequencer: {last}");
}

/// One delivery a tail printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The number.
    pub seq: u64,
    /// The message id.
    pub mid: String,
    /// The payload.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {:?}", self.seq, self.mid, String::from_utf8_lossy(&self.payload))
    }
}

/// The complete lines of `sam tail --format jsonl` output.
pub fn parse_jsonl(text: &str) -> Vec<Delivery> {
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line from sam tail");
            let payload = match (v["payload"].as_str(), v["payload_b64"].as_str()) {
                (Some(text), _) => text.as_bytes().to_vec(),
                (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64).expect("base64 payload"),
                _ => panic!("a delivery without payload: {line}"),
            };
            Delivery { seq: v["seq"].as_u64().expect("seq"), mid: v["mid"].as_str().expect("mid").to_owned(), payload }
        })
        .collect()
}

/// A `sam tail --format jsonl` that runs until dropped.
pub struct Tail(Running);

impl Tail {
    /// Starts a tail of the cluster whose configuration is `config`, from number 1.
    pub fn start(config: &Path) -> Tail {
        Tail(spawn(sam_with(config, &["tail", "--format", "jsonl"])))
    }

    /// What it delivered so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        parse_jsonl(&self.0.stdout())
    }

    /// What it delivered once it delivered at least `n` (at most `limit` later), and a little
    /// longer, so that one delivery too many shows.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Delivery> {
        let deadline = Instant::now() + limit;
        while self.deliveries().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        self.deliveries()
    }
}

/// Everything legitimate senders were told is committed: number → (message id, payload).
#[derive(Default)]
pub struct Ledger {
    by_seq: BTreeMap<u64, (String, Vec<u8>)>,
}

impl Ledger {
    /// Notes what a `sam send --count N --size SIZE` printed (`seq mid` per line); its
    /// `(seq, mid)`s.
    pub fn add_sent(&mut self, printed: &str) -> Vec<(u64, String)> {
        self.add_sent_sized(printed, SIZE)
    }

    /// Notes what a `sam send --count N --size SIZE` printed, for messages of `size` bytes.
    pub fn add_sent_sized(&mut self, printed: &str, size: usize) -> Vec<(u64, String)> {
        let mut sent = Vec::new();
        for line in printed.lines() {
            let (seq, mid) = line.split_once(' ').expect("`seq mid` from sam send");
            let seq: u64 = seq.parse().expect("a number from sam send");
            let (_, _, counter) = mid_parts(mid);
            let payload = generated(counter - 1, size);
            let before = self.by_seq.insert(seq, (mid.to_owned(), payload));
            assert!(before.is_none(), "number {seq} was committed twice to senders: {before:?} and {mid}");
            sent.push((seq, mid.to_owned()));
        }
        sent
    }

    /// How many messages were committed.
    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// The highest number committed.
    pub fn last(&self) -> u64 {
        self.by_seq.keys().next_back().copied().unwrap_or(0)
    }

    /// The pids of every legitimate sender so far.
    pub fn senders(&self) -> HashSet<u64> {
        self.by_seq.values().map(|(mid, _)| mid_parts(mid).0).collect()
    }

    /// Asserts that `who` delivered exactly the legitimate messages, each at its number with
    /// its payload, nothing twice and nothing forged.
    pub fn check(&self, got: &[Delivery], who: &str) {
        for d in got {
            assert!(!d.payload.windows(FORGED.len()).any(|w| w == FORGED), "{who} delivered a forged message: {d:?}");
        }
        let mut seqs = HashSet::new();
        let mut mids = HashSet::new();
        for d in got {
            assert!(seqs.insert(d.seq), "{who} delivered number {} twice", d.seq);
            assert!(mids.insert(d.mid.clone()), "{who} delivered message {} twice", d.mid);
        }
        let unexpected: Vec<&Delivery> =
            got.iter().filter(|d| self.by_seq.get(&d.seq) != Some(&(d.mid.clone(), d.payload.clone()))).collect();
        assert!(unexpected.is_empty(), "{who} delivered what no legitimate sender was told: {:?}", &unexpected);
        let missing: Vec<u64> = self.by_seq.keys().filter(|s| !seqs.contains(*s)).copied().collect();
        assert!(missing.is_empty(), "{who} did not deliver numbers {missing:?} (of {})", self.len());
    }
}

// ---------------------------------------------------------------------------------------------
// A multicast cluster under attack
// ---------------------------------------------------------------------------------------------

/// A local cluster, the tail started before any attack, what legitimate senders were told, and
/// the status before the attacks.
pub struct Scene {
    /// The cluster.
    pub cluster: Cluster,
    /// Its configuration.
    pub config: ClusterConfig,
    /// What legitimate senders were told.
    pub ledger: Ledger,
    /// The status every attack must leave as it is (epoch and sequencer).
    pub baseline: Status,
    /// The attacker's socket.
    pub attacker: Attacker,
    /// The tail started before the attacks.
    pub early: Tail,
}

impl Scene {
    /// A new cluster on `base_port` (`sam local up ARGS`), its first messages committed.
    pub fn new(base_port: u16, extra: &[&str]) -> Scene {
        let cluster = Cluster::up(base_port, extra);
        let config = cluster.config();
        let early = Tail::start(&cluster.config_path());
        let attacker = Attacker::new(&config);
        let mut scene = Scene { baseline: empty_status(), cluster, config, ledger: Ledger::default(), attacker, early };
        scene.send(10);
        scene.baseline = scene.status();
        scene
    }

    /// Sends `count` generated messages with `sam send` and asserts every one committed.
    pub fn send(&mut self, count: usize) -> Vec<(u64, String)> {
        let printed = run_ok(
            self.cluster.sam(&["send", "--count", &count.to_string(), "--size", &SIZE.to_string()]),
            Duration::from_secs(60),
        );
        let sent = self.ledger.add_sent(&printed);
        assert_eq!(sent.len(), count, "every message committed: {printed}");
        sent
    }

    /// A copy of the configuration whose members send one message at a time (a sender's
    /// window of 1), so that a sender's next message ids are known ahead and its run lasts.
    pub fn slow_config(&self) -> PathBuf {
        let path = self.cluster.path().join("slow.toml");
        if !path.exists() {
            let mut slow = self.config.clone();
            slow.protocol.sender_window = 1;
            std::fs::write(&path, slow.to_toml_string().expect("a configuration")).expect("write slow.toml");
        }
        path
    }

    /// Starts a victim: `sam send` of `count` messages one at a time; returns it once the tail
    /// delivered one of them, with that message's (pid, incarnation, counter).
    pub fn start_victim(&self, count: u64) -> (Running, (u64, u64, u64)) {
        // Senders delivered so far are not the victim (forgeries included).
        let mut known = self.ledger.senders();
        known.extend(self.early.deliveries().iter().map(|d| mid_parts(&d.mid).0));
        let args = ["send", "--count", &count.to_string(), "--size", &SIZE.to_string()];
        let victim = spawn(sam_with(&self.slow_config(), &args));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let deliveries = self.early.deliveries();
            if let Some(m) = deliveries.iter().rev().map(|d| mid_parts(&d.mid)).find(|m| !known.contains(&m.0)) {
                return (victim, m);
            }
            assert!(Instant::now() < deadline, "the victim's messages never showed");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for a checkpoint at or past `seq` and asserts that it is the empty table (what
    /// the legitimate messages, none of which writes to the table, make).
    pub fn assert_checkpoint_is_the_empty_table(&self, seq: u64, after: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let checkpoint = loop {
            let st = self.status();
            if st.checkpoint["seq"].as_u64().is_some_and(|c| c >= seq) {
                break st.checkpoint;
            }
            assert!(Instant::now() < deadline, "after {after}: no checkpoint past {seq} was advertised: {st:?}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let at = Seq(checkpoint["seq"].as_u64().expect("the checkpoint's number"));
        let mut empty = sam_core::KvTable::new();
        sam_core::StateMachine::apply(&mut empty, at, &Bytes::from_static(b"not a table write"));
        let size = sam_core::StateMachine::snapshot(&empty).len() as u64;
        assert_eq!(
            checkpoint["size"].as_u64(),
            Some(size),
            "after {after}: the checkpoint at {at} holds more: {checkpoint}"
        );
    }

    /// `sam status --json`.
    pub fn status(&self) -> Status {
        status_of(&self.cluster.config_path())
    }

    /// Asserts that the group still has its sequencer in the same epoch (no election), that
    /// sends commit and that the committed number advances past them.
    pub fn assert_unharmed(&mut self, after: &str) {
        let before = self.status();
        self.assert_same_office(&before, after);
        assert!(before.committed >= self.ledger.last(), "after {after}: committed went back: {before:?}");
        let sent = self.send(5);
        let now = self.status();
        self.assert_same_office(&now, after);
        let last = sent.iter().map(|(s, _)| *s).max().unwrap_or(0);
        assert!(now.committed >= last && last > before.committed, "after {after}: committed {before:?} -> {now:?}");
    }

    fn assert_same_office(&self, now: &Status, after: &str) {
        assert_eq!(
            (&now.epoch, now.sequencer),
            (&self.baseline.epoch, self.baseline.sequencer),
            "after {after}: the epoch or sequencer changed (was {:?}, now {now:?})",
            self.baseline
        );
    }

    /// Asserts that the tail started before the attacks and one started now delivered exactly
    /// what legitimate senders were told, at the same numbers.
    pub fn assert_tails_deliver_only_legitimate_messages(&self) {
        let n = self.ledger.len();
        let early = self.early.wait_for(n, Duration::from_secs(30));
        self.ledger.check(&early, "the tail started before the attacks");
        let later = Tail::start(&self.cluster.config_path());
        self.ledger.check(&later.wait_for(n, Duration::from_secs(30)), "a tail started after the attacks");
    }
}

fn empty_status() -> Status {
    Status { epoch: None, sequencer: None, committed: 0, checkpoint: serde_json::Value::Null }
}

// ---------------------------------------------------------------------------------------------
// The attacker's tools
// ---------------------------------------------------------------------------------------------

/// Opens a socket with `sam_net::socket` (which needs a runtime to register with) and hands it
/// back as a blocking std socket.
fn std_socket(open: impl FnOnce() -> std::io::Result<tokio::net::UdpSocket>) -> UdpSocket {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_io().build().expect("a runtime to open a socket in");
    let _inside = runtime.enter();
    let socket = open().expect("open a socket").into_std().expect("a std socket");
    socket.set_nonblocking(false).expect("a blocking socket");
    socket
}

/// The groups of a multicast cluster's channels.
pub fn groups(config: &ClusterConfig) -> Vec<(Channel, Group)> {
    let Some(channels) = &config.channels else { return Vec::new() };
    [Channel::Global, Channel::Data, Channel::Commit, Channel::Checkpoint]
        .into_iter()
        .map(|channel| {
            let c = channels.get(channel);
            (channel, Group { addr: SocketAddrV4::new(c.group, c.port), interface: c.interface, ttl: u32::from(c.ttl) })
        })
        .collect()
}

/// Where an attacker sends a forged message.
#[derive(Clone, Copy, Debug)]
pub enum To {
    /// A channel: its multicast group, or with unicast transport every server (where a
    /// cluster without multicast sends what is meant for a channel).
    Channel(Channel),
    /// A server's unicast address.
    Server(Pid),
}

/// An outsider: an ordinary UDP socket on loopback, and where the cluster listens.
pub struct Attacker {
    socket: UdpSocket,
    cluster: u64,
    groups: Vec<(Channel, Group)>,
    servers: Vec<(Pid, SocketAddrV4)>,
    unicast: bool,
}

impl Attacker {
    /// A socket that can reach every channel and server of `config`.
    pub fn new(config: &ClusterConfig) -> Attacker {
        let groups = groups(config);
        let global = groups.first().map(|(_, g)| *g);
        let any = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let socket = std_socket(|| sam_net::socket::unicast(any, global.as_ref()));
        let servers = config.servers.iter().map(|s| (s.id, s.address)).collect();
        let unicast = config.channels.is_none();
        Attacker { socket, cluster: config.cluster_id.0, groups, servers, unicast }
    }

    /// Every destination: each channel, then each server.
    pub fn everywhere(&self) -> Vec<To> {
        let channels = [Channel::Global, Channel::Data, Channel::Commit, Channel::Checkpoint].map(To::Channel);
        channels.into_iter().chain(self.servers.iter().map(|(p, _)| To::Server(*p))).collect()
    }

    /// Every address `to` stands for.
    pub fn addresses(&self, to: To) -> Vec<SocketAddrV4> {
        match to {
            To::Channel(_) if self.unicast => self.servers.iter().map(|(_, a)| *a).collect(),
            to => vec![self.address(to)],
        }
    }

    /// The cluster's servers.
    pub fn servers(&self) -> Vec<Pid> {
        self.servers.iter().map(|(p, _)| *p).collect()
    }

    /// The address of `to` (a channel's only with multicast).
    pub fn address(&self, to: To) -> SocketAddrV4 {
        match to {
            To::Channel(c) => self.groups.iter().find(|(g, _)| *g == c).expect("a multicast channel").1.addr,
            To::Server(pid) => self.servers.iter().find(|(p, _)| *p == pid).expect("a configured server").1,
        }
    }

    /// Its socket (to receive what the cluster answers it).
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Sends one datagram to `to`.
    pub fn send(&self, to: To, datagram: &[u8]) {
        for address in self.addresses(to) {
            send_to(&self.socket, address, datagram);
        }
    }

    /// Sends `msgs` to each of `dests` in every form an outsider can give them: a version 1
    /// frame, and a version 2 frame of this cluster naming `claimed` as its sender (sealed
    /// under the group key or the server key with garbage tags, in modes encrypt and
    /// authenticate, and in mode off with a correct CRC).
    pub fn forge(&self, claimed: Pid, msgs: &[Message], dests: &[To]) {
        let frame = encode_frame(msgs);
        for &to in dests {
            for datagram in outsider_forms(self.cluster, to, claimed, &frame) {
                self.send(to, &datagram);
            }
        }
    }
}

/// Sends, waiting a little when the kernel's buffers are full.
pub fn send_to(socket: &UdpSocket, to: SocketAddrV4, datagram: &[u8]) {
    for _ in 0..200 {
        match socket.send_to(datagram, to) {
            Ok(_) => return,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS) => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("send {} bytes to {to}: {e}", datagram.len()),
        }
    }
    panic!("the kernel kept refusing a datagram to {to}");
}

/// Datagrams received on any of `sockets` during `wait`.
pub fn received(sockets: &[UdpSocket], wait: Duration) -> usize {
    let mut buf = vec![0u8; 70_000];
    let mut count = 0;
    for s in sockets {
        s.set_nonblocking(true).expect("a non-blocking socket");
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        for s in sockets {
            while s.recv_from(&mut buf).is_ok() {
                count += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    count
}

// ---------------------------------------------------------------------------------------------
// Frames by hand
// ---------------------------------------------------------------------------------------------

/// A wire-version-2 header field: the channel's code (`0`: unicast).
pub fn channel_code(channel: Option<Channel>) -> u8 {
    match channel {
        None => 0,
        Some(Channel::Global) => 1,
        Some(Channel::Data) => 2,
        Some(Channel::Commit) => 3,
        Some(Channel::Checkpoint) => 4,
    }
}

/// Pseudo-random garbage (tags, sessions): good enough to be wrong.
pub fn garbage() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    let _ = STATE.compare_exchange(0, seed, Ordering::Relaxed, Ordering::Relaxed);
    let mut z = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// CRC-32C (Castagnoli), as the envelope's mode off and wire version 1 use it.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// The frame codes of a hand-built version 2 frame.
#[derive(Clone, Copy, Debug)]
pub struct V2 {
    /// `0` off, `1` authenticate, `2` encrypt.
    pub mode: u8,
    /// `0` group, `1` server, `2` checkpoint.
    pub tier: u8,
    /// See [`channel_code`].
    pub channel: u8,
    /// The cluster id.
    pub cluster: u64,
    /// The pid the frame names as its sender.
    pub pid: Pid,
    /// The process a frame to one process names (with channel `0`).
    pub to: Option<Pid>,
}

/// A version 2 frame as the envelope's specification lays it out, with a fresh session of
/// this moment: `payload` where the (cipher)text goes and garbage where the tags go; in mode
/// off the CRC-32C of the header, as a sender without keys writes it.
pub fn v2_frame(h: V2, payload: &[u8]) -> Vec<u8> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut out = Vec::with_capacity(54 + payload.len() + 32);
    out.extend_from_slice(b"SM");
    let flags = if h.to.is_some() { 8 } else { 0 };
    out.extend_from_slice(&[2, flags, h.mode, if h.mode == 0 { 0 } else { 1 }, h.tier, h.channel]);
    // Mode off names no key; the others name key 1, which every cluster's keys start from.
    out.extend_from_slice(&u16::from(h.mode != 0).to_le_bytes());
    out.extend_from_slice(&h.cluster.to_le_bytes());
    out.extend_from_slice(&h.pid.0.to_le_bytes());
    out.extend_from_slice(&now.to_le_bytes());
    out.extend_from_slice(&garbage().to_le_bytes());
    out.extend_from_slice(&(garbage() & 0xffff).to_le_bytes());
    out.extend_from_slice(&u32::try_from(payload.len()).expect("a datagram's payload").to_le_bytes());
    if let Some(to) = h.to {
        out.extend_from_slice(&to.0.to_le_bytes());
    }
    let header_crc = crc32c(&out);
    out.extend_from_slice(payload);
    if h.mode == 0 {
        out.extend_from_slice(&header_crc.to_le_bytes());
    } else {
        let tags = if h.tier == 0 { 4 } else { 2 };
        for _ in 0..tags {
            out.extend_from_slice(&garbage().to_le_bytes());
        }
    }
    out
}

/// Every form an outsider can give the version 1 frame `frame` for `to`: itself, and version 2
/// frames of `cluster` naming `claimed` (see [`Attacker::forge`]).
pub fn outsider_forms(cluster: u64, to: To, claimed: Pid, frame: &[u8]) -> Vec<Vec<u8>> {
    let (channel, to) = match to {
        To::Channel(c) => (channel_code(Some(c)), None),
        To::Server(pid) => (channel_code(None), Some(pid)),
    };
    let v2 = |mode, tier| v2_frame(V2 { mode, tier, channel, cluster, pid: claimed, to }, frame);
    vec![frame.to_vec(), v2(2, 0), v2(2, 1), v2(1, 0), v2(0, 0)]
}

/// The pid a forged message claims as its source when it names no one in particular.
pub const FORGER_PID: Pid = Pid(MEMBER_PIDS | 0x0BAD_0000);

/// A message id of nobody in the group.
pub fn forged_mid(tag: u64, counter: u64) -> Mid {
    Mid { source: Source { pid: FORGER_PID, incarnation: Incarnation(0xF0_0000 | tag) }, counter }
}

/// A forged data message.
pub fn forged_data(mid: Mid, ts: Seq, what: &str) -> Message {
    let payload = [FORGED, b" ", what.as_bytes()].concat();
    Message::Data(Data { mid, ts, payload: Bytes::from(payload) })
}

/// The entry that commits a data message, with its payload's true digest (a member checks it).
pub fn entry_of(data: &Message) -> Entry {
    let Message::Data(d) = data else { panic!("not a data message: {data:?}") };
    Entry::Msg { mid: d.mid, digest: Digest::of(&d.payload) }
}

/// A heartbeat nobody signed: of `epoch`, naming `sequencer`, committed through `committed`.
pub fn forged_heartbeat(epoch: Epoch, sequencer: Pid, committed: Seq, checkpoint: Option<CheckpointInfo>) -> Message {
    Message::Heartbeat(Heartbeat { epoch, sequencer, committed, chain: Chain([0xF0; 32]), checkpoint, signature: None })
}

/// A checkpoint nobody made.
pub fn forged_checkpoint(seq: u64) -> CheckpointInfo {
    CheckpointInfo { seq: Seq(seq), size: 1, blocks: 1, digest: Digest([0xF0; 32]), chain: Chain([0xF0; 32]) }
}

// ---------------------------------------------------------------------------------------------
// A member credential of the attacker's own
// ---------------------------------------------------------------------------------------------

fn server_keys(config: &ClusterConfig) -> Vec<(Pid, ServerKeys)> {
    config
        .servers
        .iter()
        .map(|s| match KeyUser::server(s.roles) {
            KeyUser::Server { checkpoint_only: true } => (s.id, ServerKeys::Checkpoint),
            _ => (s.id, ServerKeys::Server),
        })
        .collect()
}

/// A member (an insider): a credential of its own that `sam keygen --member` derived, and the
/// library's sealer.
pub struct Mallory {
    sealer: Sealer,
    opener: Opener,
    /// Its pid: one of its credential's.
    pub pid: Pid,
    /// The attacker's socket, to send from.
    pub attacker: Attacker,
}

impl Mallory {
    /// `sam keygen --dir DIR/keys --member NAME`, and a sealer holding that credential as
    /// process `pid` (its credential's pid with `instance` in the low bits, unless `pid` is
    /// given: then a sealer under its credential that names `pid` as sender).
    pub fn new(cluster: &Cluster, name: &str, claim: Option<Pid>) -> Mallory {
        let keys = cluster.path().join("keys");
        let path = keys.join(format!("member-{name}.key"));
        if !path.exists() {
            let out = Command::new(SAM)
                .args(["keygen", "--dir"])
                .arg(&keys)
                .args(["--member", name])
                .output()
                .expect("run sam keygen");
            assert!(out.status.success(), "sam keygen --member: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut config = cluster.config();
        config.security.member_key = Some(path);
        let ring = config.keyring(KeyUser::Member).expect("the member credential loads").expect("security is on");
        let credential = ring.member.expect("a member credential");
        let pid = claim.unwrap_or(Pid(credential.0 | 0x4D4D));
        // A sealer that claims a server's pid must not know it for one, or it would look for
        // the server key; it seals under the group key and signs with the member's own.
        let servers = server_keys(&config).into_iter().filter(|(p, _)| *p != pid).collect();
        let plan = SecurityPlan {
            mode: Mode::Encrypt,
            keys: Some(Arc::new(ring)),
            ..SecurityPlan::off(config.cluster_id, servers)
        };
        let opener = Opener::new(plan.clone(), pid, None);
        let sealer = Sealer::new(plan, pid).expect("a sealer for the member credential");
        Mallory { sealer, opener, pid, attacker: Attacker::new(&config) }
    }

    /// `frame` (a version 1 frame) sealed for `to`.
    pub fn seal_frame(&mut self, to: To, frame: &[u8]) -> Bytes {
        let dest = match to {
            To::Channel(c) => SealFor::Channel(c),
            To::Server(pid) => SealFor::Pid(pid),
        };
        self.sealer.seal(dest, frame)
    }

    /// Takes a cookie challenge as the library's reader does (`note_challenge`): the datagram
    /// must open with the member's keys and be a challenge (flag bits 0 and 1, the cookie after
    /// the 54-byte header, no payload); the cookie goes to the sealer (`Sealer::set_cookie`), so
    /// that frames to that server carry it from now on. The server, and the last frame sealed
    /// for it without a cookie (a request it challenged, not served), sealed again with the
    /// cookie, to send again; `None` for anything but a challenge that opens.
    pub fn take_challenge(&mut self, datagram: &[u8]) -> Option<(Pid, Option<Bytes>)> {
        let opened = self.opener.open(sam_net::security::now_ms(), &Bytes::copy_from_slice(datagram)).ok()?;
        let (true, Some(cookie)) = (opened.header.challenge, opened.header.cookie) else { return None };
        let server = opened.header.pid;
        Some((server, self.sealer.set_cookie(server, cookie)))
    }

    /// The messages of a sealed frame that opens with the member's keys and is no challenge.
    pub fn open(&mut self, datagram: &[u8]) -> Option<Vec<Message>> {
        let opened = self.opener.open(sam_net::security::now_ms(), &Bytes::copy_from_slice(datagram)).ok()?;
        if opened.header.challenge {
            return None;
        }
        // A frame to one process without a cookie for it is padded with zeros after its
        // payload frame (see `security::envelope`): the payload frame's own length says where.
        let payload = opened.payload;
        let declared = payload.get(4..8).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)?;
        let end = (sam_core::wire::HEADER_LEN + declared).min(payload.len());
        match sam_core::wire::decode_datagram(&payload.slice(..end)).ok()?.body {
            sam_core::wire::Body::Messages(msgs) => Some(msgs),
            _ => None,
        }
    }

    /// Seals `msgs` for each of `dests` and sends them there.
    pub fn send(&mut self, msgs: &[Message], dests: &[To]) {
        let frame = encode_frame(msgs);
        for &to in dests {
            let sealed = self.seal_frame(to, &frame);
            self.attacker.send(to, &sealed);
        }
    }

    /// Seals `msgs`, packed into frames of at most `max` bytes, for `to` and sends them there,
    /// pausing `pause` after every `burst` datagrams: the bytes sent.
    pub fn flood(&mut self, msgs: &[Message], to: To, max: usize, burst: usize, pause: Duration) -> usize {
        let mut packer = FramePacker::new(max);
        let mut frames = Vec::new();
        for msg in msgs {
            if let Some(frame) = packer.push(msg).expect("a message that fits a datagram") {
                frames.push(frame);
            }
        }
        frames.extend(packer.finish());
        let mut bytes = 0;
        for (i, frame) in frames.iter().enumerate() {
            let sealed = self.seal_frame(to, frame);
            bytes += sealed.len();
            self.attacker.send(to, &sealed);
            if (i + 1) % burst == 0 {
                std::thread::sleep(pause);
            }
        }
        bytes
    }
}

/// What a server of `config` opens frames with (its keys, from the cluster's key files): to
/// check outside the cluster that a frame does not open.
pub fn server_opener(config: &ClusterConfig) -> Opener {
    let ring = config.keyring(KeyUser::Server { checkpoint_only: false }).expect("the server key loads");
    let plan = SecurityPlan {
        mode: Mode::Encrypt,
        keys: Some(Arc::new(ring.expect("security is on"))),
        ..SecurityPlan::off(config.cluster_id, server_keys(config))
    };
    Opener::new(plan, config.servers[0].id, None)
}

// ---------------------------------------------------------------------------------------------
// Sniffing
// ---------------------------------------------------------------------------------------------

/// A datagram heard on a channel.
#[derive(Clone, Debug)]
pub struct Sniffed {
    /// The channel.
    pub channel: Channel,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl Sniffed {
    /// The sender's pid its version 2 header names.
    pub fn pid(&self) -> Option<u64> {
        self.bytes.get(18..26).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

/// Sockets that joined every channel's multicast group on loopback and keep what they hear.
pub struct Sniffer {
    heard: Arc<Mutex<Vec<Sniffed>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Sniffer {
    /// Starts listening to every channel of `config`.
    pub fn start(config: &ClusterConfig) -> Sniffer {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = groups(config)
            .into_iter()
            .map(|(channel, group)| {
                let socket = std_socket(|| sam_net::socket::listener(&group));
                socket.set_read_timeout(Some(Duration::from_millis(50))).expect("a read timeout");
                let (heard, stop) = (heard.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 70_000];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((len, _)) = socket.recv_from(&mut buf) {
                            let sniffed = Sniffed { channel, bytes: buf[..len].to_vec() };
                            heard.lock().unwrap_or_else(|e| e.into_inner()).push(sniffed);
                        }
                    }
                })
            })
            .collect();
        Sniffer { heard, stop, threads }
    }

    /// What it heard since the last call.
    pub fn take(&self) -> Vec<Sniffed> {
        std::mem::take(&mut *self.heard.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Spoofed sources
// ---------------------------------------------------------------------------------------------

/// The flags byte of a sealed frame that is a cookie challenge (bits 0 and 1; see
/// `sam_net::security::envelope`).
pub fn is_challenge(datagram: &[u8]) -> bool {
    datagram.len() >= 54 + 16 && datagram.get(..3) == Some(&b"SM\x02"[..]) && datagram[3] & 3 == 3
}

/// A raw IPv4 socket (it needs root, or `CAP_NET_RAW`) that sends UDP datagrams from any
/// source address: the IPv4 and UDP headers are built by hand, the UDP checksum left 0 (none,
/// which IPv4 allows).
pub struct Spoofer {
    socket: socket2::Socket,
    id: u16,
}

impl Spoofer {
    /// Opens the raw socket.
    pub fn new() -> Spoofer {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))
            .expect("a raw IPv4 socket (the spoofing tests run as root)");
        Spoofer { socket, id: 1 }
    }

    /// Sends `payload` to `to` as a UDP datagram whose source is `from`.
    pub fn send(&mut self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
        let udp_len = u16::try_from(8 + payload.len()).expect("a payload that fits a UDP datagram");
        let total = u16::try_from(20 + usize::from(udp_len)).expect("a payload that fits an IPv4 packet");
        let mut packet = Vec::with_capacity(usize::from(total));
        packet.extend_from_slice(&[0x45, 0]);
        packet.extend_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&self.id.to_be_bytes());
        self.id = self.id.wrapping_add(1).max(1);
        packet.extend_from_slice(&[0, 0, 64, 17, 0, 0]);
        packet.extend_from_slice(&from.ip().octets());
        packet.extend_from_slice(&to.ip().octets());
        let sum = packet.chunks(2).fold(0u32, |sum, w| sum + u32::from(u16::from_be_bytes([w[0], w[1]])));
        let sum = (sum & 0xffff) + (sum >> 16);
        let checksum = !((sum & 0xffff) + (sum >> 16)) as u16;
        packet[10..12].copy_from_slice(&checksum.to_be_bytes());
        packet.extend_from_slice(&from.port().to_be_bytes());
        packet.extend_from_slice(&to.port().to_be_bytes());
        packet.extend_from_slice(&udp_len.to_be_bytes());
        packet.extend_from_slice(&[0, 0]);
        packet.extend_from_slice(payload);
        let dest = socket2::SockAddr::from(SocketAddrV4::new(*to.ip(), 0));
        for _ in 0..200 {
            match self.socket.send_to(&packet, &dest) {
                Ok(n) if n == packet.len() => return,
                Ok(n) => panic!("the raw socket sent {n} of {} bytes", packet.len()),
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS) => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("send a spoofed datagram from {from} to {to}: {e}"),
            }
        }
        panic!("the kernel kept refusing a spoofed datagram to {to}");
    }
}

/// A UDP socket whose datagrams a thread of its own keeps as they arrive, so that a burst does
/// not overflow the socket's buffer while the test is busy sending.
pub struct Inbox {
    addr: SocketAddrV4,
    heard: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Inbox {
    /// A new socket bound to `addr` (with the large buffers `sam_net::socket` asks for).
    pub fn bind(addr: SocketAddrV4) -> Inbox {
        Inbox::on(std_socket(|| sam_net::socket::unicast(addr, None)))
    }

    /// Keeps what arrives on `socket` (or another handle on it).
    pub fn on(socket: UdpSocket) -> Inbox {
        let addr = match socket.local_addr().expect("a bound socket") {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("not an IPv4 socket: {other}"),
        };
        socket.set_read_timeout(Some(Duration::from_millis(20))).expect("a read timeout");
        let heard = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (heard, stop) = (heard.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 70_000];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((len, _)) = socket.recv_from(&mut buf) {
                        heard.lock().unwrap_or_else(|e| e.into_inner()).push(buf[..len].to_vec());
                    }
                }
            })
        };
        Inbox { addr, heard, stop, thread: Some(thread) }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// What arrived since the last call.
    pub fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.heard.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// What arrived since the last call, once nothing more arrived for `quiet` (at most
    /// `limit` from now).
    pub fn settle(&self, quiet: Duration, limit: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + limit;
        let mut seen = usize::MAX;
        let mut since = Instant::now();
        while Instant::now() < deadline {
            let now = self.heard.lock().unwrap_or_else(|e| e.into_inner()).len();
            if now != seen {
                (seen, since) = (now, Instant::now());
            } else if since.elapsed() >= quiet {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.take()
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
