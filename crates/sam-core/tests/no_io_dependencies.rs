//! The protocol core stays sans-IO (DESIGN section 8): its dependency tree holds no async
//! runtime and no socket crate.

use std::process::Command;

#[test]
fn the_core_depends_on_no_async_runtime_or_socket_crate() {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "-p", "sam-core", "--edges", "normal", "--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8(output.stdout).expect("cargo tree prints UTF-8");
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(crates.contains(&"sam-core") && crates.contains(&"bytes"), "the tree was read: {crates:?}");
    for banned in ["tokio", "async-std", "smol", "mio", "socket2", "libc"] {
        assert!(!crates.contains(&banned), "sam-core depends on {banned}: {crates:?}");
    }
}
