//! Real processes on loopback (DESIGN sections 1 and 4): `sam local up` starts a cluster,
//! senders and tails are separate `sam` processes. Every process a test starts is stopped by
//! its pid when the test ends, also when it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const SAM: &str = env!("CARGO_BIN_EXE_sam");

/// A local cluster in a temporary directory; stopped (and every extra server killed) on drop.
struct Cluster {
    dir: tempfile::TempDir,
    extra: Vec<Child>,
}

impl Cluster {
    fn up(base_port: u16, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new(SAM)
            .args(["local", "up", "--detach", "--base-port", &base_port.to_string()])
            .args(extra)
            .arg("--dir")
            .arg(dir.path())
            .status()
            .expect("run sam local up");
        assert!(status.success(), "sam local up failed");
        Cluster { dir, extra: Vec::new() }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("sam.toml")
    }

    fn pids(&self) -> Vec<u32> {
        let text = std::fs::read_to_string(self.dir.path().join("pids")).expect("pids file");
        text.lines().map(|l| l.parse().expect("pid")).collect()
    }

    fn sam(&self, args: &[&str]) -> Command {
        let mut command = Command::new(SAM);
        command.args(&args[..1]).arg("--config").arg(self.config()).args(&args[1..]);
        command
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.extra {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(SAM).args(["local", "down", "--dir"]).arg(self.dir.path()).status();
    }
}

/// A `sam` process whose output goes to files (a pipe nobody reads would block it).
struct Running {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

fn spawn(mut command: Command) -> Running {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sam-test-{}-{n}", std::process::id()));
    let (out, err) = (dir.with_extension("out"), dir.with_extension("err"));
    let file = |p: &Path| std::fs::File::create(p).expect("output file");
    let child = command.stdout(file(&out)).stderr(file(&err)).spawn().expect("spawn sam");
    Running { child, out, err }
}

/// Waits for the process at most `limit`, killing it if it takes longer; returns its output.
fn finish(mut running: Running, limit: Duration) -> (ExitStatus, String, String) {
    let start = Instant::now();
    while running.child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = running.child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = running.child.wait().expect("wait");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let output = (status, read(&running.out), read(&running.err));
    let _ = (std::fs::remove_file(&running.out), std::fs::remove_file(&running.err));
    output
}

fn stdout((status, out, err): (ExitStatus, String, String)) -> String {
    assert!(status.success(), "failed ({status}): {err}");
    out
}

/// Total order and integrity across processes: two senders, three tails, one sequence.
#[test]
fn two_senders_and_three_tails_print_one_identical_sequence() {
    two_senders_and_three_tails(&Cluster::up(21_400, &[]));
}

/// The same in unicast mode (DESIGN section 7): the tails register with the data servers,
/// which relay the global channel to them; so do the two members `local up` started, whose
/// delivery logs end up identical to the tails'.
#[test]
fn two_senders_and_three_tails_print_one_identical_sequence_over_unicast() {
    let cluster = Cluster::up(22_400, &["--transport", "unicast", "--members", "2"]);
    let config = std::fs::read_to_string(cluster.config()).expect("config");
    assert!(config.contains("transport = \"unicast\"") && !config.contains("[channels"), "{config}");
    let printed = two_senders_and_three_tails(&cluster);
    let logs = cluster.dir.path().join("logs");
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 1..=2 {
        let log = logs.join(format!("member-{i}.jsonl"));
        let mut delivered = String::new();
        while delivered.lines().count() < printed.lines().count() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            delivered = std::fs::read_to_string(&log).unwrap_or_default();
        }
        assert!(
            delivered == printed,
            "member {i} delivered {} lines, not the tails' sequence",
            delivered.lines().count()
        );
    }
}

/// Two senders of 5,000 messages each and three tails; returns what every tail printed.
fn two_senders_and_three_tails(cluster: &Cluster) -> String {
    const EACH: usize = 5_000;
    let tails: Vec<Running> = (0..3)
        .map(|_| spawn(cluster.sam(&["tail", "--count", &(2 * EACH).to_string(), "--format", "jsonl"])))
        .collect();
    let senders: Vec<Running> =
        (0..2).map(|_| spawn(cluster.sam(&["send", "--count", &EACH.to_string(), "--size", "32"]))).collect();
    for sender in senders {
        let printed = stdout(finish(sender, Duration::from_secs(120)));
        assert_eq!(printed.lines().count(), EACH, "every message committed");
    }
    let outputs: Vec<String> = tails.into_iter().map(|t| stdout(finish(t, Duration::from_secs(120)))).collect();
    assert_eq!(outputs[0].lines().count(), 2 * EACH);
    assert!(outputs.iter().all(|o| *o == outputs[0]), "the tails printed different sequences");
    outputs.into_iter().next().expect("three tails")
}

/// Durability on a real disk: a data server killed with SIGKILL restarts from its directory
/// with what it stored, and the group goes on.
#[test]
fn a_data_server_killed_and_restarted_recovers_what_it_stored() {
    let mut cluster = Cluster::up(21_500, &[]);
    let sent = stdout(finish(spawn(cluster.sam(&["send", "--count", "300"])), Duration::from_secs(60)));
    assert_eq!(sent.lines().count(), 300);
    let server_1 = cluster.pids()[0];
    kill_9(server_1);
    let restarted = cluster.sam(&["server", "--id", "1"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn();
    cluster.extra.push(restarted.expect("restart server 1"));
    let log = cluster.dir.path().join("restart.log");
    wait_for_line(&mut cluster.extra[0], &log, "records recovered");
    let recovered = std::fs::read_to_string(&log).expect("log");
    let count: usize = recovered
        .split(" records recovered")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {recovered:?}"));
    assert!(count >= 300, "server 1 recovered {count} records: {recovered}");
    let more = stdout(finish(spawn(cluster.sam(&["send", "--count", "100"])), Duration::from_secs(60)));
    assert_eq!(more.lines().count(), 100);
    let tail = stdout(finish(spawn(cluster.sam(&["tail", "--count", "400"])), Duration::from_secs(60)));
    assert_eq!(tail.lines().count(), 400);
}

/// DESIGN section 12, "Storage": a server whose log fails its checksum in the middle stops,
/// naming the file; `sam local up` keeps the healthy servers running, says which one exited
/// and how to start it again, and the group commits without it.
#[test]
fn a_server_that_cannot_start_leaves_the_healthy_ones_running() {
    let cluster = Cluster::up(22_600, &[]);
    let sent =
        stdout(finish(spawn(cluster.sam(&["send", "--count", "300", "--size", "200"])), Duration::from_secs(60)));
    assert_eq!(sent.lines().count(), 300);
    let down = Command::new(SAM).args(["local", "down", "--dir"]).arg(cluster.dir.path()).status().expect("down");
    assert!(down.success());
    // Flip a byte in the middle of server 2's longest segment: records follow it, so it is no
    // torn tail but a log the server must refuse.
    let storage = cluster.dir.path().join("data/server-2");
    let segments = std::fs::read_dir(&storage).expect("server 2's storage").map(|e| e.expect("entry").path());
    let segment = segments
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max_by_key(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("read the segment");
    assert!(bytes.len() > 10_000, "server 2 logged the messages: {} bytes", bytes.len());
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5A;
    std::fs::write(&segment, bytes).expect("write the segment");

    // The cluster exists: an option that makes a new one is refused, not ignored.
    let mut again = Command::new(SAM);
    again.args(["local", "up", "--detach", "--base-port", "30000", "--dir"]).arg(cluster.dir.path());
    let refused = again.output().expect("run sam local up");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(err.contains("--base-port") && err.contains("sam.toml"), "{err}");
    assert!(!cluster.dir.path().join("pids").exists(), "nothing started");

    let up = Command::new(SAM).args(["local", "up", "--detach", "--dir"]).arg(cluster.dir.path()).output();
    let up = up.expect("run sam local up");
    let err = String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success(), "sam local up failed: {err}");
    assert!(err.contains("server 2 exited at start") && err.contains("--id 2"), "{err}");
    assert!(err.contains(&segment.file_name().unwrap().to_string_lossy().to_string()), "names the file: {err}");
    assert_eq!(cluster.pids().len(), 4, "the four healthy servers run");
    let more = stdout(finish(spawn(cluster.sam(&["send", "--count", "100"])), Duration::from_secs(60)));
    assert_eq!(more.lines().count(), 100, "the group commits without server 2");
}

/// Issue 15's CLI habits: `--config` anywhere on the command line (after a nested subcommand
/// too), `SAM_CONFIG`, and `sam-local/sam.toml` when nothing names a file, else an error that
/// says all three; a reader that stops reading ends a command quietly, without a panic.
#[test]
fn the_configuration_is_found_where_users_look_and_a_closed_pipe_is_quiet() {
    let cluster = Cluster::up(22_700, &[]);
    let config = cluster.config();
    let run = |command: &mut Command| command.output().expect("run sam");
    let sam = || {
        let mut command = Command::new(SAM);
        command.env_remove("SAM_CONFIG");
        command
    };
    let put = run(sam().args(["table", "put", "--config"]).arg(&config).args(["color", "blue"]));
    assert!(put.status.success(), "--config after `table put`: {}", String::from_utf8_lossy(&put.stderr));
    let get = run(sam().args(["table", "get", "color"]).env("SAM_CONFIG", &config));
    assert!(String::from_utf8_lossy(&get.stdout).starts_with("blue"), "SAM_CONFIG: {get:?}");

    let elsewhere = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(elsewhere.path().join("sam-local")).expect("mkdir");
    std::fs::copy(&config, elsewhere.path().join("sam-local/sam.toml")).expect("copy the configuration");
    let status = run(sam().args(["status", "--json"]).current_dir(elsewhere.path()));
    assert!(status.status.success(), "sam-local/sam.toml: {}", String::from_utf8_lossy(&status.stderr));
    let nowhere = tempfile::tempdir().expect("tempdir");
    let none = run(sam().args(["status"]).current_dir(nowhere.path()));
    let err = String::from_utf8_lossy(&none.stderr);
    assert_eq!(none.status.code(), Some(2), "{err}");
    assert!(err.contains("--config") && err.contains("SAM_CONFIG") && err.contains("sam-local/sam.toml"), "{err}");

    // One message is committed: a tail asked for five gives up after a quiet second, says so,
    // and exits 1.
    let tail = run(sam().args(["tail", "--count", "5", "--timeout", "1"]).env("SAM_CONFIG", &config));
    let err = String::from_utf8_lossy(&tail.stderr);
    assert_eq!(tail.status.code(), Some(1), "{err}");
    assert_eq!(String::from_utf8_lossy(&tail.stdout).lines().count(), 1, "the one committed message");
    assert!(err.contains("1 of 5") && err.contains("--timeout"), "{err}");

    // A benchmark of a running cluster measures no servers of its own: it says so.
    let bench = run(sam().args(["bench", "--members", "1", "--messages", "50", "--json", "--config"]).arg(&config));
    assert!(bench.status.success(), "{}", String::from_utf8_lossy(&bench.stderr));
    let report: serde_json::Value = serde_json::from_slice(&bench.stdout).expect("json");
    assert!(report["server_rss_bytes"].is_null() && report["server_cpu_us_per_msg"].is_null(), "{report}");
    assert!(report["member_cpu_us_per_delivery"].as_f64().is_some_and(|c| c > 0.0), "{report}");

    for args in [&["status"][..], &["tail", "--count", "1"]] {
        let mut child = sam()
            .args(args)
            .env("SAM_CONFIG", &config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sam");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked") && out.status.code() != Some(101), "{args:?} | (closed): {err}");
        assert!(!err.contains("error"), "{args:?} | (closed) says nothing: {err}");
    }
}

fn kill_9(pid: u32) {
    let status = Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(200));
}

/// Reads the child's stderr until a line containing `needle`, copying it to `log`.
fn wait_for_line(child: &mut Child, log: &Path, needle: &str) {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let line = lines.find_map(|l| l.ok().filter(|l| l.contains(needle))).expect("the server says it recovered");
    std::fs::write(log, line).expect("write log");
}

/// Persistence (DESIGN section 5): a member that joins after more than `checkpoint_every`
/// messages, when the data servers dropped the early log, catches up from a checkpoint and
/// holds the same table as the whole log gives.
#[test]
fn a_member_joining_after_several_checkpoints_catches_up_and_shows_the_same_table() {
    let cluster = Cluster::up(21_600, &["--checkpoint-every", "100"]);
    let run = |args: &[&str]| stdout(finish(spawn(cluster.sam(args)), Duration::from_secs(60)));
    run(&["table", "put", "color", "blue"]);
    run(&["table", "put", "size", "7"]);
    assert_eq!(run(&["send", "--count", "450"]).lines().count(), 450);
    run(&["table", "delete", "size"]);
    run(&["table", "put", "shape", "round"]);
    // Checkpoints are taken at 100, 200, ..; the data servers have dropped what the one before
    // the latest covers, so a new member cannot replay the log from 1.
    let (status, out, err) = finish(spawn(cluster.sam(&["tail", "--count", "1"])), Duration::from_secs(60));
    assert!(status.success(), "{err}");
    assert!(err.contains("caught up from the checkpoint"), "the tail restored a checkpoint: {err}");
    let seq: u64 = out.split(' ').next().and_then(|s| s.parse().ok()).expect("a delivery");
    assert!(seq > 100, "it started after a checkpoint, at {seq}");
    assert_eq!(run(&["table", "dump"]), "color\tblue\nshape\tround\n");
    assert_eq!(run(&["table", "get", "color"]), "blue (at 454)\n");
}

/// `sam tail --from-start|--from-checkpoint|--from-now`: with one checkpoint advertised at
/// 100 and the whole log still held, a tail from the start prints number 1 first, one from the
/// checkpoint prints 101 first, and one from now only what is committed after it joined.
#[test]
fn a_tail_starts_where_it_is_asked_to() {
    let cluster = Cluster::up(22_200, &["--checkpoint-every", "100"]);
    let run = |args: &[&str]| stdout(finish(spawn(cluster.sam(args)), Duration::from_secs(60)));
    assert_eq!(run(&["send", "--count", "150"]).lines().count(), 150);
    let first_seq = |out: &str| -> u64 { out.split(' ').next().and_then(|s| s.parse().ok()).expect("a delivery") };
    assert_eq!(first_seq(&run(&["tail", "--from-start", "--count", "1"])), 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let from_checkpoint = loop {
        // The checkpoint is advertised once both checkpoint servers reported it.
        let (status, out, err) =
            finish(spawn(cluster.sam(&["tail", "--from-checkpoint", "--count", "1"])), Duration::from_secs(60));
        assert!(status.success(), "{err}");
        if err.contains("caught up from the checkpoint at 100") || Instant::now() > deadline {
            break out;
        }
    };
    assert_eq!(first_seq(&from_checkpoint), 101);
    let tail = spawn(cluster.sam(&["tail", "--from-now", "--count", "1"]));
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..20 {
        run(&["send", "after the tail joined"]);
        if std::fs::metadata(&tail.out).is_ok_and(|m| m.len() > 0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = stdout(finish(tail, Duration::from_secs(10)));
    assert!(first_seq(&out) > 150, "only numbers committed after it joined: {out}");
    assert!(out.contains("after the tail joined"), "{out}");
    let refused = finish(spawn(cluster.sam(&["tail", "--from-now", "--from-start"])), Duration::from_secs(10));
    assert!(!refused.0.success() && refused.2.contains("cannot be used with"), "{}", refused.2);
}

/// DESIGN section 7: a message longer than a datagram (300 KB; datagrams are 65,000 bytes)
/// is committed and delivered whole; one over the group's limit (1 MiB) is refused at once
/// with a clear error.
#[test]
fn a_message_longer_than_a_datagram_is_delivered_whole_and_one_over_the_limit_refused() {
    let cluster = Cluster::up(22_300, &[]);
    let tail = spawn(cluster.sam(&["tail", "--count", "2", "--format", "jsonl"]));
    let sent =
        stdout(finish(spawn(cluster.sam(&["send", "--count", "2", "--size", "300000"])), Duration::from_secs(60)));
    assert_eq!(sent.lines().count(), 2);
    let printed = stdout(finish(tail, Duration::from_secs(60)));
    for (i, line) in printed.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let payload = v["payload"].as_str().expect("text payload");
        assert_eq!(payload.len(), 300_000);
        assert!(payload.starts_with(&format!("message {i} ")), "{}", &payload[..20]);
    }
    let (status, _, err) =
        finish(spawn(cluster.sam(&["send", "--count", "1", "--size", "2000000"])), Duration::from_secs(20));
    assert!(!status.success());
    assert!(err.contains("longer than the limit of 1048576 bytes"), "{err}");
}

/// `sam status --json`: the epoch, the committed prefix and every server with its roles,
/// address, reachability and process id; a killed server shows as unreachable.
#[test]
fn status_shows_the_sequencer_and_which_servers_answer() {
    let cluster = Cluster::up(21_700, &[]);
    let run = |args: &[&str]| stdout(finish(spawn(cluster.sam(args)), Duration::from_secs(60)));
    run(&["send", "--count", "10"]);
    let pids = cluster.pids();
    kill_9(pids[2]);
    let status: serde_json::Value = serde_json::from_str(&run(&["status", "--json"])).expect("json");
    assert!(status["epoch"].is_string(), "{status}");
    assert!(status["committed"].as_u64() >= Some(10), "{status}");
    assert!(status["checkpoint"].is_null(), "no checkpoint after 10 messages: {status}");
    let servers = status["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 5);
    for (i, s) in servers.iter().enumerate() {
        assert_eq!(s["pid"].as_u64(), Some(u64::from(pids[i])), "{s}");
        assert_eq!(s["reachable"].as_bool(), Some(i != 2), "{s}");
        assert!(s["address"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{s}");
        let metrics = format!("http://127.0.0.1:{}/metrics", 21_700 + 4 + 5 + i);
        assert_eq!(s["metrics"].as_str(), Some(metrics.as_str()), "{s}");
    }
    let roles = |i: usize| {
        servers[i]["roles"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(roles(0), ["sequencer", "commit", "data"]);
    assert_eq!(roles(4), ["checkpoint"]);
}

/// `sam bench` starts its own cluster, measures, stops it, and prints the figures as JSON:
/// throughput, latency percentiles, CPU per message and per delivery, memory; with `--rate` it
/// sends open loop, and `--durability` sets its cluster's.
#[test]
fn bench_reports_throughput_latency_cpu_and_server_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plot = dir.path().join("bench.svg");
    let out = Command::new(SAM)
        .args(["bench", "--members", "2", "--messages", "500", "--window", "64", "--json", "--base-port", "22000"])
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("run sam bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let keys = ["committed_per_s", "delivered_per_s", "server_rss_bytes"];
    for key in keys.into_iter().chain(["member_cpu_us_per_delivery"]).chain(PERCENTILES) {
        assert!(report[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {report}");
    }
    // Measured in the kernel's 10 ms ticks: 500 messages may cost the servers less than one.
    assert!(report["server_cpu_us_per_msg"].as_f64().is_some_and(|v| v >= 0.0), "{report}");
    let by_percentile: Vec<u64> = PERCENTILES.iter().map(|k| report[k].as_u64().expect("a latency")).collect();
    assert!(by_percentile.windows(2).all(|w| w[0] <= w[1]), "latency percentiles in order: {report}");
    assert_eq!(report["expired"].as_u64(), Some(0), "{report}");
    assert_eq!((report["durability"].as_str(), report["rate"].as_f64()), (Some("fsync"), None), "{report}");
    let svg = std::fs::read_to_string(&plot).expect("the plot is written");
    assert!(svg.contains("committed messages per second") && svg.contains("by percentile"));

    // Open loop from two publishers, page-cache durability: 401 messages at 2,000 a second in
    // all take at least 0.2 s.
    let out = Command::new(SAM)
        .args(["bench", "--members", "2", "--messages", "401", "--publishers", "2"])
        .args(["--rate", "2000", "--durability", "os"])
        .args(["--json", "--base-port", "22000"])
        .output()
        .expect("run sam bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((report["durability"].as_str(), report["rate"].as_f64()), (Some("os"), Some(2000.0)), "{report}");
    assert_eq!((report["publishers"].as_u64(), report["expired"].as_u64()), (Some(2), Some(0)), "{report}");
    let committed = report["committed_per_s"].as_f64().expect("a rate");
    assert!(committed > 0.0 && committed <= 2_100.0, "no faster than the rate asked: {report}");
}

/// The latency percentiles `sam bench` reports.
const PERCENTILES: [&str; 5] = ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"];

/// DESIGN section 6, lost storage, and issue 16's liveness finding: a commit server whose
/// storage is wiped, restarted under a steady load, rejoins within a few failure timeouts (the
/// sequencer runs a ballot above the promises it copied), so that when another commit server
/// is then killed the group of three, two needed, still commits. Both say so in their logs,
/// the rejoining server in JSON.
#[test]
fn a_wiped_commit_server_rejoins_under_load_and_counts_for_the_quorum() {
    let mut cluster = Cluster::up(21_800, &[]);
    let status = stdout(finish(spawn(cluster.sam(&["status", "--json"])), Duration::from_secs(10)));
    let sequencer = serde_json::from_str::<serde_json::Value>(&status).expect("status JSON")["sequencer"]
        .as_u64()
        .expect("a sequencer");
    let others: Vec<u64> = (1..=3).filter(|id| *id != sequencer).collect();
    let (wiped, killed) = (others[0], others[1]);
    // A steady load, open loop, for longer than the test.
    let mut load = cluster.sam(&["bench", "--members", "1", "--messages", "30000", "--rate", "300"]);
    cluster.extra.push(load.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("the load"));
    std::thread::sleep(Duration::from_secs(1));

    kill_9(cluster.pids()[wiped as usize - 1]);
    std::fs::remove_dir_all(cluster.dir.path().join("data").join(format!("server-{wiped}"))).expect("wipe");
    let log = cluster.dir.path().join("wiped.log");
    let mut restarted = cluster.sam(&["server", "--id", &wiped.to_string(), "--log-format", "json"]);
    let stderr = std::fs::File::create(&log).expect("log file");
    cluster.extra.push(restarted.stdout(Stdio::null()).stderr(stderr).spawn().expect("restart the wiped server"));
    std::thread::sleep(Duration::from_secs(4));

    kill_9(cluster.pids()[killed as usize - 1]);
    let sent = finish(spawn(cluster.sam(&["send", "--count", "100", "--timeout", "10"])), Duration::from_secs(30));
    let (status, out, err) = sent;
    assert!(
        status.success() && out.lines().count() == 100,
        "with server {wiped} rejoined and server {killed} dead, the group commits: {err}"
    );
    let wiped_log = std::fs::read_to_string(&log).expect("the wiped server's log");
    let rejoined = wiped_log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains("rejoined after losing storage")));
    assert!(rejoined.is_some_and(|l| l["level"] == "INFO"), "the rejoin is logged: {wiped_log}");
    let sequencer_log = cluster.dir.path().join("logs").join(format!("server-{sequencer}.log"));
    let sequencer_log = std::fs::read_to_string(sequencer_log).expect("the sequencer's log");
    assert!(sequencer_log.contains("standing again"), "the sequencer says it stands again: {sequencer_log}");
}

/// A program the test needs, by name on the PATH; `None` (with a note) when it is missing
/// outside CI, where the developer may not have installed it; a failure under CI, whose
/// `.ci/run` installs it.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "{name} is not installed: .ci/run installs it");
        eprintln!("skipped: {name} is not installed (apt-get install prometheus)");
    }
    found
}

/// `GET path` from an HTTP server on loopback: the body of a 200 answer.
fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.split(' ').nth(1).filter(|code| *code == "200").map(|_| body.to_string())
}

/// A process killed by its pid when the test ends, also when it fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prometheus's answer to an instant query (`None` until it answers).
fn prometheus_query(prometheus: std::net::SocketAddr, query: &str) -> Option<serde_json::Value> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = http_get(prometheus, &format!("/api/v1/query?query={encoded}"))?;
    serde_json::from_str(&body).ok()
}

/// The value of an instant query's one sample, once Prometheus has one.
fn prometheus_value(prometheus: std::net::SocketAddr, query: &str) -> Option<f64> {
    prometheus_query(prometheus, query)?["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Waits until `query`'s value satisfies `enough`; returns it.
fn wait_for_value(prometheus: std::net::SocketAddr, query: &str, enough: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = prometheus_value(prometheus, query);
        if let Some(value) = value.filter(|v| enough(*v)) {
            return value;
        }
        assert!(Instant::now() < deadline, "{query} stayed at {value:?} for 60 s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Operations (issue 15): every server of a local cluster serves metrics that `promtool
/// check metrics` accepts, and a real Prometheus scraping them shows, through its HTTP API,
/// the committed number moving with traffic and the epoch moving when the sequencer is killed.
#[test]
fn prometheus_scrapes_every_server_and_sees_commits_and_a_failover() {
    let (Some(prometheus), Some(promtool)) = (tool("prometheus"), tool("promtool")) else { return };
    let cluster = Cluster::up(22_800, &[]);
    let config = sam_node::config::ClusterConfig::load(&cluster.config()).expect("the cluster's configuration");
    let endpoints: Vec<std::net::SocketAddr> =
        config.servers.iter().map(|s| s.metrics.expect("a local cluster serves metrics").into()).collect();
    for endpoint in &endpoints {
        let text = http_get(*endpoint, "/metrics").unwrap_or_else(|| panic!("no metrics at {endpoint}"));
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        std::io::Write::write_all(&mut check.stdin.take().expect("stdin"), text.as_bytes()).expect("feed promtool");
        let checked = check.wait_with_output().expect("promtool");
        let said = String::from_utf8_lossy(&checked.stdout).to_string() + &String::from_utf8_lossy(&checked.stderr);
        assert!(checked.status.success() && said.trim().is_empty(), "promtool on {endpoint}: {said}");
    }
    let targets: Vec<String> = endpoints.iter().map(|e| format!("'{e}'")).collect();
    let scrape = format!(
        "global:\n  scrape_interval: 500ms\nscrape_configs:\n  - job_name: sam\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    );
    let dir = cluster.dir.path();
    std::fs::write(dir.join("prometheus.yml"), scrape).expect("write prometheus.yml");
    let web: std::net::SocketAddr = "127.0.0.1:22890".parse().expect("address");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
    let _prometheus = KillOnDrop(
        Command::new(prometheus)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("prometheus").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    let up = wait_for_value(web, "sum(up)", |v| v == endpoints.len() as f64);
    assert_eq!(up, 5.0, "every server is scraped");
    let sent = stdout(finish(spawn(cluster.sam(&["send", "--count", "200"])), Duration::from_secs(60)));
    assert_eq!(sent.lines().count(), 200);
    wait_for_value(web, "max(sam_committed_seq)", |v| v >= 200.0);
    let epoch = wait_for_value(web, "max(sam_epoch)", |v| v > 0.0);
    kill_9(cluster.pids()[0]);
    let more = stdout(finish(spawn(cluster.sam(&["send", "--count", "50"])), Duration::from_secs(60)));
    assert_eq!(more.lines().count(), 50, "the group commits under a new sequencer");
    wait_for_value(web, "max(sam_epoch)", |v| v > epoch);
    wait_for_value(web, "max(sam_committed_seq)", |v| v >= 250.0);
    wait_for_value(web, "sum(sam_sequencer)", |v| v == 1.0);
    let new_sequencer = prometheus_query(web, "sam_sequencer == 1").expect("an answer")["data"]["result"][0]["metric"]
        ["instance"]
        .as_str()
        .expect("the sequencer's instance")
        .to_string();
    let id = endpoints.iter().position(|e| e.to_string() == new_sequencer).expect("a server's endpoint") + 1;
    let log = std::fs::read_to_string(dir.join("logs").join(format!("server-{id}.log"))).expect("its log");
    assert!(log.contains("sequencer of epoch"), "server {id} logs its election: {log}");
    // Every query of the Grafana dashboard is PromQL that Prometheus runs on these metrics.
    let dashboard = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard).expect("the dashboard")).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets"))
        .map(|t| t["expr"].as_str().expect("expr"))
        .collect();
    assert!(queries.len() >= panels.len());
    for query in queries {
        let answer = prometheus_query(web, &query.replace("$__rate_interval", "5s"));
        let status = answer.as_ref().and_then(|a| a["status"].as_str());
        assert_eq!(status, Some("success"), "{query}: {answer:?}");
    }
}

/// Real hosts (issue 15): the configuration `sam config init` writes for a cluster given by
/// addresses loads and runs as written. Servers on four loopback addresses, started by hand
/// from it as an operator would on each host, commit and deliver, and serve metrics on their
/// own addresses; a second init into the same directory is refused, and so is an address
/// without a port.
#[test]
fn a_cluster_laid_out_by_config_init_runs_from_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etc = dir.path().join("etc");
    let init = |extra: &[&str]| {
        let mut command = Command::new(SAM);
        command.args(["config", "init", "--dir"]).arg(&etc).arg("--storage").arg(dir.path().join("data"));
        command.args(["--channel-port", "24100", "--interface", "127.0.0.1", "--metrics-port", "24190"]);
        command.args(extra);
        finish(spawn(command), Duration::from_secs(10))
    };
    let hosts =
        ["--servers", "127.0.0.2:24104,127.0.0.3:24104,127.0.0.4:24104", "--checkpoint-servers", "127.0.0.5:24104"];
    let written = stdout(init(&hosts));
    let config = etc.join("sam.toml");
    assert_eq!(written.trim(), config.display().to_string());
    let mut servers = Vec::new();
    for id in 1..=4 {
        let mut server = Command::new(SAM);
        server.args(["server", "--init", "--id", &id.to_string(), "--config"]).arg(&config);
        let log = std::fs::File::create(dir.path().join(format!("server-{id}.log"))).expect("log file");
        servers.push(KillOnDrop(server.stdout(Stdio::null()).stderr(log).spawn().expect("start a server")));
    }
    let sam = |args: &[&str]| {
        let mut command = Command::new(SAM);
        command.args(&args[..1]).arg("--config").arg(&config).args(&args[1..]);
        stdout(finish(spawn(command), Duration::from_secs(60)))
    };
    assert_eq!(sam(&["send", "--count", "20"]).lines().count(), 20);
    assert_eq!(sam(&["tail", "--count", "20"]).lines().count(), 20);
    let metrics = http_get("127.0.0.3:24190".parse().expect("address"), "/metrics").expect("server 2's metrics");
    assert!(metrics.contains("sam_committed_seq"), "{metrics}");

    let (status, _, err) = init(&hosts);
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("exists already"), "{err}");
    let (status, _, err) = init(&["--servers", "10.0.0.1"]);
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("10.0.0.1"), "{err}");
}

/// Ctrl-C during `sam send` (issue 15): it stops waiting and says what it leaves undecided —
/// each message sent and not known to be committed, by mid, and how many were never sent —
/// and exits 130, as shells report an interrupted command. No cluster runs here, so nothing
/// commits and every message sent is undecided.
#[test]
fn an_interrupted_send_says_what_it_leaves_undecided() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sam.toml");
    let cluster = sam_node::config::ClusterConfig::local(3, 2, 24_300, dir.path());
    std::fs::write(&config, cluster.to_toml_string().expect("a configuration")).expect("write sam.toml");
    let mut send = Command::new(SAM);
    send.args(["send", "--count", "1500", "--timeout", "60", "--config"]).arg(&config);
    let running = spawn(send);
    std::thread::sleep(Duration::from_secs(1));
    let interrupt = Command::new("kill").args(["-INT", &running.child.id().to_string()]).status().expect("kill");
    assert!(interrupt.success());
    let (status, out, err) = finish(running, Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(out.is_empty(), "nothing committed: {out}");
    assert!(
        err.contains("interrupted: 0 committed (printed), 0 expired, 1024 sent and not known to be committed (they may still be), 476 not sent"),
        "{err}"
    );
    assert_eq!(err.lines().filter(|l| l.starts_with("unknown ")).count(), 1024, "{err}");
}

/// `sam local up` in the foreground (issue 15) watches its servers: one killed is reported and
/// started again on the storage it left, its log going on after the old one's lines, and the
/// group commits with it; Ctrl-C (here SIGTERM) stops them all.
#[test]
fn local_up_in_the_foreground_restarts_a_server_that_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut up = Command::new(SAM);
    up.args(["local", "up", "--base-port", "24400", "--dir"]).arg(dir.path());
    let up = spawn(up);
    // Stops local up, and so its servers, also when the test fails.
    let _stop = TermOnDrop(up.child.id());
    let pids_file = dir.path().join("pids");
    let pids = || {
        let text = std::fs::read_to_string(&pids_file).unwrap_or_default();
        text.lines().filter_map(|l| l.parse().ok()).collect::<Vec<u32>>()
    };
    wait_until("the pids of five servers", || pids().len() == 5);
    let before = pids();
    let server_2_log = dir.path().join("logs/server-2.log");
    let running = || std::fs::read_to_string(&server_2_log).unwrap_or_default().matches("running on").count();
    wait_until("server 2 says it runs", || running() == 1);
    kill_9(before[1]);
    wait_until("server 2 restarted", || pids().len() == 5 && pids()[1] != before[1]);
    let after = pids();
    assert!(std::path::Path::new(&format!("/proc/{}", after[1])).exists(), "the new server 2 runs");
    let mut send = Command::new(SAM);
    send.args(["send", "--count", "20", "--config"]).arg(dir.path().join("sam.toml"));
    assert_eq!(stdout(finish(spawn(send), Duration::from_secs(60))).lines().count(), 20);
    wait_until("server 2's log holds both runs", || running() == 2);
    terminate(up.child.id());
    let (_, _, err) = finish(up, Duration::from_secs(20));
    assert!(err.contains("server 2 died") && err.contains("restarting it (1 of 3)"), "{err}");
    for pid in after {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "server {pid} stopped with local up");
    }
}

fn terminate(pid: u32) {
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
}

/// Waits up to 10 s for `done`; fails naming `what` after that.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "waited 10 s for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM to a process when the test ends (a `local up` stops its servers on it).
struct TermOnDrop(u32);

impl Drop for TermOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.to_string()]).stderr(Stdio::null()).status();
    }
}
