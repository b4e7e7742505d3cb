//! Opening the sockets: one unicast socket a process sends everything from, and one socket per
//! multicast channel it listens to (DESIGN section 7).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

/// Socket buffers sized for bursts: a sequencer's commits or a data server's answers to many
/// members arrive faster than one event-loop turn drains them.
pub const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// An IP multicast group a channel travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Group {
    /// The group address and port.
    pub addr: SocketAddrV4,
    /// The interface to send and join on (127.0.0.1 on one host).
    pub interface: Ipv4Addr,
    /// Hops a datagram may take (1: the local network).
    pub ttl: u32,
}

fn udp() -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // The kernel may grant less than asked: that only costs drops under bursts.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn into_tokio(socket: Socket) -> io::Result<UdpSocket> {
    UdpSocket::from_std(StdUdpSocket::from(socket))
}

/// The socket a process sends from and takes unicast on, bound to `addr` (port 0: any). Its
/// multicasts leave by `multicast` (interface and TTL) and loop back to this host, so that
/// processes on one host hear each other and a sender hears its own channel.
pub fn unicast(addr: SocketAddrV4, multicast: Option<&Group>) -> io::Result<UdpSocket> {
    let socket = udp()?;
    socket.bind(&SocketAddr::V4(addr).into())?;
    if let Some(group) = multicast {
        socket.set_multicast_if_v4(&group.interface)?;
        socket.set_multicast_ttl_v4(group.ttl)?;
        socket.set_multicast_loop_v4(true)?;
    }
    into_tokio(socket)
}

/// A socket that hears `group`. Bound to the group address itself, so that it hears no other
/// group on the same port; shared with the other processes of this host that listen too.
pub fn listener(group: &Group) -> io::Result<UdpSocket> {
    let socket = udp()?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.bind(&SocketAddr::V4(group.addr).into())?;
    socket.join_multicast_v4(group.addr.ip(), &group.interface)?;
    socket.set_multicast_loop_v4(true)?;
    into_tokio(socket)
}
