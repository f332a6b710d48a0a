//! The address a client on this machine reaches a listener at.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `addr` with a wildcard IP (`0.0.0.0`, `::`) replaced by loopback: a listener bound to every
/// interface is reached on loopback, not at the wildcard address.
pub(crate) fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}
