//! Where the proxy may connect: the destination policy (`access.destinations`).
//!
//! Checked on every address chacha is about to connect to for a client (after DNS
//! resolution, in the upstream connect path and for blind tunnels), never on the name
//! in the request: a name that resolves to a denied address (DNS rebinding included)
//! is refused like the address itself, and an address is normalised (IPv4-mapped IPv6
//! is the IPv4 address it carries) before any range is compared. Cluster peers are
//! exempt: their addresses come from the config, not from clients.
//!
//! Precedence, first match wins:
//! 1. chacha's own listening addresses (always denied: a request to them loops back
//!    into the proxy, or reaches the KV port, which is for peers);
//! 2. `access.destinations.deny` (denied);
//! 3. `access.destinations.allow` (allowed: re-allows ranges denied by default);
//! 4. the default deny list [`DEFAULT_DENY`] (denied);
//! 5. everything else, private ranges included (allowed).
//!
//! The defaults follow what Squid ships (`http_access deny to_localhost`, and its
//! `to_linklocal` ACL) and what cloud hardening guides require of any proxy: loopback
//! (the proxy host's own services), link-local (cloud metadata services such as
//! 169.254.169.254 live there), the unspecified addresses (`0.0.0.0` connects to the
//! local host on Linux), multicast and broadcast (never a TCP origin). Private ranges
//! (RFC 1918, RFC 4193) stay allowed: registries and caches on the LAN are common.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::cidr::{Cidr, CidrList};

/// Ranges denied unless `access.destinations.allow` lists them, with what they are.
pub const DEFAULT_DENY: &[(&str, &str)] = &[
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("0.0.0.0/8", "unspecified"),
    ("::/128", "unspecified"),
    ("224.0.0.0/4", "multicast"),
    ("ff00::/8", "multicast"),
    ("255.255.255.255/32", "broadcast"),
];

/// Why a destination is refused; its text is the one-line reason of the `403`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// One of chacha's own listening addresses.
    Own(SocketAddr),
    /// In `access.destinations.deny`.
    Configured { ip: IpAddr, range: Cidr },
    /// In [`DEFAULT_DENY`] and not re-allowed.
    Default {
        ip: IpAddr,
        range: Cidr,
        what: &'static str,
    },
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::Own(addr) => write!(
                f,
                "destination {addr} is chacha's own listening address (always denied: the request would loop back into the proxy)"
            ),
            Denial::Configured { ip, range } => write!(
                f,
                "destination {ip} is in access.destinations.deny ({range})"
            ),
            Denial::Default { ip, range, what } => write!(
                f,
                "destination {ip} is {what} (denied by default; allow with access.destinations.allow: [{range}])"
            ),
        }
    }
}

/// The destination policy; one per process, shared by all cores (read-only).
#[derive(Debug, Clone)]
pub struct Destinations {
    allow: CidrList,
    deny: CidrList,
    defaults: Vec<(Cidr, &'static str)>,
    /// The proxy's own listeners (the bound addresses, port 0 resolved).
    own: Vec<SocketAddr>,
    /// The host's interface addresses, for listeners on the unspecified address.
    local_ips: Vec<IpAddr>,
}

impl Default for Destinations {
    /// The defaults, with nothing configured.
    fn default() -> Self {
        Destinations::new(CidrList::default(), CidrList::default())
    }
}

impl Destinations {
    /// The policy of `access.destinations.allow` / `deny` over the defaults.
    pub fn new(allow: CidrList, deny: CidrList) -> Destinations {
        Destinations {
            allow,
            deny,
            defaults: DEFAULT_DENY
                .iter()
                .map(|(range, what)| (range.parse().expect("a valid built-in range"), *what))
                .collect(),
            own: Vec::new(),
            local_ips: Vec::new(),
        }
    }

    /// No restriction at all (library users and unit tests that build an upstream
    /// client by hand; the server always installs the configured policy).
    pub fn allow_all() -> Destinations {
        Destinations {
            defaults: Vec::new(),
            ..Destinations::default()
        }
    }

    /// Adds the proxy's own listening addresses (bound, so port 0 is resolved) and the
    /// host's interface addresses: a listener on `0.0.0.0:P` (or `[::]:P`) is reached
    /// through any of them, through loopback and through the unspecified address, with
    /// port P, so all of those are denied with port P.
    pub fn with_own(mut self, listeners: &[SocketAddr], local_ips: Vec<IpAddr>) -> Destinations {
        self.own.extend(
            listeners
                .iter()
                .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port())),
        );
        self.local_ips = local_ips.into_iter().map(|ip| ip.to_canonical()).collect();
        self
    }

    /// The decision for a connection to `addr`.
    pub fn check(&self, addr: SocketAddr) -> Result<(), Denial> {
        let ip = addr.ip().to_canonical();
        if self.is_own(ip, addr.port()) {
            return Err(Denial::Own(SocketAddr::new(ip, addr.port())));
        }
        if let Some(range) = self.deny.find(ip) {
            return Err(Denial::Configured { ip, range: *range });
        }
        if self.allow.contains(ip) {
            return Ok(());
        }
        match self.defaults.iter().find(|(range, _)| range.contains(ip)) {
            Some((range, what)) => Err(Denial::Default {
                ip,
                range: *range,
                what,
            }),
            None => Ok(()),
        }
    }

    fn is_own(&self, ip: IpAddr, port: u16) -> bool {
        self.own.iter().any(|own| {
            if own.port() != port {
                return false;
            }
            let listen = own.ip();
            // The unspecified destination connects to the local host (Linux), and
            // loopback reaches a listener on any loopback or unspecified address.
            ip == listen
                || ip.is_unspecified()
                || (ip.is_loopback() && (listen.is_loopback() || listen.is_unspecified()))
                || (listen.is_unspecified() && self.local_ips.contains(&ip))
        })
    }
}

/// The addresses of this host's interfaces (getifaddrs(3)); empty if it fails.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; each entry's address
    // is read according to its family, with the struct of that family.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(sa as *const libc::sockaddr_in);
                        out.push(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(sa as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn decide(p: &Destinations, addr: &str) -> String {
        match p.check(sa(addr)) {
            Ok(()) => "allow".into(),
            Err(d) => d.to_string(),
        }
    }

    /// Pure decisions only: no traffic is ever sent to these addresses.
    #[test]
    fn defaults_table() {
        let p = Destinations::default();
        let cases = [
            ("127.0.0.1:80", "loopback"),
            ("127.255.255.254:80", "loopback"),
            ("[::1]:80", "loopback"),
            ("[::ffff:127.0.0.1]:80", "loopback"),
            ("169.254.169.254:80", "link-local"),
            ("169.254.0.1:443", "link-local"),
            ("[fe80::1]:80", "link-local"),
            ("[febf::1]:80", "link-local"),
            ("[::ffff:169.254.169.254]:80", "link-local"),
            ("0.0.0.0:80", "unspecified"),
            ("0.1.2.3:80", "unspecified"),
            ("[::]:80", "unspecified"),
            ("224.0.0.1:80", "multicast"),
            ("239.255.255.250:80", "multicast"),
            ("[ff02::1]:80", "multicast"),
            ("255.255.255.255:80", "broadcast"),
            // Allowed by default: private ranges, shared space, public addresses.
            ("10.0.0.1:80", "allow"),
            ("172.16.0.1:80", "allow"),
            ("192.168.1.1:80", "allow"),
            ("100.64.0.1:80", "allow"),
            ("[fd00::1]:80", "allow"),
            ("203.0.113.9:443", "allow"),
            ("[2001:db8::1]:443", "allow"),
            ("128.0.0.1:80", "allow"),
            ("169.255.0.1:80", "allow"),
            ("[fec0::1]:80", "allow"),
            ("240.0.0.1:80", "allow"),
        ];
        for (addr, want) in cases {
            let got = decide(&p, addr);
            if want == "allow" {
                assert_eq!(got, "allow", "{addr}");
            } else {
                assert!(
                    got.contains(&format!(" is {want} (denied by default")),
                    "{addr}: {got}"
                );
            }
        }
    }

    #[test]
    fn denial_names_the_rule_and_the_line_that_allows_it() {
        let p = Destinations::default();
        assert_eq!(
            decide(&p, "127.0.0.1:8080"),
            "destination 127.0.0.1 is loopback (denied by default; allow with access.destinations.allow: [127.0.0.0/8])"
        );
        assert_eq!(
            decide(&p, "[::ffff:169.254.169.254]:80"),
            "destination 169.254.169.254 is link-local (denied by default; allow with access.destinations.allow: [169.254.0.0/16])"
        );
        assert_eq!(
            decide(&p, "[fe80::1]:80"),
            "destination fe80::1 is link-local (denied by default; allow with access.destinations.allow: [fe80::/10])"
        );
    }

    #[test]
    fn precedence_deny_then_allow_then_defaults() {
        let p = Destinations::new(
            CidrList::of(&["127.0.0.0/8", "10.0.0.0/8"]),
            CidrList::of(&["127.0.0.99/32", "10.1.0.0/16", "192.168.7.0/24"]),
        );
        assert_eq!(decide(&p, "127.0.0.1:80"), "allow");
        assert_eq!(decide(&p, "[::ffff:127.0.0.2]:80"), "allow");
        assert_eq!(
            decide(&p, "127.0.0.99:80"),
            "destination 127.0.0.99 is in access.destinations.deny (127.0.0.99/32)"
        );
        assert_eq!(decide(&p, "10.2.0.1:80"), "allow");
        assert!(decide(&p, "10.1.0.1:80").contains("access.destinations.deny (10.1.0.0/16)"));
        assert!(decide(&p, "192.168.7.9:80").contains("deny (192.168.7.0/24)"));
        assert_eq!(decide(&p, "192.168.8.9:80"), "allow");
        // Re-allowing loopback re-allows only loopback.
        assert!(decide(&p, "[::1]:80").contains("loopback"));
        assert!(decide(&p, "169.254.169.254:80").contains("link-local"));
        // Allowing everything still leaves a configured deny in force.
        let open = Destinations::new(
            CidrList::of(&["0.0.0.0/0", "::/0"]),
            CidrList::of(&["169.254.169.254/32"]),
        );
        assert_eq!(decide(&open, "169.254.0.1:80"), "allow");
        assert!(decide(&open, "169.254.169.254:80").contains("deny"));
    }

    #[test]
    fn own_listening_address_is_denied_even_when_allowed() {
        let allow_all =
            || Destinations::new(CidrList::of(&["0.0.0.0/0", "::/0"]), CidrList::default());
        let p = allow_all().with_own(&[sa("127.0.0.1:8080")], vec![]);
        for own in [
            "127.0.0.1:8080",
            "127.0.0.2:8080",
            "[::ffff:127.0.0.1]:8080",
            "0.0.0.0:8080",
            "[::1]:8080",
        ] {
            assert!(
                decide(&p, own).contains("chacha's own listening address"),
                "{own}: {}",
                decide(&p, own)
            );
        }
        assert_eq!(decide(&p, "127.0.0.1:8081"), "allow");
        assert_eq!(decide(&p, "10.0.0.1:8080"), "allow");
        // A listener on a LAN address: that address with that port.
        let p = allow_all().with_own(&[sa("10.0.0.1:8080")], vec![]);
        assert!(decide(&p, "10.0.0.1:8080").contains("own"));
        assert_eq!(decide(&p, "10.0.0.2:8080"), "allow");
        assert_eq!(decide(&p, "127.0.0.1:8080"), "allow");
        // A listener on every interface: every local address, loopback, unspecified.
        let p = allow_all().with_own(
            &[sa("0.0.0.0:3128")],
            vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
        );
        for own in [
            "10.0.0.5:3128",
            "[fd00::5]:3128",
            "127.0.0.1:3128",
            "[::1]:3128",
            "0.0.0.0:3128",
            "[::ffff:10.0.0.5]:3128",
        ] {
            assert!(decide(&p, own).contains("own"), "{own}");
        }
        assert_eq!(decide(&p, "10.0.0.6:3128"), "allow");
        assert_eq!(decide(&p, "10.0.0.5:3129"), "allow");
    }

    #[test]
    fn allow_all_has_no_defaults() {
        assert_eq!(decide(&Destinations::allow_all(), "127.0.0.1:80"), "allow");
    }

    /// Cost of one decision (paid once per new origin connection, never on a pooled
    /// one). `cargo test --release --lib check_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing report, not a check"]
    fn check_cost() {
        let p = Destinations::new(
            CidrList::of(&["127.0.0.0/8"]),
            CidrList::of(&["192.168.7.0/24"]),
        )
        .with_own(&[sa("0.0.0.0:8080")], local_addresses());
        let addrs = [
            sa("203.0.113.9:443"),
            sa("[2001:db8::1]:443"),
            sa("127.0.0.1:80"),
        ];
        let n = 3_000_000u32;
        let t = std::time::Instant::now();
        let mut allowed = 0;
        for i in 0..n {
            allowed += p
                .check(std::hint::black_box(addrs[(i % 3) as usize]))
                .is_ok() as u32;
        }
        println!(
            "Destinations::check: {:?} per decision ({allowed} allowed)",
            t.elapsed() / n
        );
        let t = std::time::Instant::now();
        for _ in 0..n / 10 {
            std::hint::black_box(crate::http::uri::parse_absolute(std::hint::black_box(
                "http://registry.example:5000/v2/x/blobs/sha256:0123",
            )))
            .unwrap();
        }
        println!(
            "parse_absolute (with host normalisation): {:?}",
            t.elapsed() / (n / 10)
        );
    }

    #[test]
    fn local_addresses_include_loopback() {
        let ips = local_addresses();
        assert!(ips.iter().any(|ip| ip.is_loopback()), "{ips:?}");
    }
}
