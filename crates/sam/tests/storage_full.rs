//! DESIGN section 12, "Storage": a full disk stops acceptance, not the process. Three servers
//! keep their logs on one small tmpfs; the group fills it, every server stays up and says so in
//! `sam status`, and once the file system grows the group commits again. Needs root (mount).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sam_node::config::ClusterConfig;

const SAM: &str = env!("CARGO_BIN_EXE_sam");

/// Three `sam server` processes whose storage is a tmpfs of its own; all stopped by pid and
/// the tmpfs unmounted on drop.
struct SmallCluster {
    dir: tempfile::TempDir,
    data: PathBuf,
    servers: Vec<Child>,
}

impl SmallCluster {
    fn start(base_port: u16, tmpfs_bytes: u64) -> SmallCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={tmpfs_bytes}"), "tmpfs"])
            .arg(&data)
            .status()
            .expect("run mount");
        assert!(mounted.success(), "mounting a tmpfs needs root");
        let mut cluster = ClusterConfig::local(3, 0, base_port, dir.path());
        cluster.storage.segment_bytes = 64 << 10;
        cluster.with_local_keys(dir.path()).expect("keys");
        let config = dir.path().join("sam.toml");
        std::fs::write(&config, cluster.to_toml_string().expect("toml")).expect("write config");
        let mut this = SmallCluster { dir, data, servers: Vec::new() };
        for id in 1..=3 {
            let log = std::fs::File::create(this.dir.path().join(format!("server-{id}.log"))).expect("log file");
            let child = Command::new(SAM)
                .args(["server", "--init", "--id", &id.to_string(), "--config"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start a server");
            this.servers.push(child);
        }
        this
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("sam.toml")
    }

    fn status(&self) -> serde_json::Value {
        let out = Command::new(SAM).args(["status", "--json", "--config"]).arg(self.config()).output().expect("status");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Sends `count` messages of `size` bytes; whether all committed within `timeout_s`.
    fn send(&self, count: usize, size: usize, timeout_s: u64) -> bool {
        Command::new(SAM)
            .args(["send", "--config"])
            .arg(self.config())
            .args(["--count", &count.to_string(), "--size", &size.to_string(), "--timeout", &timeout_s.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run sam send")
            .success()
    }

    fn all_running(&mut self) -> bool {
        self.servers.iter_mut().all(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn server_log(&self, id: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("server-{id}.log"))).unwrap_or_default()
    }
}

impl Drop for SmallCluster {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("umount").arg(&self.data).status();
    }
}

fn storage_full(status: &serde_json::Value) -> Vec<bool> {
    let servers = status["servers"].as_array().cloned().unwrap_or_default();
    servers.iter().map(|s| s["storage_full"].as_bool() == Some(true)).collect()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df").args(["--output=avail", "-B1"]).arg(path).output().expect("df");
    String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn a_full_disk_stops_acceptance_not_the_servers_and_room_resumes_it() {
    let mut cluster = SmallCluster::start(23_960, 2 << 20);
    assert!(cluster.send(10, 100, 20), "the group commits at first");
    // Fill the file system: sends stop committing, the servers stay up.
    let start = Instant::now();
    while cluster.send(200, 4_000, 3) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "2 MiB never filled ({} bytes free)",
            free_bytes(&cluster.data)
        );
    }
    assert!(cluster.all_running(), "a full disk stopped a server: {}", cluster.server_log(1));
    let full = storage_full(&cluster.status());
    assert!(full.iter().any(|f| *f), "status shows the alarm: {full:?}");
    assert!(
        cluster.server_log(1).contains("full")
            || cluster.server_log(2).contains("full")
            || cluster.server_log(3).contains("full")
    );
    // Room returns: the writes that waited go through and the group commits again.
    let grown = Command::new("mount").args(["-o", "remount,size=64m"]).arg(&cluster.data).status().expect("remount");
    assert!(grown.success());
    wait_until("a send commits after the disk grew", Duration::from_secs(30), || cluster.send(5, 100, 5));
    wait_until("the alarm clears", Duration::from_secs(10), || storage_full(&cluster.status()).iter().all(|f| !f));
    assert!(cluster.all_running());
}
