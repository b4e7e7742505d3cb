//! Real hosts for a fault run: each server, and the members, in a network namespace of its
//! own, joined by veth pairs to a bridge, with real IP multicast between them. A partition
//! moves some namespaces' links to a second bridge (each side still talks within itself); a
//! cut link is set down. Everything is named after the run, removed when the value is
//! dropped (also when the run fails), and removed first if a crashed run left it behind.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The namespaces, links and bridges of one run.
#[derive(Debug)]
pub struct Hosts {
    run: u8,
    servers: usize,
}

impl Hosts {
    /// Creates a namespace per server (`sam<run>s<i>`, address `10.77.<run>.<10+i>`) and one
    /// for the members (`sam<run>m`, `10.77.<run>.100`), on the bridge `sam<run>b0`.
    pub fn create(run: u8, servers: usize) -> Result<Hosts> {
        let hosts = Hosts { run, servers };
        hosts.remove();
        hosts.setup().with_context(|| {
            format!("creating network namespaces (this needs root and the `ip` command; run {run})")
        })?;
        Ok(hosts)
    }

    fn setup(&self) -> Result<()> {
        for bridge in [self.bridge(0), self.bridge(1)] {
            ip(&["link", "add", &bridge, "type", "bridge", "mcast_snooping", "0"])?;
            ip(&["link", "set", &bridge, "up"])?;
        }
        for host in self.all() {
            let (ns, link, addr) = (self.namespace(host), self.link(host), format!("{}/24", self.address(host)));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["link", "set", &link, "master", &self.bridge(0), "up"])?;
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(())
    }

    /// Server `i` (1-based) and the members (`None`).
    fn all(&self) -> impl Iterator<Item = Option<usize>> {
        (1..=self.servers).map(Some).chain([None])
    }

    fn bridge(&self, side: u8) -> String {
        format!("sam{}b{side}", self.run)
    }

    /// The namespace of server `i` (1-based), or of the members.
    pub fn namespace(&self, host: Option<usize>) -> String {
        match host {
            Some(i) => format!("sam{}s{i}", self.run),
            None => format!("sam{}m", self.run),
        }
    }

    fn link(&self, host: Option<usize>) -> String {
        match host {
            Some(i) => format!("sam{}v{i}", self.run),
            None => format!("sam{}vm", self.run),
        }
    }

    /// The address of server `i` (1-based), or of the members.
    pub fn address(&self, host: Option<usize>) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.run, host.map_or(100, |i| 10 + i as u8))
    }

    /// A command that runs `program` inside the namespace of `host`.
    pub fn command(&self, host: Option<usize>, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespace(host)]).arg(program);
        c
    }

    /// Cuts the servers `isolated` (1-based) off from the others and the members: they reach
    /// only each other.
    pub fn partition(&self, isolated: &[usize]) -> Result<()> {
        for i in isolated {
            ip(&["link", "set", &self.link(Some(*i)), "master", &self.bridge(1)])?;
        }
        Ok(())
    }

    /// Sets the link of server `i` down (`up`: back up).
    pub fn cut(&self, i: usize, up: bool) -> Result<()> {
        ip(&["link", "set", &self.link(Some(i)), if up { "up" } else { "down" }])
    }

    /// Ends every partition and cut.
    pub fn heal(&self) -> Result<()> {
        for i in 1..=self.servers {
            ip(&["link", "set", &self.link(Some(i)), "master", &self.bridge(0), "up"])?;
        }
        Ok(())
    }

    /// Removes whatever of this run exists: processes still in its namespaces (left by a
    /// run that was killed), the links, the namespaces and the bridges.
    fn remove(&self) {
        for host in self.all() {
            let ns = self.namespace(host);
            for pid in Command::new("ip")
                .args(["netns", "pids", &ns])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
                .split(|b| b.is_ascii_whitespace())
            {
                if let Some(pid) = std::str::from_utf8(pid).ok().and_then(|p| p.parse::<libc::pid_t>().ok()) {
                    // SAFETY: kill(2) of a process inside a namespace that only this run creates.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            let _ = quiet_ip(&["link", "del", &self.link(host)]);
            let _ = quiet_ip(&["netns", "del", &ns]);
        }
        for bridge in [self.bridge(0), self.bridge(1)] {
            let _ = quiet_ip(&["link", "del", &bridge]);
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.remove();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running `ip`")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn quiet_ip(args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    Command::new("ip").args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status()
}
