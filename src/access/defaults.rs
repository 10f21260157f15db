//! The access defaults (a leaf: `config` reads them without depending on `access`).

/// `access.clients` when absent: loopback and the private ranges CI runners live on.
/// RFC 1918 (10/8, 172.16/12, 192.168/16), RFC 6598 shared address space (100.64/10,
/// carrier-grade NAT and some cloud VPCs), RFC 4193 unique local IPv6 (fc00::/7), and
/// link-local (169.254/16, fe80::/10; RFC 3927, RFC 4291 §2.5.6), where VMs on a host
/// bridge often sit. Everything else must be listed.
pub const DEFAULT_CLIENTS: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "169.254.0.0/16",
    "fe80::/10",
];

/// `access.limits.connections` when absent (then also capped by the file descriptors
/// the process may open: see the server's startup).
pub const DEFAULT_CONNECTIONS: usize = 10_000;
/// `access.limits.connections-per-client` when absent.
pub const DEFAULT_CONNECTIONS_PER_CLIENT: usize = 500;
/// Sanity bound on either limit.
pub const MAX_CONNECTIONS: usize = 10_000_000;
