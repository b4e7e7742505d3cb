//! `sam local`: a whole cluster on this host's loopback, as separate server processes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use sam_node::config::{ClusterConfig, Role, Transport, LOCAL_BASE_PORT, LOCAL_CHECKPOINT_SERVERS, LOCAL_SERVERS};

/// Start or stop a local cluster.
#[derive(Subcommand, Debug)]
pub enum LocalCommand {
    /// Start a cluster on loopback: N processes each holding a commit and a data server, and
    /// checkpoint servers; write DIR/sam.toml for clients; run until Ctrl-C.
    Up(UpArgs),
    /// Stop a cluster started with --detach.
    Down(DownArgs),
}

/// Where and how big.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  sam local up                                            # 3+2 servers in ./sam-local, until Ctrl-C\n  sam local up --dir /tmp/c --base-port 17500 --detach    # another one, in the background\n  sam local up --transport unicast --members 2            # no multicast; two tail processes"
)]
pub struct UpArgs {
    /// The cluster's directory: its sam.toml, its servers' storage and logs.
    #[arg(long, default_value = "sam-local")]
    dir: PathBuf,
    /// Processes holding a commit and a data server (the sequencer is elected among them); a
    /// new cluster only [default: 3].
    #[arg(long)]
    servers: Option<usize>,
    /// Checkpoint servers; a new cluster only [default: 2].
    #[arg(long)]
    checkpoint_servers: Option<usize>,
    /// The first of the ports the cluster uses (channels, then one per server); a new cluster
    /// only [default: 17400].
    #[arg(long)]
    base_port: Option<u16>,
    /// Checkpoints fall at the multiples of this number (a new cluster only); members more
    /// than two intervals behind catch up from a checkpoint.
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// How datagrams travel: IP multicast groups, or unicast fan-out with members relayed by
    /// the data servers (for networks without multicast). A new cluster only.
    #[arg(long, value_enum)]
    transport: Option<TransportArg>,
    /// Sign frames (a new cluster only): members deliver only what the sequencer's signed
    /// heartbeats vouch for, so that no member can make another deliver a forgery.
    #[arg(long)]
    sign_server_frames: bool,
    /// Member processes to start besides the servers: each keeps the replicated table and
    /// writes every delivery to DIR/logs/member-I.jsonl.
    #[arg(long, default_value_t = 0)]
    members: usize,
    /// Start the servers and return; stop them with `sam local down --dir DIR`.
    #[arg(long)]
    detach: bool,
}

/// How a new local cluster's datagrams travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// Every channel is a multicast group on loopback.
    Multicast,
    /// Unicast fan-out; members register with a data server that relays to them.
    Unicast,
}

/// Which cluster.
#[derive(Args, Debug)]
pub struct DownArgs {
    /// The cluster's directory.
    #[arg(long, default_value = "sam-local")]
    dir: PathBuf,
}

/// Runs `sam local up` or `sam local down`.
pub fn execute(command: LocalCommand) -> Result<std::process::ExitCode> {
    match command {
        LocalCommand::Up(args) => up(&args),
        LocalCommand::Down(args) => down(&args.dir),
    }
    .map(|()| std::process::ExitCode::SUCCESS)
}

fn up(args: &UpArgs) -> Result<()> {
    if pids_file(&args.dir).exists() {
        bail!("a cluster seems to run in {} already (stop it with `sam local down --dir {0}`)", args.dir.display());
    }
    fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    let config_path = dir.join("sam.toml");
    let new = !config_path.exists();
    if !new {
        refuse_new_cluster_options(args, &config_path)?;
    }
    if new {
        let servers = args.servers.unwrap_or(LOCAL_SERVERS);
        let checkpoint_servers = args.checkpoint_servers.unwrap_or(LOCAL_CHECKPOINT_SERVERS);
        let mut cluster =
            ClusterConfig::local(servers, checkpoint_servers, args.base_port.unwrap_or(LOCAL_BASE_PORT), &dir);
        cluster.with_local_keys(&dir).context("writing the cluster's keys")?;
        if args.transport == Some(TransportArg::Unicast) {
            cluster.transport = Transport::Unicast;
            cluster.channels = None;
        }
        cluster.security.sign_server_frames = args.sign_server_frames;
        if let Some(every) = args.checkpoint_every {
            cluster.protocol.checkpoint_every = every;
            cluster.protocol.catch_up_after = every.saturating_mul(2);
        }
        cluster.validate()?;
        fs::write(&config_path, cluster.to_toml_string()?)
            .with_context(|| format!("writing {}", config_path.display()))?;
    }
    let cluster = ClusterConfig::load(&config_path)?;
    let mut servers = Servers::start(&config_path, &cluster, new, &dir)?;
    servers.start_members(&config_path, args.members)?;
    print_help(&dir, &cluster, args);
    // One server that cannot start (say, a log it refuses to read) does not take the healthy
    // ones down: the group runs as it would with that server crashed.
    for exited in &servers.exited {
        eprintln!("warning: {exited}; the other servers keep running");
        eprintln!(
            "  once it is fixed, start it again with: sam server --config {} --id {}",
            config_path.display(),
            exited.id
        );
    }
    if args.detach {
        // The servers outlive this command: `sam local down` stops them by their pids.
        servers.detach();
        return Ok(());
    }
    servers.supervise(&config_path)?;
    servers.stop();
    eprintln!("stopped {} servers", cluster.servers.len());
    Ok(())
}

/// An existing cluster keeps its shape and ports: the options that make a new one are refused
/// rather than silently ignored.
fn refuse_new_cluster_options(args: &UpArgs, config: &Path) -> Result<()> {
    let given = [
        ("--servers", args.servers.is_some()),
        ("--checkpoint-servers", args.checkpoint_servers.is_some()),
        ("--base-port", args.base_port.is_some()),
        ("--checkpoint-every", args.checkpoint_every.is_some()),
        ("--transport", args.transport.is_some()),
        ("--sign-server-frames", args.sign_server_frames),
    ];
    if let Some((flag, _)) = given.iter().find(|(_, given)| *given) {
        bail!(
            "{} describes a cluster already, and {flag} makes a new one: edit that file, or give another --dir",
            config.display()
        );
    }
    Ok(())
}

/// How many times `local up` starts again a server that died before it gives up on it.
const RESTARTS_MAX: u32 = 3;
/// How often `local up` looks for servers that died.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);

/// The server processes of a local cluster, with their pids in `DIR/pids`, and its member
/// processes, with theirs in `DIR/member-pids`.
pub struct Servers {
    /// Each running server's id and process.
    children: Vec<(u64, Child)>,
    members: Vec<Child>,
    dir: PathBuf,
    /// The servers that exited at start.
    pub exited: Vec<Exited>,
}

/// A server that exited as it started.
#[derive(Debug)]
pub struct Exited {
    /// Its id.
    pub id: u64,
    /// How it ended.
    pub status: std::process::ExitStatus,
    /// Its log.
    pub log: PathBuf,
}

/// The last line a server's log holds.
fn last_line(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(its log is empty)").to_string()
}

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let last = last_line(&self.log);
        write!(f, "server {} exited at start ({}): {last} (log: {})", self.id, self.status, self.log.display())?;
        if last.contains("in use") {
            write!(
                f,
                "; another program holds its port: stop it, or make a new cluster on other ports with --base-port"
            )?;
        }
        Ok(())
    }
}

impl Servers {
    /// Starts every server of `cluster` as a `sam server` process (`init`: new storage) and
    /// notes those that exited at once in [`Servers::exited`]; fails, stopping the rest, if
    /// too few are left to commit (fewer than `k_commit` commit or `k_data` data servers: a
    /// port in use, a key file refused), or one could not be spawned.
    pub fn start(config: &Path, cluster: &ClusterConfig, init: bool, dir: &Path) -> Result<Servers> {
        let mut servers =
            Servers { children: Vec::new(), members: Vec::new(), dir: dir.to_path_buf(), exited: Vec::new() };
        for server in &cluster.servers {
            // An error here drops `servers`, which stops those already started.
            let id = server.id.0;
            servers.children.push((id, spawn_server(config, id, init, dir, Log::Truncate)?));
        }
        std::thread::sleep(Duration::from_millis(300));
        let mut running = Vec::new();
        for (id, mut child) in std::mem::take(&mut servers.children) {
            match child.try_wait()? {
                Some(status) => servers.exited.push(Exited { id, status, log: server_log(dir, id) }),
                None => running.push((id, child)),
            }
        }
        servers.children = running;
        let left = |role| {
            let gone = |id| servers.exited.iter().any(|e| e.id == id);
            cluster.servers.iter().filter(|s| s.roles.contains(role) && !gone(s.id.0)).count()
        };
        let (k_commit, k_data) = (cluster.protocol.k_commit, cluster.protocol.k_data);
        if let Some(first) = servers.exited.first() {
            if left(Role::Commit) < k_commit || left(Role::Data) < k_data {
                let first = first.to_string();
                servers.stop();
                bail!("too few servers are left to commit, so none is left running; {first}");
            }
        }
        servers.write_pids()?;
        Ok(servers)
    }

    fn write_pids(&self) -> Result<()> {
        fs::write(pids_file(&self.dir), self.pids().iter().map(|p| format!("{p}\n")).collect::<String>())?;
        Ok(())
    }

    /// Watches the servers until a stop signal: one that dies is reported and started again
    /// (on the storage it left), at most [`RESTARTS_MAX`] times each.
    fn supervise(&mut self, config: &Path) -> Result<()> {
        let mut restarts = std::collections::HashMap::new();
        crate::runtime()?.block_on(async {
            let mut stop = std::pin::pin!(crate::stop_signal());
            loop {
                tokio::select! {
                    () = &mut stop => return Ok(()),
                    () = tokio::time::sleep(SUPERVISE_EVERY) => self.restart_the_dead(config, &mut restarts)?,
                }
            }
        })
    }

    /// Starts again each server that died, unless it was restarted [`RESTARTS_MAX`] times.
    fn restart_the_dead(&mut self, config: &Path, restarts: &mut std::collections::HashMap<u64, u32>) -> Result<()> {
        let mut died = Vec::new();
        for (i, (id, child)) in self.children.iter_mut().enumerate() {
            if let Some(status) = child.try_wait()? {
                died.push((i, *id, status));
            }
        }
        for (i, id, status) in died.iter().rev().copied() {
            let count = restarts.entry(id).or_insert(0u32);
            let last = last_line(&server_log(&self.dir, id));
            if *count == RESTARTS_MAX {
                eprintln!("server {id} died ({status}): {last}; restarted {RESTARTS_MAX} times already, so not again");
                eprintln!("  once it is fixed, start it with: sam server --config {} --id {id}", config.display());
                self.children.remove(i);
                continue;
            }
            *count += 1;
            eprintln!("server {id} died ({status}): {last}; restarting it ({count} of {RESTARTS_MAX})");
            self.children[i].1 = spawn_server(config, id, false, &self.dir, Log::Append)?;
        }
        if !died.is_empty() {
            self.write_pids()?;
        }
        Ok(())
    }

    /// Starts `count` members (`sam tail --format jsonl`, each into DIR/logs/member-I.jsonl).
    pub fn start_members(&mut self, config: &Path, count: usize) -> Result<()> {
        for i in 1..=count {
            let out = fs::File::create(self.dir.join("logs").join(format!("member-{i}.jsonl")))?;
            let log = fs::File::create(self.dir.join("logs").join(format!("member-{i}.log")))?;
            let mut command = Command::new(std::env::current_exe()?);
            command.arg("tail").arg("--config").arg(config).args(["--format", "jsonl"]);
            command.stdin(Stdio::null()).stdout(out).stderr(log);
            self.members.push(command.spawn().with_context(|| format!("starting member {i}"))?);
        }
        let pids: String = self.members.iter().map(|c| format!("{}\n", c.id())).collect();
        fs::write(member_pids_file(&self.dir), pids)?;
        Ok(())
    }

    /// The servers' process ids, in the order of the configuration.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, child)| child.id()).collect()
    }

    /// Stops every member and server and forgets the pids files.
    pub fn stop(&mut self) {
        stop_all(self.members.iter_mut());
        stop_all(self.children.iter_mut().map(|(_, child)| child));
        self.members.clear();
        self.children.clear();
        let _ = fs::remove_file(pids_file(&self.dir));
        let _ = fs::remove_file(member_pids_file(&self.dir));
    }

    /// Leaves every process running (they outlive this command; `sam local down` stops them).
    fn detach(&mut self) {
        self.children.clear();
        self.members.clear();
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if !self.children.is_empty() || !self.members.is_empty() {
            self.stop();
        }
    }
}

fn server_log(dir: &Path, id: u64) -> PathBuf {
    dir.join("logs").join(format!("server-{id}.log"))
}

/// Whether a server's log starts afresh or goes on after what a previous run wrote.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Log {
    Truncate,
    Append,
}

fn spawn_server(config: &Path, id: u64, init: bool, dir: &Path, log: Log) -> Result<Child> {
    fs::create_dir_all(dir.join("logs"))?;
    let log = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(log == Log::Append)
        .truncate(log == Log::Truncate)
        .open(server_log(dir, id))?;
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("server").arg("--config").arg(config).arg("--id").arg(id.to_string());
    if init {
        command.arg("--init");
    }
    command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    command.spawn().with_context(|| format!("starting server {id}"))
}

fn print_help(dir: &Path, cluster: &ClusterConfig, args: &UpArgs) {
    let config = dir.join("sam.toml");
    let c = config.display();
    let transport = match cluster.transport {
        Transport::Multicast => "multicast",
        Transport::Unicast => "unicast",
    };
    eprintln!("local cluster of {} servers running over {transport}; configuration in {c}", cluster.servers.len());
    let signed = if cluster.security.sign_server_frames { ", signed frames" } else { "" };
    eprintln!("  security: {}{signed}, cluster id {}", cluster.security.mode, cluster.cluster_id);
    for server in &cluster.servers {
        let roles: Vec<&str> = server.roles.iter().map(|r| r.name()).collect();
        let metrics = server.metrics.map_or_else(String::new, |m| format!(", metrics http://{m}/metrics"));
        eprintln!("  server {} ({}) on {}{metrics}", server.id.0, roles.join(", "), server.address);
    }
    if args.members > 0 {
        eprintln!("  {} members write their deliveries to {}", args.members, dir.join("logs/member-I.jsonl").display());
    }
    eprintln!("try:");
    eprintln!("  sam send --config {c} hello world");
    eprintln!("  sam tail --config {c} --count 2");
    if args.detach {
        eprintln!("stop it with: sam local down --dir {}", dir.display());
    } else {
        eprintln!("Ctrl-C stops it");
    }
}

fn pids_file(dir: &Path) -> PathBuf {
    dir.join("pids")
}

fn member_pids_file(dir: &Path) -> PathBuf {
    dir.join("member-pids")
}

/// Stops every process with SIGTERM (a server syncs its log and exits), then waits for them.
fn stop_all<'a>(children: impl Iterator<Item = &'a mut Child>) {
    let children: Vec<&mut Child> = children.collect();
    for child in &children {
        terminate(child.id());
    }
    for child in children {
        let _ = child.wait();
    }
}

fn terminate(pid: u32) {
    // SAFETY: kill(2) with a pid this command started (or read from its own pids file).
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

fn down(dir: &Path) -> Result<()> {
    let file = pids_file(dir);
    let text = fs::read_to_string(&file)
        .with_context(|| format!("no cluster runs in {} ({})", dir.display(), file.display()))?;
    let members = fs::read_to_string(member_pids_file(dir)).unwrap_or_default();
    let _ = fs::remove_file(member_pids_file(dir));
    let parse = |text: &str| -> Vec<u32> { text.lines().filter_map(|l| l.trim().parse().ok()).collect() };
    let (members, pids) = (parse(&members), parse(&text));
    for pid in members.iter().chain(&pids) {
        terminate(*pid);
    }
    for pid in members.iter().chain(&pids) {
        // Wait (bounded) until the process is gone.
        for _ in 0..100 {
            // SAFETY: signal 0 only checks that the process exists.
            if unsafe { libc::kill(*pid as libc::pid_t, 0) } != 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fs::remove_file(&file)?;
    eprintln!("stopped {} servers and {} members", pids.len(), members.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options of a new cluster are `Option`s (so that an existing cluster can refuse them),
    /// and their help states the defaults by hand: it must state the real ones.
    #[test]
    fn the_help_states_the_defaults_a_new_cluster_gets() {
        let help = UpArgs::augment_args(clap::Command::new("up")).render_long_help().to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for default in [LOCAL_SERVERS as u64, LOCAL_CHECKPOINT_SERVERS as u64, u64::from(LOCAL_BASE_PORT)] {
            assert!(help.contains(&format!("[default: {default}]")), "{default} in {help}");
        }
    }
}
