//! The KV protocol from a test: a one-node cluster's config (the node owns every key, so
//! KV entries are what its own clients are served) and raw KV requests.

use std::net::{SocketAddr, TcpListener};

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};

pub const SECRET: &str = "kv-test-secret";

/// A loopback address for a one-node cluster: cluster mode needs an explicit address in
/// the config. The port is found by binding port 0 and released just before the node
/// starts (a small race with other processes, as in tests/cluster.rs).
pub fn reserve_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind loopback")
        .local_addr()
        .unwrap()
}

/// Config of a one-node cluster at `addr` with a cache and `extra` YAML appended.
pub fn single_node_config(addr: SocketAddr, extra: &str) -> String {
    format!(
        "addr: {addr}\nworkers: 1\ndisk:\n  dir: \"{}\"\n  limit: 100MB\ncluster:\n  secret: {SECRET}\n  nodes:\n    - addr: {addr}\n{extra}",
        super::chacha::DIR_PLACEHOLDER
    )
}

/// A KV request as the original's Go client sends it, authorised with [`SECRET`]:
/// `X-Chacha-Key: base64(key)`, `X-Chacha-Metadata: base64(metadata_json)` when given,
/// the body with Content-Length.
pub fn kv_request(
    method: &str,
    node: SocketAddr,
    key: &str,
    metadata_json: Option<&str>,
    body: Option<&[u8]>,
) -> Vec<u8> {
    go_kv_request(method, node, Some(SECRET), key, metadata_json, body, false)
}

/// A KV request exactly as the original's Go client (`internal/cache/kv`) sends it.
pub fn go_kv_request(
    method: &str,
    node: SocketAddr,
    auth: Option<&str>,
    key: &str,
    metadata_json: Option<&str>,
    body: Option<&[u8]>,
    chunked: bool,
) -> Vec<u8> {
    let mut s =
        format!("{method} / HTTP/1.1\r\nHost: {node}\r\nUser-Agent: Go-http-client/1.1\r\n");
    if let Some(b) = body {
        if chunked {
            s.push_str("Transfer-Encoding: chunked\r\n");
        } else {
            s.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
    }
    if let Some(secret) = auth {
        let cred = BASE64.encode(format!(":{secret}").as_bytes());
        s.push_str(&format!("Authorization: Basic {cred}\r\n"));
    }
    s.push_str(&format!(
        "X-Chacha-Key: {}\r\n",
        BASE64.encode(key.as_bytes())
    ));
    if let Some(json) = metadata_json {
        s.push_str(&format!(
            "X-Chacha-Metadata: {}\r\n",
            BASE64.encode(json.as_bytes())
        ));
    }
    s.push_str("Accept-Encoding: gzip\r\n\r\n");
    let mut out = s.into_bytes();
    if let Some(b) = body {
        if chunked {
            out.extend_from_slice(format!("{:x}\r\n", b.len()).as_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n0\r\n\r\n");
        } else {
            out.extend_from_slice(b);
        }
    }
    out
}
