//! Request targets a forward proxy acts on: absolute-form `http://host[:port]/path?q`
//! (RFC 9112 §3.2.2) and authority-form `host:port` for CONNECT (RFC 9112 §3.2.3).
//! Host syntax is RFC 3986 §3.2.2.

use super::head::HeadError;

/// Longest port we accept in text: `65535`.
const MAX_PORT_DIGITS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// RFC 9110 §4.2.1 / §4.2.2.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub scheme: Scheme,
    /// Lowercase reg-name, IPv4 literal, or IPv6 literal without brackets.
    pub host: String,
    /// As given; `None` when absent or empty (`host:`).
    pub port: Option<u16>,
    /// Starts with `/`; the fragment is stripped.
    pub path_and_query: String,
}

impl Uri {
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(self.scheme.default_port())
    }

    /// `host[:port]`, the IPv6 literal bracketed, the port only when it was given.
    pub fn authority(&self) -> String {
        self.authority_fmt().to_string()
    }

    /// [`Uri::authority`] as something to format into a buffer, without allocating.
    pub fn authority_fmt(&self) -> Authority<'_> {
        Authority(self)
    }

    /// `scheme://authority/path?q`.
    pub fn to_url_string(&self) -> String {
        format!(
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority_fmt(),
            self.path_and_query
        )
    }
}

/// `host[:port]`, an IPv6 host in brackets (RFC 3986 §3.2.2).
pub struct Authority<'a>(&'a Uri);

impl std::fmt::Display for Authority<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uri = self.0;
        if uri.host.contains(':') {
            write!(f, "[{}]", uri.host)?;
        } else {
            f.write_str(&uri.host)?;
        }
        match uri.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

fn malformed(why: impl Into<String>) -> HeadError {
    HeadError::Malformed(why.into())
}

/// Parses an absolute-form target (RFC 9112 §3.2.2) with scheme `http` or `https`.
pub fn parse_absolute(target: &str) -> Result<Uri, HeadError> {
    let (scheme, rest) = target
        .split_once("://")
        .ok_or_else(|| malformed("not an absolute URI"))?;
    let scheme = if scheme.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else if scheme.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else {
        return Err(malformed(format!("unsupported scheme {scheme:?}")));
    };
    // The authority ends at the first of "/", "?" or "#" (RFC 3986 §3.2).
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let (host, port) = parse_host_port(authority)?;
    // The fragment is never sent (RFC 9110 §4.2.5); drop it.
    let tail = tail.split_once('#').map_or(tail, |(before, _)| before);
    if tail.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(malformed("whitespace or control in URI path"));
    }
    // RFC 9110 §4.2.3: an empty path is normalised to "/".
    let path_and_query = if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    };
    Ok(Uri {
        scheme,
        host,
        port,
        path_and_query,
    })
}

/// Parses a CONNECT authority-form target `host:port` or `[v6]:port`
/// (RFC 9112 §3.2.3: the port is required).
pub fn parse_authority(s: &str) -> Result<(String, u16), HeadError> {
    match parse_host_port(s)? {
        (host, Some(port)) => Ok((host, port)),
        (_, None) => Err(malformed("CONNECT target without a port")),
    }
}

/// `host [ ":" port ]` without userinfo; host lowercased, IPv6 brackets removed.
fn parse_host_port(authority: &str) -> Result<(String, Option<u16>), HeadError> {
    // RFC 9110 §4.2.4: userinfo is deprecated in http(s) URIs; refusing it closes the
    // `http://trusted@evil/` confusion.
    if authority.contains('@') {
        return Err(malformed("userinfo in URI authority"));
    }
    let (host, port_text) = if let Some(v6) = authority.strip_prefix('[') {
        let (literal, after) = v6
            .split_once(']')
            .ok_or_else(|| malformed("unterminated IPv6 literal"))?;
        // Zone IDs and IPvFuture are not valid in http(s) authorities we can route.
        literal
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| malformed(format!("invalid IPv6 literal {literal:?}")))?;
        let port_text = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| malformed("junk after IPv6 literal"))?,
            ),
        };
        (literal, port_text)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(malformed("empty host"));
    }
    if !authority.starts_with('[') && !host.bytes().all(is_reg_name_byte) {
        return Err(malformed(format!("invalid host {host:?}")));
    }
    let port = match port_text {
        // RFC 3986 §3.2.3: an empty port means the default.
        None | Some("") => None,
        Some(p) => Some(parse_port(p)?),
    };
    Ok((canonical_host(host, authority.starts_with('['))?, port))
}

/// The one spelling of a host every later check sees: IPv6 literals in their canonical
/// text form (an IPv4-mapped one, `::ffff:a.b.c.d`, as the IPv4 address it means), a
/// host that ends in a number parsed as IPv4 the way browsers and `inet_aton` do
/// (WHATWG URL "IPv4 parser": `2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`, a trailing
/// dot) and written as a dotted quad, or refused when it is not one; names lowercased,
/// one trailing dot dropped (`localhost.` is the fully qualified `localhost`: one cache
/// key, one resolution).
/// The destination policy checks resolved addresses anyway; this makes the URL (cache
/// key, `Host`) name the address that is connected to, and the 403 name it too.
fn canonical_host(host: &str, bracketed: bool) -> Result<String, HeadError> {
    if bracketed {
        let v6: std::net::Ipv6Addr = host
            .parse()
            .map_err(|_| malformed(format!("invalid IPv6 literal {host:?}")))?;
        return Ok(match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        });
    }
    if ends_in_a_number(host) {
        return parse_ipv4(host)
            .map(|v4| v4.to_string())
            .ok_or_else(|| malformed(format!("invalid IPv4 address {host:?}")));
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(malformed("empty host"));
    }
    Ok(host.to_ascii_lowercase())
}

/// WHATWG URL "ends in a number": the last label (a single trailing dot ignored) is all
/// digits, or parses as an IPv4 number (`0x..` hex, `0..` octal).
fn ends_in_a_number(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next().unwrap_or("");
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    ipv4_number(last).is_some()
}

/// WHATWG URL "IPv4 number parser": `0x`/`0X` prefix hex (an empty rest is 0), a
/// leading `0` octal, else decimal. `None` for anything else (or an empty part).
fn ipv4_number(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        return Some(0);
    }
    if !digits.bytes().all(|b| (b as char).is_digit(radix)) {
        return None;
    }
    // Longer than any valid part: refuse rather than overflow.
    if digits.len() > 12 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// WHATWG URL "IPv4 parser": 1 to 4 dot-separated numbers (one trailing dot allowed),
/// every one but the last at most 255, the last filling the remaining bytes.
pub fn parse_ipv4(host: &str) -> Option<std::net::Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    // At most four parts, parsed into a fixed array (this runs for every request).
    let mut numbers = [0u64; 4];
    let mut count = 0;
    for part in host.split('.') {
        *numbers.get_mut(count)? = ipv4_number(part)?;
        count += 1;
    }
    let (last, init) = numbers[..count].split_last()?;
    if init.iter().any(|&n| n > 255) || *last >= 1u64 << (8 * (5 - count)) {
        return None;
    }
    let mut v = *last;
    for (i, n) in init.iter().enumerate() {
        v += n << (8 * (3 - i));
    }
    Some(std::net::Ipv4Addr::from(v as u32))
}

/// reg-name = *( unreserved / pct-encoded / sub-delims ) (RFC 3986 §3.2.2); IPv4
/// literals are a subset.
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b)
}

fn parse_port(p: &str) -> Result<u16, HeadError> {
    if p.is_empty() || p.len() > MAX_PORT_DIGITS || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(format!("invalid port {p:?}")));
    }
    match p.parse::<u16>() {
        // Port 0 cannot be connected to.
        Ok(port) if port != 0 => Ok(port),
        _ => Err(malformed(format!("invalid port {p:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(scheme: Scheme, host: &str, port: Option<u16>, pq: &str) -> Uri {
        Uri {
            scheme,
            host: host.to_string(),
            port,
            path_and_query: pq.to_string(),
        }
    }

    #[test]
    fn absolute_forms() {
        use Scheme::{Http, Https};
        let cases: &[(&str, Uri, u16, &str, &str)] = &[
            (
                "http://example.com/a/b?c=d",
                uri(Http, "example.com", None, "/a/b?c=d"),
                80,
                "example.com",
                "http://example.com/a/b?c=d",
            ),
            (
                "HTTP://Example.COM:8080",
                uri(Http, "example.com", Some(8080), "/"),
                8080,
                "example.com:8080",
                "http://example.com:8080/",
            ),
            (
                "https://a.example?q=1#frag",
                uri(Https, "a.example", None, "/?q=1"),
                443,
                "a.example",
                "https://a.example/?q=1",
            ),
            (
                "https://a.example:443/x#y?z",
                uri(Https, "a.example", Some(443), "/x"),
                443,
                "a.example:443",
                "https://a.example:443/x",
            ),
            (
                "http://127.0.0.1:3128/",
                uri(Http, "127.0.0.1", Some(3128), "/"),
                3128,
                "127.0.0.1:3128",
                "http://127.0.0.1:3128/",
            ),
            (
                "http://[::1]:8080/p",
                uri(Http, "::1", Some(8080), "/p"),
                8080,
                "[::1]:8080",
                "http://[::1]:8080/p",
            ),
            (
                "http://[2001:DB8::1]/",
                uri(Http, "2001:db8::1", None, "/"),
                80,
                "[2001:db8::1]",
                "http://[2001:db8::1]/",
            ),
            // RFC 3986 §3.2.3: an empty port means the default.
            (
                "http://h:/x",
                uri(Http, "h", None, "/x"),
                80,
                "h",
                "http://h/x",
            ),
            (
                "http://xn--bcher-kva.example/%7Euser/",
                uri(Http, "xn--bcher-kva.example", None, "/%7Euser/"),
                80,
                "xn--bcher-kva.example",
                "http://xn--bcher-kva.example/%7Euser/",
            ),
        ];
        for (text, want, port, authority, url) in cases {
            let got = parse_absolute(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(&got, want, "{text}");
            assert_eq!(got.port_or_default(), *port, "{text}");
            assert_eq!(got.authority(), *authority, "{text}");
            assert_eq!(got.to_url_string(), *url, "{text}");
        }
    }

    #[test]
    fn bad_absolute_forms() {
        for text in [
            "/relative",
            "example.com:80",
            "ftp://example.com/",
            "http:/example.com/",
            "http://",
            "http:///path",
            "http://:80/",
            "http://user@example.com/",
            "http://user:pw@example.com/",
            "http://trusted.example@evil.example/",
            "http://example.com:0/",
            "http://example.com:65536/",
            "http://example.com:123456/",
            "http://example.com:+80/",
            "http://example.com:8o/",
            "http://example.com:80:81/",
            "http://[::1/",
            "http://[::1]x/",
            "http://[not-v6]/",
            "http://[fe80::1%25eth0]/",
            "http://exa mple.com/",
            "http://exa\"mple.com/",
            "http://example.com/a b",
            "http://example.com/a\x7f",
        ] {
            let err = parse_absolute(text).expect_err(text);
            assert_eq!(err.status(), 400, "{text}");
        }
    }

    #[test]
    fn every_spelling_of_an_ipv4_address_is_normalised() {
        for text in [
            "127.0.0.1",
            "2130706433",
            "0x7f000001",
            "0x7f.1",
            "0X7F.0.0.1",
            "0177.0.0.1",
            "0177.0.0.01",
            "127.1",
            "127.0.1",
            "127.0.0.1.",
            "127.1.",
            "[::ffff:127.0.0.1]",
            "[::FFFF:7f00:1]",
            "[0:0:0:0:0:ffff:7f00:0001]",
        ] {
            let uri = parse_absolute(&format!("http://{text}:81/x"))
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(uri.host, "127.0.0.1", "{text}");
            let (host, port) = parse_authority(&format!("{text}:443")).unwrap();
            assert_eq!((host.as_str(), port), ("127.0.0.1", 443), "{text}");
        }
        assert_eq!(parse_absolute("http://0/").unwrap().host, "0.0.0.0");
        assert_eq!(parse_absolute("http://0x/").unwrap().host, "0.0.0.0");
        assert_eq!(
            parse_absolute("http://4294967295/").unwrap().host,
            "255.255.255.255"
        );
        assert_eq!(parse_absolute("http://10.0.0.1/").unwrap().host, "10.0.0.1");
        assert_eq!(parse_absolute("http://[0:0::1]/").unwrap().host, "::1");
        // Names stay names, without the trailing dot of a fully qualified one (the
        // resolved address is what the destination policy checks).
        assert_eq!(
            parse_absolute("http://Localhost./").unwrap().host,
            "localhost"
        );
        assert!(parse_absolute("http://./").is_err());
        assert_eq!(
            parse_absolute("http://a1.example/").unwrap().host,
            "a1.example"
        );
        assert_eq!(
            parse_absolute("http://0x7g.example/").unwrap().host,
            "0x7g.example"
        );
        // Ends in a number but is no IPv4 address: refused, never resolved.
        for bad in [
            "4294967296",
            "256.0.0.1",
            "1.2.3.4.5",
            "1.256.0.0.1",
            "example.123",
            "foo.0x10",
            "08.0.0.1",
            "0x1.0x100.0.0",
            "99999999999999999999",
        ] {
            assert!(parse_absolute(&format!("http://{bad}/")).is_err(), "{bad}");
            assert!(parse_authority(&format!("{bad}:443")).is_err(), "{bad}");
        }
    }

    #[test]
    fn connect_authorities() {
        let ok: &[(&str, &str, u16)] = &[
            ("example.com:443", "example.com", 443),
            ("EXAMPLE.com:8443", "example.com", 8443),
            ("10.0.0.1:22", "10.0.0.1", 22),
            ("[::1]:443", "::1", 443),
            ("[2001:db8::A]:1", "2001:db8::a", 1),
        ];
        for (text, host, port) in ok {
            assert_eq!(
                parse_authority(text),
                Ok((host.to_string(), *port)),
                "{text}"
            );
        }
        for text in [
            "example.com",
            "example.com:",
            ":443",
            "[::1]",
            "::1:443",
            "user@example.com:443",
            "example.com:99999",
            "example.com:0",
            "example.com:443/path",
            "",
        ] {
            assert!(parse_authority(text).is_err(), "{text}");
        }
    }
}
