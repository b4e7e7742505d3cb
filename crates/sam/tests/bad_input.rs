//! Bad input gets a clear error and loses nothing: an unknown flag, a broken configuration,
//! a port in use, sending while no cluster runs, a datagram of garbage at a server.

use std::process::Command;
use std::time::Duration;

const SAM: &str = env!("CARGO_BIN_EXE_sam");

fn sam(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(SAM).args(args).output().expect("run sam");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

/// Every command a newcomer types first shows examples under its `--help`, each a command
/// line of `sam` itself.
#[test]
fn the_everyday_commands_show_examples_in_their_help() {
    let commands: [&[&str]; 8] =
        [&["send"], &["tail"], &["table"], &["status"], &["server"], &["bench"], &["local", "up"], &["config", "init"]];
    for command in commands {
        let (code, out, _) = sam(&[command, &["--help"]].concat());
        assert_eq!(code, 0, "{command:?}");
        let examples = out.split_once("Example").map(|(_, e)| e).unwrap_or_else(|| panic!("{command:?}: {out}"));
        assert!(examples.contains(&format!("sam {}", command.join(" "))), "{command:?}: {examples}");
    }
}

#[test]
fn an_unknown_flag_is_refused_with_usage() {
    let (code, _, err) = sam(&["send", "--no-such-flag"]);
    assert_eq!(code, 2);
    assert!(err.contains("--no-such-flag"), "{err}");
}

#[test]
fn a_broken_configuration_names_the_key_and_a_missing_file_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sam.toml");
    let text = "cluster_id = \"0123456789abcdef\"\n[[servers]]\nid = 1\nroles = [\"comit\"]\naddress = \"127.0.0.1:9000\"\n\n[security]\nmode = \"off\"\n";
    std::fs::write(&path, text).expect("write");
    let (code, _, err) = sam(&["send", "--config", path.to_str().unwrap(), "hello"]);
    assert_ne!(code, 0);
    assert!(err.contains("servers[0].roles") && err.contains("comit"), "{err}");
    let missing = dir.path().join("nope.toml");
    let (code, _, err) = sam(&["tail", "--config", missing.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("nope.toml"), "{err}");
}

#[test]
fn sending_while_no_cluster_runs_fails_after_a_bounded_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = sam_node::config::ClusterConfig::local(3, 2, 21_800, dir.path());
    let path = dir.path().join("sam.toml");
    std::fs::write(&path, config.to_toml_string().expect("toml")).expect("write");
    let start = std::time::Instant::now();
    let (code, out, err) = sam(&["send", "--config", path.to_str().unwrap(), "--timeout", "1", "hello"]);
    assert_ne!(code, 0);
    assert!(out.is_empty(), "nothing was committed: {out}");
    assert!(err.contains("is the cluster running"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_port_in_use_stops_local_up_with_an_error_and_garbage_does_not_hurt_a_server() {
    let first = tempfile::tempdir().expect("tempdir");
    let up = |dir: &std::path::Path| {
        let args = ["local", "up", "--detach", "--base-port", "21900", "--dir", dir.to_str().unwrap()];
        sam(&args)
    };
    let (code, _, err) = up(first.path());
    assert_eq!(code, 0, "{err}");
    let second = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = up(second.path());
    let config = first.path().join("sam.toml");
    let config = config.to_str().unwrap();
    // Garbage at every server's port, then the cluster still commits.
    let raw = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
    for port in 21_904..21_909 {
        raw.send_to(b"\x53\x4d\x01\x00garbage that is no frame", ("127.0.0.1", port)).expect("send garbage");
    }
    let (sent, out, send_err) = sam(&["send", "--config", config, "after garbage"]);
    let _ = sam(&["local", "down", "--dir", first.path().to_str().unwrap()]);
    let _ = sam(&["local", "down", "--dir", second.path().to_str().unwrap()]);
    assert_ne!(code, 0, "a second cluster on the same ports must not start");
    assert!(err.contains("exited at start") && err.contains("--base-port"), "the port and the way out: {err}");
    assert_eq!(sent, 0, "{send_err}");
    assert_eq!(out.lines().count(), 1);
}

/// Issue 15: `sam completions SHELL` prints a completion script that knows the subcommands and
/// their options; an unknown shell is refused, naming the ones there are.
#[test]
fn completions_know_the_commands_and_an_unknown_shell_is_refused() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = sam(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains("status") && out.contains("--config") && out.contains("keygen"), "{shell}: {out}");
    }
    let (code, _, err) = sam(&["completions", "cmd.exe"]);
    assert_eq!(code, 2);
    assert!(err.contains("bash"), "{err}");
}

/// Issue 15: an OS error is said once, not once per layer that passed it on.
#[test]
fn a_missing_configuration_is_said_once() {
    let (code, _, err) = sam(&["send", "--config", "/nonexistent/sam.toml", "hi"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/sam.toml"), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}
