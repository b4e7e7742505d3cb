//! `sam keygen` as a user runs it: a new cluster's private key files, refusal to overwrite
//! them, member credentials derived from them, refusal of a key file others can read, and a
//! rotation from start to end (rotate, promote, retire).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sam_net::security::keys::{member_pid, ClusterId, KeyKind, Keyring, Suite};
use sam_node::credential;

const SAM: &str = env!("CARGO_BIN_EXE_sam");

/// Runs `sam keygen --dir DIR ARGS`: the exit code, stdout and stderr.
fn keygen(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(SAM).arg("keygen").arg("--dir").arg(dir).args(args).output().expect("run sam");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

/// Runs `sam keygen` and asserts it succeeded; its stdout.
fn keygen_ok(dir: &Path, args: &[&str]) -> String {
    let (code, out, err) = keygen(dir, args);
    assert_eq!(code, 0, "sam keygen {args:?} failed: {err}");
    out
}

/// Runs `sam keygen` and asserts it failed; its stderr.
fn keygen_refused(dir: &Path, args: &[&str]) -> String {
    let (code, out, err) = keygen(dir, args);
    assert_ne!(code, 0, "sam keygen {args:?} should have failed: {out}");
    err
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
}

/// A new cluster's keys in a new directory `keys` under a temporary one.
fn new_cluster(args: &[&str]) -> (tempfile::TempDir, PathBuf, String) {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().join("keys");
    let out = keygen_ok(&dir, args);
    (temp, dir, out)
}

fn load(dir: &Path, file: &str) -> Keyring {
    credential::load(&dir.join(file)).expect("load")
}

#[test]
fn keygen_writes_private_files_and_the_configuration_lines_and_never_overwrites() {
    let (_temp, dir, out) = new_cluster(&["--cluster-id", "0123456789ABCDEF", "--suite", "chacha20-poly1305"]);
    assert_eq!(mode_of(&dir), 0o700);
    let server_path = dir.join(credential::SERVER_FILE);
    for file in [credential::SERVER_FILE, credential::CHECKPOINT_FILE] {
        assert_eq!(mode_of(&dir.join(file)), 0o600, "{file}");
    }
    let server = load(&dir, credential::SERVER_FILE);
    assert_eq!((server.cluster, server.suite), (ClusterId(0x0123_4567_89ab_cdef), Suite::ChaCha20Poly1305));
    assert_eq!(load(&dir, credential::CHECKPOINT_FILE), Keyring::checkpoint_from(&server));
    assert!(out.contains("cluster_id = \"0123456789abcdef\""), "{out}");
    assert!(out.contains("[security]\nmode = \"encrypt\"\n"), "{out}");
    assert!(out.contains(&format!("server_key = \"{}\"", server_path.display())), "{out}");
    let before = std::fs::read(&server_path).expect("read");
    let err = keygen_refused(&dir, &[]);
    assert!(err.contains("exists already") && err.contains(&server_path.display().to_string()), "{err}");
    assert_eq!(std::fs::read(&server_path).expect("read"), before, "the keys are untouched");
    let err = keygen_refused(&dir.join("other"), &["--cluster-id", "123"]);
    assert!(err.contains("--cluster-id") && err.contains("16 hex digits"), "{err}");
}

#[test]
fn a_drawn_cluster_id_is_printed_and_in_the_files() {
    let (_temp, dir, out) = new_cluster(&[]);
    let server = load(&dir, credential::SERVER_FILE);
    assert_eq!(server.suite, Suite::Aes256Gcm);
    assert!(out.contains(&format!("cluster_id = \"{}\"", server.cluster)), "{out}");
}

#[test]
fn member_credentials_are_derived_from_the_server_keys() {
    let (_temp, dir, _) = new_cluster(&[]);
    let out = keygen_ok(&dir, &["--member", "alice"]);
    let path = dir.join("member-alice.key");
    assert_eq!(mode_of(&path), 0o600);
    let server = load(&dir, credential::SERVER_FILE);
    assert_eq!(load(&dir, "member-alice.key"), Keyring::member_from(&server, "alice"));
    assert!(out.contains(&format!("pid {}", member_pid("alice").0)), "{out}");
    let err = keygen_refused(&dir, &["--member", "alice"]);
    assert!(err.contains("exists already") && err.contains("--replace"), "{err}");
    keygen_ok(&dir, &["--member", "alice", "--replace"]);
    for bad in ["a/b", "", "with space"] {
        let err = keygen_refused(&dir, &["--member", bad]);
        assert!(err.contains("not a member name"), "{err}");
    }
    let err = keygen_refused(&dir, &["--member", "x", "--suite", "aes-256-gcm"]);
    assert!(err.contains("--suite"), "a new cluster's flag with --member: {err}");
}

#[test]
fn a_key_file_others_can_read_is_refused_naming_the_file_and_the_fix() {
    let (_temp, dir, _) = new_cluster(&[]);
    let server_path = dir.join(credential::SERVER_FILE);
    std::fs::set_permissions(&server_path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = keygen_refused(&dir, &["--member", "x"]);
    assert!(err.contains(&server_path.display().to_string()), "{err}");
    assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
    assert!(!dir.join("member-x.key").exists());
}

#[test]
fn a_rotation_adds_promotes_and_retires_keys() {
    let (_temp, dir, _) = new_cluster(&[]);
    keygen_ok(&dir, &["--member", "alice"]);
    let first = load(&dir, credential::SERVER_FILE);
    let group =
        |ring: &Keyring| -> Vec<(u16, bool)> { ring.of_kind(KeyKind::Group).map(|k| (k.id, k.accept_only)).collect() };

    let out = keygen_ok(&dir, &["--rotate", "group"]);
    let rotated = load(&dir, credential::SERVER_FILE);
    assert_eq!(group(&rotated), vec![(1, false), (2, true)]);
    assert_eq!(rotated.sealing(KeyKind::Group), first.sealing(KeyKind::Group), "the old key still seals");
    assert_eq!(load(&dir, credential::CHECKPOINT_FILE), Keyring::checkpoint_from(&rotated));
    assert!(out.contains("--member alice --replace"), "members are told to re-issue: {out}");
    assert!(out.contains("--promote group 2"), "{out}");
    assert_eq!(mode_of(&dir.join(credential::SERVER_FILE)), 0o600);

    let err = keygen_refused(&dir, &["--promote", "group", "9"]);
    assert!(err.contains("no group key 9") && err.contains("1, 2"), "{err}");
    let out = keygen_ok(&dir, &["--promote", "group", "2"]);
    let promoted = load(&dir, credential::SERVER_FILE);
    assert_eq!(group(&promoted), vec![(1, true), (2, false)]);
    assert!(out.contains("--retire group 1"), "{out}");

    let err = keygen_refused(&dir, &["--retire", "group", "2"]);
    assert!(err.contains("sealing key"), "{err}");
    keygen_ok(&dir, &["--retire", "group", "1"]);
    let retired = load(&dir, credential::SERVER_FILE);
    assert_eq!(group(&retired), vec![(2, false)]);
    keygen_ok(&dir, &["--member", "alice", "--replace"]);
    assert_eq!(load(&dir, "member-alice.key"), Keyring::member_from(&retired, "alice"));

    // The server key's rotation carries the checkpoint key with it.
    keygen_ok(&dir, &["--rotate", "server"]);
    let checkpoint = load(&dir, credential::CHECKPOINT_FILE);
    let ids: Vec<(u16, bool)> = checkpoint.of_kind(KeyKind::Checkpoint).map(|k| (k.id, k.accept_only)).collect();
    assert_eq!(ids, vec![(1, false), (2, true)]);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "no temporary file is left: {names:?}");

    let err = keygen_refused(&dir, &["--rotate", "checkpoint"]);
    assert!(err.contains("checkpoint"), "derived keys do not rotate alone: {err}");
    let err = keygen_refused(&dir, &["--promote", "grup", "1"]);
    assert!(err.contains("unknown kind"), "{err}");
}

/// `--signing-keys` prints the configuration line of the heartbeat signing keys, one per server
/// key: after a rotation of the server key it lists the new one too. A new cluster's lines show
/// it, commented out, beside `sign_server_frames`.
#[test]
fn signing_keys_lists_one_public_key_per_server_key() {
    use sam_net::security::signing::public_key;
    let (_temp, dir, out) = new_cluster(&[]);
    let server = load(&dir, credential::SERVER_FILE);
    let key = |id| public_key(server.key(KeyKind::Server, id).expect("a server key"), server.cluster);
    let line = keygen_ok(&dir, &["--signing-keys"]);
    assert_eq!(line.trim(), format!("signing_keys = [\"{}\"]", key(1)));
    assert!(out.contains("# sign_server_frames = true") && out.contains(&format!("# {}", line.trim())), "{out}");
    keygen_ok(&dir, &["--rotate", "server"]);
    let server = load(&dir, credential::SERVER_FILE);
    let rotated = |id| public_key(server.key(KeyKind::Server, id).expect("a server key"), server.cluster);
    let line = keygen_ok(&dir, &["--signing-keys"]);
    assert_eq!(line.trim(), format!("signing_keys = [\"{}\", \"{}\"]", rotated(1), rotated(2)));
    assert!(keygen_refused(&dir, &["--signing-keys", "--member", "x"]).contains("cannot be used with"));
}
