//! Helpers for the access-control tests: client sockets from a chosen loopback source
//! address, and htpasswd entries as `htpasswd -B` writes them.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};

/// A TCP connection to `dst` from `src` (any 127.0.0.0/8 address works on Linux's
/// loopback), so one test can be two clients.
pub fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> io::Result<TcpStream> {
    let SocketAddr::V4(dst) = dst else {
        return Err(io::Error::other("IPv4 destinations only"));
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket(2); the descriptor is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let stream = TcpStream::from(fd);
    use std::os::fd::AsRawFd;
    let src = sockaddr(src, 0);
    // SAFETY: bind(2) with a sockaddr_in of the stated size.
    if unsafe {
        libc::bind(
            stream.as_raw_fd(),
            (&src as *const libc::sockaddr_in).cast(),
            len,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    let dst = sockaddr(*dst.ip(), dst.port());
    // SAFETY: connect(2) on a blocking socket with a sockaddr_in of the stated size.
    if unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&dst as *const libc::sockaddr_in).cast(),
            len,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// A `user:hash` line as `htpasswd -B` writes it (`$2y$`), at bcrypt's lowest cost so
/// tests stay fast.
pub fn htpasswd_line(user: &str, password: &str) -> String {
    let hash = bcrypt::hash(password, 4).expect("bcrypt");
    format!("{user}:{}\n", hash.replacen("$2b$", "$2y$", 1))
}

/// `Proxy-Authorization: Basic base64(user:password)` (RFC 7617).
pub fn proxy_authorization(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Proxy-Authorization: Basic {token}")
}
