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
        let mut out = bracketed(&self.host);
        if let Some(port) = self.port {
            out.push(':');
            out.push_str(&port.to_string());
        }
        out
    }

    /// `scheme://authority/path?q`.
    pub fn to_url_string(&self) -> String {
        format!(
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority(),
            self.path_and_query
        )
    }
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
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
    Ok((host.to_ascii_lowercase(), port))
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
