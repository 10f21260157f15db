//! The per-request log line and `log-format` (ours): `text` (the default) or `json`.
//!
//! `text` keeps env_logger's line: `[TIME LEVEL chacha::access] CLIENT "REQUEST" STATUS
//! BYTES MSms OP[: REASON]`. `json` makes every line of the log one JSON object, so a log
//! shipper never meets a line it cannot parse: a request line carries `time`, `level`,
//! `client`, `request` (absent when the request head could not be parsed), `status`,
//! `bytes`, `duration_ms`, `op`, and `error` (why it failed, was rejected or was cut)
//! and `aborted: true` (the response was cut after it started) where they apply; every
//! other line (start-up, warnings, reloads) is `{"time", "level", "target", "message"}`.
//! Strings are escaped by serde_json: request lines hold client-chosen bytes (quotes,
//! control characters) that must never break a line or forge a field.
//!
//! The format is process-wide and changes with a live reload.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::config::LogFormat;

/// The log target of request lines.
pub const TARGET: &str = "chacha::access";

static FORMAT: AtomicU8 = AtomicU8::new(0);

/// Sets the format of every line logged from now on.
pub fn set_format(format: LogFormat) {
    FORMAT.store(format as u8, Ordering::Relaxed);
}

/// The format in force.
pub fn format() -> LogFormat {
    match FORMAT.load(Ordering::Relaxed) {
        1 => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// What is said after the operation.
#[derive(Clone, Copy, Debug)]
pub enum Detail<'a> {
    None,
    /// The request failed or was refused, answered with `status` (text: `OP: REASON`).
    Error(&'a str),
    /// The response was cut after it started (text: `OP aborted: REASON`).
    Aborted(&'a str),
    /// A tunnel ended early (text: `OP closed: REASON`).
    Closed(&'a str),
    /// A tunnel's TLS handshake completed (text: `OP established`).
    Established,
    /// What a request did, when it was no error (text: `OP: SUMMARY`; JSON `summary`),
    /// e.g. a blind tunnel's byte counts.
    Summary(&'a str),
}

/// One request's line.
#[derive(Clone, Copy, Debug)]
pub struct Line<'a> {
    pub client: SocketAddr,
    /// `METHOD TARGET` (the absolute URL inside a tunnel); `None` when no head was parsed.
    pub request: Option<&'a str>,
    pub status: u16,
    pub bytes: u64,
    pub duration_ms: u128,
    pub op: &'a str,
    pub detail: Detail<'a>,
}

impl Line<'_> {
    /// Logs the line at `level` in the format in force.
    pub fn log(&self, level: log::Level) {
        if !log::log_enabled!(target: TARGET, level) {
            return;
        }
        match format() {
            LogFormat::Text => log::log!(target: TARGET, level, "{}", self.text()),
            LogFormat::Json => log::log!(target: TARGET, level, "{}", self.json()),
        }
    }

    /// The text form (as chacha always logged it).
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(128);
        let _ = write!(s, "{} ", self.client);
        match self.request {
            Some(r) => {
                let _ = write!(s, "\"{r}\"");
            }
            None => s.push('-'),
        }
        let _ = write!(
            s,
            " {} {} {}ms {}",
            self.status, self.bytes, self.duration_ms, self.op
        );
        let _ = match self.detail {
            Detail::None => Ok(()),
            Detail::Error(r) | Detail::Summary(r) => write!(s, ": {r}"),
            Detail::Aborted(r) => write!(s, " aborted: {r}"),
            Detail::Closed(r) => write!(s, " closed: {r}"),
            Detail::Established => write!(s, " established"),
        };
        s
    }

    /// The JSON object (without `time` and `level`, which the log format adds).
    pub fn json(&self) -> String {
        let mut m = serde_json::Map::new();
        m.insert("client".into(), self.client.to_string().into());
        if let Some(r) = self.request {
            m.insert("request".into(), r.into());
        }
        m.insert("status".into(), self.status.into());
        m.insert("bytes".into(), self.bytes.into());
        m.insert(
            "duration_ms".into(),
            u64::try_from(self.duration_ms).unwrap_or(u64::MAX).into(),
        );
        m.insert("op".into(), self.op.into());
        match self.detail {
            Detail::None => {}
            Detail::Established => {
                m.insert("established".into(), true.into());
            }
            Detail::Summary(r) => {
                m.insert("summary".into(), r.into());
            }
            Detail::Error(r) | Detail::Closed(r) => {
                m.insert("error".into(), r.into());
            }
            Detail::Aborted(r) => {
                m.insert("error".into(), r.into());
                m.insert("aborted".into(), true.into());
            }
        }
        serde_json::Value::Object(m).to_string()
    }
}

/// The env_logger format: env_logger's own in `text`, one JSON object per line in `json`.
pub fn format_record(
    buf: &mut env_logger::fmt::Formatter,
    record: &log::Record<'_>,
) -> std::io::Result<()> {
    if format() == LogFormat::Text {
        return env_logger::fmt::ConfigurableFormat::default().format(buf, record);
    }
    let time = buf.timestamp().to_string();
    let level = record.level().as_str().to_ascii_lowercase();
    let message = record.args().to_string();
    if record.target() == TARGET && message.starts_with('{') {
        // A request line's object: add time and level in front of its fields.
        return writeln!(
            buf,
            "{{\"time\":{},\"level\":{},{}",
            serde_json::Value::from(time),
            serde_json::Value::from(level),
            &message[1..]
        );
    }
    let line = serde_json::json!({
        "time": time,
        "level": level,
        "target": record.target(),
        "message": message,
    });
    writeln!(buf, "{line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(request: Option<&'a str>, detail: Detail<'a>) -> Line<'a> {
        Line {
            client: "127.0.0.1:4000".parse().unwrap(),
            request,
            status: 502,
            bytes: 12,
            duration_ms: 7,
            op: "pass",
            detail,
        }
    }

    #[test]
    fn text_is_the_old_line() {
        assert_eq!(
            line(Some("GET http://a/"), Detail::None).text(),
            "127.0.0.1:4000 \"GET http://a/\" 502 12 7ms pass"
        );
        assert_eq!(
            line(Some("GET http://a/"), Detail::Error("bad")).text(),
            "127.0.0.1:4000 \"GET http://a/\" 502 12 7ms pass: bad"
        );
        assert_eq!(
            line(Some("GET http://a/"), Detail::Aborted("cut")).text(),
            "127.0.0.1:4000 \"GET http://a/\" 502 12 7ms pass aborted: cut"
        );
        assert_eq!(
            line(None, Detail::Error("bad head")).text(),
            "127.0.0.1:4000 - 502 12 7ms pass: bad head"
        );
    }

    #[test]
    fn json_escapes_what_the_client_sent() {
        let evil = "GET http://a/\"x\u{1}\u{7f}\n\"} {\"op\":\"hit";
        let j = line(Some(evil), Detail::Aborted("origin \"cut\"")).json();
        assert!(!j.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["request"], evil);
        assert_eq!(v["op"], "pass");
        assert_eq!(v["status"], 502);
        assert_eq!(v["bytes"], 12);
        assert_eq!(v["duration_ms"], 7);
        assert_eq!(v["client"], "127.0.0.1:4000");
        assert_eq!(v["error"], "origin \"cut\"");
        assert_eq!(v["aborted"], true);
        let j = line(None, Detail::None).json();
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert!(v.get("request").is_none() && v.get("error").is_none());
    }
}
