//! Batched system calls (DESIGN section 7): on Linux one `sendmmsg(2)` sends every datagram
//! of a flush and one `recvmmsg(2)` takes every datagram waiting, up to a batch; elsewhere one
//! call per datagram. Reads never wait: the caller waits for readiness.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The most datagrams one system call sends or receives (Linux's `UIO_MAXIOV` is 1024).
pub const BATCH_DATAGRAMS: usize = 64;

/// What became of a flush's datagrams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams the system took.
    pub sent: u64,
    /// Datagrams it refused (each is a lost datagram to the protocol).
    pub refused: u64,
    /// System calls that sent datagrams.
    pub calls: u64,
}

/// Sends every datagram, waiting while the socket buffer is full; one the system refuses is
/// counted and skipped.
pub async fn send_all(socket: &UdpSocket, datagrams: &[(SocketAddrV4, &[u8])]) -> Sent {
    let mut outcome = Sent::default();
    let mut next = 0;
    while next < datagrams.len() {
        let batch = &datagrams[next..datagrams.len().min(next + BATCH_DATAGRAMS)];
        match socket.try_io(Interest::WRITABLE, || send_batch(socket, batch)) {
            Ok(n) => {
                outcome.sent += n as u64;
                outcome.calls += 1;
                next += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if socket.writable().await.is_err() {
                    outcome.refused += (datagrams.len() - next) as u64;
                    return outcome;
                }
            }
            Err(_) => {
                // The first datagram of the batch was refused (the others are sent next).
                outcome.refused += 1;
                next += 1;
            }
        }
    }
    outcome
}

#[cfg(target_os = "linux")]
fn send_batch(socket: &UdpSocket, batch: &[(SocketAddrV4, &[u8])]) -> io::Result<usize> {
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrIn};

    let slices: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|(_, bytes)| [IoSlice::new(bytes)]).collect();
    let addrs: Vec<Option<SockaddrIn>> = batch.iter().map(|(addr, _)| Some(SockaddrIn::from(*addr))).collect();
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(batch.len(), None);
    let sent = sendmmsg(socket.as_raw_fd(), &mut headers, &slices, &addrs, [], MsgFlags::MSG_DONTWAIT)?;
    Ok(sent.count())
}

#[cfg(target_os = "linux")]
pub(crate) fn recv_batch(
    socket: &UdpSocket,
    bufs: &mut [Vec<u8>],
    got: &mut Vec<(usize, SocketAddr)>,
) -> io::Result<()> {
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrIn};

    let mut slices: Vec<[IoSliceMut<'_>; 1]> = bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(slices.len(), None);
    let received = recvmmsg(socket.as_raw_fd(), &mut headers, slices.iter_mut(), MsgFlags::MSG_DONTWAIT, None)?;
    for msg in received {
        // A datagram longer than its buffer is cut short: its length says so (it fills it).
        let len = if msg.flags.contains(MsgFlags::MSG_TRUNC) { usize::MAX } else { msg.bytes };
        if let Some(addr) = msg.address {
            got.push((len, SocketAddr::V4(SocketAddrV4::new(addr.ip(), addr.port()))));
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn send_batch(socket: &UdpSocket, batch: &[(SocketAddrV4, &[u8])]) -> io::Result<usize> {
    let (addr, bytes) = batch[0];
    socket.try_send_to(bytes, SocketAddr::V4(addr)).map(|_| 1)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn recv_batch(
    socket: &UdpSocket,
    bufs: &mut [Vec<u8>],
    got: &mut Vec<(usize, SocketAddr)>,
) -> io::Result<()> {
    let (len, addr) = socket.try_recv_from(&mut bufs[0])?;
    got.push((len, addr));
    Ok(())
}
