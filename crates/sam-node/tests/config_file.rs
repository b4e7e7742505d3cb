//! The configuration file as `sam` reads it: from disk, with paths relative to the file.

use std::path::{Path, PathBuf};

use sam_core::Pid;
use sam_node::config::{ClusterConfig, ConfigError, KeyUser, ProtocolConfig, Role, SecurityMode, Transport};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sam.toml")
}

#[test]
fn the_commented_example_loads() {
    let path = example_path();
    let c = ClusterConfig::load(&path).unwrap();
    assert_eq!(c.transport, Transport::Multicast);
    assert_eq!(c.servers.iter().map(|s| s.id).collect::<Vec<_>>(), vec![Pid(1), Pid(2), Pid(3)]);
    for role in Role::ALL {
        assert_eq!(c.servers_with(role).count(), 3, "{role}");
    }
    let base = path.parent().unwrap();
    assert_eq!(c.server_dir(&c.servers[0]), base.join("data/server-1"));
    assert_eq!(c.server_dir(&c.servers[1]), base.join("data/server-2"));
    c.core().validate().unwrap();
    assert_eq!(c.security.mode, SecurityMode::Encrypt);
    assert_eq!(c.security.server_key, Some(base.join("keys/server.key")), "key files are relative to the file");
    assert_eq!(c.security.checkpoint_key, Some(base.join("keys/checkpoint.key")));
    assert_eq!(c.security.member_key, Some(base.join("keys/member-app.key")));
    assert!(c.security.revoked.is_empty());
}

/// The example shows every protocol key at its default; this keeps it from drifting.
#[test]
fn the_example_shows_the_protocol_defaults() {
    let c = ClusterConfig::load(&example_path()).unwrap();
    assert_eq!(c.protocol, ProtocolConfig::default());
}

#[test]
fn a_local_cluster_written_to_a_file_loads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let c = ClusterConfig::local(3, 2, 17_400, dir.path());
    let path = dir.path().join("sam.toml");
    std::fs::write(&path, c.to_toml_string().unwrap()).unwrap();
    assert_eq!(ClusterConfig::load(&path).unwrap(), c);
}

#[test]
fn relative_directories_are_relative_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ClusterConfig::local(3, 0, 17_400, Path::new("unused"));
    c.storage.dir = PathBuf::from("state");
    c.servers[2].dir = Some(PathBuf::from("elsewhere/three"));
    let path = dir.path().join("sam.toml");
    std::fs::write(&path, c.to_toml_string().unwrap()).unwrap();
    let loaded = ClusterConfig::load(&path).unwrap();
    assert_eq!(loaded.server_dir(&loaded.servers[0]), dir.path().join("state/server-1"));
    assert_eq!(loaded.server_dir(&loaded.servers[2]), dir.path().join("elsewhere/three"));
    c.servers[2].dir = Some(PathBuf::new());
    std::fs::write(&path, c.to_toml_string().unwrap()).unwrap();
    let e = ClusterConfig::load(&path).unwrap_err();
    assert!(matches!(e, ConfigError::EmptyDir { .. }), "{e}");
}

#[test]
fn a_missing_file_is_named() {
    let path = Path::new("/nonexistent/sam.toml");
    let e = ClusterConfig::load(path).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/sam.toml"), "{e}");
}

#[test]
fn a_local_cluster_with_keys_loads_back_and_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ClusterConfig::local(3, 2, 17_400, dir.path());
    c.with_local_keys(dir.path()).unwrap();
    let path = dir.path().join("sam.toml");
    std::fs::write(&path, c.to_toml_string().unwrap()).unwrap();
    let loaded = ClusterConfig::load(&path).unwrap();
    assert_eq!(loaded, c);
    let ring = loaded.keyring(KeyUser::Member).unwrap().expect("security is on");
    assert_eq!(ring.cluster, c.cluster_id);
}

#[test]
fn a_key_file_others_can_read_is_refused_by_keyring_naming_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut c = ClusterConfig::local(3, 2, 17_400, dir.path());
    c.with_local_keys(dir.path()).unwrap();
    let server_key = c.security.server_key.clone().unwrap();
    std::fs::set_permissions(&server_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = c.keyring(KeyUser::Server { checkpoint_only: false }).unwrap_err();
    let message = e.to_string();
    assert!(message.starts_with("security.server_key: "), "{message}");
    assert!(message.contains(&format!("chmod 600 {}", server_key.display())), "{message}");
}
