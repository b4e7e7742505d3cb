//! The fault harness (`sam fault run`) on real processes: quick runs, one across network
//! namespaces over multicast and one over unicast, each with a sequencer kill, a data server
//! kill and restart, a partition that isolates the sequencer with a minority, a pause, a
//! checkpoint server kill and a cut link, under injected loss and duplication, end with no
//! violation, also with signed frames; the same harness fails a run of a known-bad protocol
//! variant. The runs take
//! turns (each is ten processes on two cores), and each is stopped by its pid if it overruns,
//! which makes it stop its processes and remove its namespaces.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SAM: &str = env!("CARGO_BIN_EXE_sam");

/// One run at a time.
static TURN: Mutex<()> = Mutex::new(());

/// How long a quick run may take before it is stopped.
const OVERRUN: Duration = Duration::from_secs(300);

/// Runs `sam fault run --json` with `args`; its exit code and report.
fn fault_run(args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let _turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(SAM)
        .args(["fault", "run", "--json", "--dir"])
        .arg(dir.path())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sam fault run");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > OVERRUN {
            // SAFETY: kill(2) of the child this test started and has not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
            panic!("the run took more than {OVERRUN:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    let report = text.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or(serde_json::Value::Null);
    (out.status.code(), report)
}

fn count(report: &serde_json::Value, kind: &str) -> u64 {
    report["faults"][kind].as_u64().unwrap_or(0)
}

fn assert_clean_quick_run(code: Option<i32>, report: &serde_json::Value) {
    assert_eq!(code, Some(0), "a clean run: {report}");
    assert_eq!(report["violations"].as_array().map(Vec::len), Some(0), "{report}");
    for kind in [
        "kill-sequencer",
        "kill-commit-data-server",
        "kill-checkpoint-server",
        "pause-sequencer",
        "isolate-sequencer-with-minority",
        "cut-link",
    ] {
        assert!(count(report, kind) >= 1, "{kind} injected: {report}");
    }
    let committed = report["committed"].as_u64().unwrap_or(0);
    assert!(committed > 1_000, "messages went on being committed: {report}");
    assert_eq!(report["unknown"].as_u64(), Some(0), "every sender learned its messages' fate: {report}");
    // Tails that fall behind catch up from a checkpoint and skip what it covers.
    assert!(report["deliveries_checked"].as_u64().unwrap_or(0) >= 2 * committed, "the tails were checked: {report}");
    assert!(report["failover_ms"]["count"].as_u64().unwrap_or(0) >= 3, "each sequencer fault measured: {report}");
    let faults = report["sequencer_faults"].as_u64();
    assert!(faults >= Some(3), "{report}");
    assert_eq!(report["sequencer_deposed"].as_u64(), faults, "a new sequencer before the old came back: {report}");
}

/// The namespaces of run `run` are gone.
fn assert_no_namespaces_left(run: u8) {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    let list = String::from_utf8_lossy(&out.stdout);
    let server = format!("sam{run}s");
    let ours = |n: &str| {
        n == format!("sam{run}m") || n.strip_prefix(&server).is_some_and(|i| i.chars().all(|c| c.is_ascii_digit()))
    };
    assert!(!list.split_whitespace().any(ours), "left behind: {list}");
}

#[test]
fn a_quick_run_across_namespaces_over_multicast_has_no_violation() {
    let (code, report) = fault_run(&["--quick", "--hosts", "netns", "--run", "11"]);
    assert_clean_quick_run(code, &report);
    assert_no_namespaces_left(11);
}

#[test]
fn a_quick_run_across_namespaces_over_unicast_has_no_violation() {
    let (code, report) = fault_run(&["--quick", "--hosts", "netns", "--transport", "unicast", "--run", "12"]);
    assert_clean_quick_run(code, &report);
    assert_no_namespaces_left(12);
}

/// With signed frames tails deliver only what the sequencer's signed heartbeats vouch for:
/// through every fault of a quick run, they deliver everything committed, with no violation.
#[test]
fn a_quick_run_with_signed_frames_has_no_violation() {
    let (code, report) = fault_run(&["--quick", "--sign-server-frames", "--hosts", "netns", "--run", "14"]);
    assert_clean_quick_run(code, &report);
    assert_no_namespaces_left(14);
}

/// The sequencer numbering retransmitted messages again (no de-duplication) is caught: the run
/// fails and says which promise broke, where the same run without it passes.
#[test]
fn a_quick_run_of_a_known_bad_variant_fails() {
    let args = ["--quick", "--run", "13", "--quiescence", "10"];
    let (code, report) = fault_run(&args);
    assert_eq!(code, Some(0), "the same run without the broken variant is clean: {report}");
    let (code, report) = fault_run(&[&args[..], &["--mutation", "no-deduplication"]].concat());
    assert_eq!(code, Some(1), "the run fails: {report}");
    let violations = report["violations"].as_array().cloned().unwrap_or_default();
    assert!(!violations.is_empty(), "{report}");
}
