//! Listen and node addresses: `addr` as written, and the rule that cluster mode needs a concrete IP.

use super::*;

impl Checker {
    /// Other nodes compare and reach this node by its `addr`, so (like the
    /// original's server sanity check) it must be a concrete IP and port.
    pub(super) fn check_cluster_addr(&mut self, addr: &ParsedAddr) {
        if !addr.literal_ip {
            self.report(
                "addr",
                "must be an IP address (not a hostname) in cluster mode, e.g. 192.168.0.1:8080",
            );
        } else if addr.socket.ip().is_unspecified() {
            self.report(
                "addr",
                format!(
                    "must be an explicit IP address in cluster mode, not {} (e.g. 192.168.0.1:8080)",
                    addr.socket.ip()
                ),
            );
        }
        if addr.socket.port() == 0 {
            self.report("addr", "port must not be 0 in cluster mode");
        }
    }

    pub(super) fn addr(&mut self, value: &Value, path: &str) -> Option<ParsedAddr> {
        let text = self.string(value, path, "an address such as 127.0.0.1:8080")?;
        match parse_addr(&text, self.resolve) {
            Ok(addr) => Some(addr),
            Err(reason) => {
                self.report(path, format!("invalid address {text:?}: {reason}"));
                None
            }
        }
    }
}

/// Parses `:port`, `ip:port`, `[ipv6]:port` or `host:port` (resolved now,
/// preferring IPv4).
fn parse_addr(text: &str, resolve: Resolve) -> Result<ParsedAddr, String> {
    if let Some(port) = text.strip_prefix(':').filter(|port| !port.contains(':')) {
        // Go's `net.Listen(":8080")`: every interface.
        return Ok(ParsedAddr {
            socket: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), parse_port(port)?),
            literal_ip: true,
        });
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Ok(ParsedAddr {
            socket,
            literal_ip: true,
        });
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err("expected host:port, e.g. 127.0.0.1:8080 or :8080".to_owned());
    };
    let port = parse_port(port)?;
    if host.contains(':') || host.starts_with('[') {
        return Err("expected an IPv6 address in brackets, e.g. [::1]:8080".to_owned());
    }
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("expected host:port, e.g. 127.0.0.1:8080 or :8080".to_owned());
    }
    let candidates =
        resolve(host, port).map_err(|err| format!("cannot resolve host {host:?}: {err}"))?;
    let socket = candidates
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| candidates.first())
        .copied()
        .ok_or_else(|| format!("host {host:?} has no addresses"))?;
    Ok(ParsedAddr {
        socket,
        literal_ip: false,
    })
}

fn parse_port(text: &str) -> Result<u16, String> {
    text.parse()
        .map_err(|_| format!("invalid port {text:?} (expected 0-65535)"))
}
