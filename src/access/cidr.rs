//! Address ranges in CIDR notation (RFC 4632 for IPv4, RFC 4291 §2.3 for IPv6) and the
//! prefix match that every access check uses: `access.clients`, `access.destinations`.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2) are the IPv4
//! address they carry: a dual-stack socket reports an IPv4 client as one, and an
//! origin written as `[::ffff:127.0.0.1]` reaches 127.0.0.1. Both addresses and
//! ranges are normalised to IPv4 first, so a v4 range matches either spelling.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// One address range: an address with all bits past `prefix` zero, and the prefix
/// length (0..=32 for IPv4, 0..=128 for IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// `ip` with an IPv4-mapped IPv6 address turned into the IPv4 address it carries.
pub fn normalize(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl Cidr {
    /// The range of `addr`/`prefix`; `None` when the prefix is too long for the family or
    /// `addr` has bits set past the prefix. An IPv4-mapped IPv6 range of prefix 96 or
    /// more becomes the IPv4 range it covers.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        if prefix > max_prefix(addr) || mask(addr, prefix) != addr {
            return None;
        }
        Some(Cidr { addr, prefix })
    }

    /// The single address `ip` (/32 or /128).
    pub fn host(ip: IpAddr) -> Cidr {
        let ip = normalize(ip);
        Cidr {
            addr: ip,
            prefix: max_prefix(ip),
        }
    }

    /// The first address of the range.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` (normalised first, see [`normalize`]) lies in the range. A range
    /// matches only addresses of its own family.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = normalize(ip);
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.addr
            }
            _ => false,
        }
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `ip` with every bit past the first `prefix` cleared (`prefix` at most the family's).
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let keep = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep))
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep))
        }
    }
}

/// Why a range does not parse; the text is the config problem's one-line message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(pub String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CidrError {}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `10.0.0.0/8`, `fc00::/7`, or a bare address (`127.0.0.1`, `::1`) for a single
    /// host. Strict, like the config's other keys: only dotted-quad IPv4 (no octal, hex
    /// or shortened forms), and no bits set past the prefix (`10.1.0.0/8` is a typo for
    /// `10.0.0.0/8` or `10.1.0.0/16`, so it is refused with both named).
    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let t = text.trim();
        let (addr_text, prefix_text) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (t, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            CidrError(format!(
                "invalid address range {text:?}: expected e.g. 10.0.0.0/8, fd00::/8 or 127.0.0.1"
            ))
        })?;
        let prefix = match prefix_text {
            None => max_prefix(addr),
            Some(p) => match p.parse::<u8>() {
                Ok(n) if !p.starts_with('+') && n <= max_prefix(addr) => n,
                _ => {
                    return Err(CidrError(format!(
                        "invalid prefix length in {text:?}: expected 0-{} after the /",
                        max_prefix(addr)
                    )))
                }
            },
        };
        Cidr::new(addr, prefix).ok_or_else(|| {
            let base = mask(addr, prefix);
            CidrError(format!(
                "{text:?} has bits set past the /{prefix} prefix: write {base}/{prefix} for the whole range, or a longer prefix"
            ))
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A list of ranges, checked in order; cheap enough for every accept (a linear scan of
/// a handful of prefixes: a mask and a compare each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

impl CidrList {
    /// Parses every entry of `ranges` (for built-in lists; panics on a bad literal).
    pub fn of(ranges: &[&str]) -> CidrList {
        CidrList(
            ranges
                .iter()
                .map(|r| r.parse().unwrap_or_else(|e| panic!("{e}")))
                .collect(),
        )
    }

    /// The first range that holds `ip`, if any.
    pub fn find(&self, ip: IpAddr) -> Option<&Cidr> {
        let ip = normalize(ip);
        self.0.iter().find(|c| c.contains(ip))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.find(ip).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Cidr> {
        self.0.iter()
    }
}

impl fmt::Display for CidrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_ranges() {
        let cases = [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("127.0.0.1", "127.0.0.1/32"),
            (" 192.168.0.0/16 ", "192.168.0.0/16"),
            ("::/0", "::/0"),
            ("::1", "::1/128"),
            ("fc00::/7", "fc00::/7"),
            ("fe80::/10", "fe80::/10"),
            ("2001:db8::/32", "2001:db8::/32"),
            // IPv4-mapped ranges are the IPv4 ranges they cover.
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:127.0.0.1", "127.0.0.1/32"),
            ("::ffff:0:0/96", "0.0.0.0/0"),
        ];
        for (text, want) in cases {
            let c: Cidr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(c.to_string(), want, "{text}");
        }
    }

    #[test]
    fn refuses_malformed_ranges() {
        let cases = [
            ("", "invalid address range"),
            ("10.0.0.0/", "invalid prefix length"),
            ("10.0.0.0/33", "expected 0-32"),
            ("10.0.0.0/+8", "invalid prefix length"),
            ("10.0.0.0/-1", "invalid prefix length"),
            ("::/129", "expected 0-128"),
            ("10.0.0/8", "invalid address range"),
            ("010.0.0.0/8", "invalid address range"),
            ("0x0a.0.0.0/8", "invalid address range"),
            ("167772160/8", "invalid address range"),
            ("localhost", "invalid address range"),
            ("10.0.0.0/8/8", "invalid prefix length"),
            ("[::1]/128", "invalid address range"),
            ("10.1.0.0/8", "write 10.0.0.0/8"),
            ("192.168.1.1/16", "write 192.168.0.0/16"),
            ("fc00::1/7", "write fc00::/7"),
        ];
        for (text, needle) in cases {
            match text.parse::<Cidr>() {
                Ok(c) => panic!("{text:?} parsed as {c}"),
                Err(e) => assert!(e.0.contains(needle), "{text:?}: {e} lacks {needle:?}"),
            }
        }
    }

    #[test]
    fn prefix_match_table() {
        // (range, address, contained)
        let cases = [
            ("10.0.0.0/8", "10.0.0.0", true),
            ("10.0.0.0/8", "10.255.255.255", true),
            ("10.0.0.0/8", "11.0.0.0", false),
            ("10.0.0.0/8", "9.255.255.255", false),
            ("172.16.0.0/12", "172.31.255.255", true),
            ("172.16.0.0/12", "172.32.0.0", false),
            ("172.16.0.0/12", "172.15.255.255", false),
            ("100.64.0.0/10", "100.127.0.1", true),
            ("100.64.0.0/10", "100.128.0.1", false),
            ("127.0.0.1/32", "127.0.0.1", true),
            ("127.0.0.1/32", "127.0.0.2", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "255.255.255.255", true),
            // Families do not mix, except through the IPv4-mapped form.
            ("0.0.0.0/0", "::1", false),
            ("::/0", "127.0.0.1", false),
            ("::/0", "2001:db8::1", true),
            ("127.0.0.0/8", "::ffff:127.0.0.1", true),
            ("127.0.0.0/8", "::ffff:128.0.0.1", false),
            ("::ffff:127.0.0.0/104", "127.9.9.9", true),
            ("::1/128", "::1", true),
            ("::1/128", "::2", false),
            ("fc00::/7", "fd12:3456::1", true),
            ("fc00::/7", "fe00::1", false),
            ("fe80::/10", "fe80::1", true),
            ("fe80::/10", "febf:ffff::1", true),
            ("fe80::/10", "fec0::1", false),
            ("2001:db8::/127", "2001:db8::1", true),
            ("2001:db8::/127", "2001:db8::2", false),
        ];
        for (range, addr, want) in cases {
            let c: Cidr = range.parse().unwrap();
            assert_eq!(c.contains(ip(addr)), want, "{range} contains {addr}");
        }
    }

    #[test]
    fn host_ranges_and_lists() {
        assert_eq!(Cidr::host(ip("::ffff:10.1.2.3")).to_string(), "10.1.2.3/32");
        assert_eq!(Cidr::host(ip("::1")).to_string(), "::1/128");
        let list = CidrList::of(&["10.0.0.0/8", "127.0.0.0/8", "10.1.0.0/16"]);
        assert_eq!(
            list.find(ip("10.1.2.3")).map(Cidr::to_string).as_deref(),
            Some("10.0.0.0/8"),
            "the first matching range"
        );
        assert!(list.contains(ip("::ffff:127.0.0.1")));
        assert!(!list.contains(ip("192.168.0.1")));
        assert!(!CidrList::default().contains(ip("127.0.0.1")));
        assert_eq!(list.to_string(), "[10.0.0.0/8, 127.0.0.0/8, 10.1.0.0/16]");
    }
}
