//! The few file-system calls std does not offer at our minimum Rust version: locking the log
//! directory against a second process, and reserving a segment's blocks up front.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use crate::error::StoreError;
use crate::format::LOCK_FILE;

/// Holds the log directory's lock file locked; the lock is released when this is dropped (or the
/// process dies), so a crashed server's successor never finds a stale lock.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

/// Takes the exclusive lock on `dir`, failing at once with [`StoreError::Locked`] if another
/// process (or another open log in this one) holds it.
pub(crate) fn lock_dir(dir: &Path) -> Result<DirLock, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = std::os::unix::fs::OpenOptionsExt::mode(&mut OpenOptions::new(), 0o600)
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::io("open", &path, source))?;
    try_lock(&file).map_err(|source| match source.kind() {
        io::ErrorKind::WouldBlock => StoreError::Locked(dir.to_path_buf()),
        _ => StoreError::io("flock", &path, source),
    })?;
    Ok(DirLock { _file: file })
}

#[cfg(unix)]
fn try_lock(file: &File) -> io::Result<()> {
    use rustix::fs::{flock, FlockOperation};
    flock(file, FlockOperation::NonBlockingLockExclusive).map_err(io::Error::from)
}

#[cfg(not(unix))]
fn try_lock(_file: &File) -> io::Result<()> {
    Ok(())
}

/// Extends `file` to `len_bytes` with blocks reserved and reading as zeros, so that appends
/// inside it change neither the file size nor (on Linux) the allocation, and `fdatasync` has
/// less metadata to write.
#[cfg(target_os = "linux")]
pub(crate) fn preallocate(file: &File, len_bytes: u64) -> io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    fallocate(file, FallocateFlags::empty(), 0, len_bytes).map_err(io::Error::from)
}

/// Extends `file` to `len_bytes`, reading as zeros (a sparse file where `fallocate` is missing).
#[cfg(not(target_os = "linux"))]
pub(crate) fn preallocate(file: &File, len_bytes: u64) -> io::Result<()> {
    file.set_len(len_bytes)
}

/// Makes the directory's entries (files created, renamed or removed) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let sync = |dir: &Path| File::open(dir)?.sync_all();
    sync(dir).map_err(|source| StoreError::io("fsync directory", dir, source))
}
