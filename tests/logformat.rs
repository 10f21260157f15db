//! Issue 11, `log-format: json`: every line chacha logs is one JSON object; a request's
//! line has the fields of the text line (client, request, status, bytes, duration_ms,
//! op, and error where there is one), with the client's bytes escaped.

mod common;

use std::time::Duration;

use common::cached::{assert_hit, assert_stored, fetch, wait_until};
use common::{get, with_deadline, Chacha, Origin};

const DEADLINE: Duration = Duration::from_secs(60);

fn lines_json(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.starts_with("---- test harness"))
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object ({e}): {l:?}"))
        })
        .collect()
}

fn request_line<'a>(lines: &'a [serde_json::Value], request: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|v| v["request"] == request)
        .unwrap_or_else(|| panic!("no line for {request:?}"))
}

#[test]
fn json_log_lines_parse_and_carry_the_request_fields() {
    with_deadline(DEADLINE, || {
        let o = Origin::standard();
        let c = Chacha::start(&common::config("log-format: json\n"));
        let a = o.authority();
        assert_stored(&fetch(c.addr(), get(&a, "/static/j")));
        assert_hit(&fetch(c.addr(), get(&a, "/static/j")));
        // Quotes, a backslash and braces in the target: the client's bytes must not end
        // the string or forge fields.
        let evil = "/static/q\"x\\\"},\"op\":\"hit\"{";
        let r = fetch(c.addr(), get(&a, evil));
        assert_eq!(r.status(), 200);
        // A target with a control byte is refused before it has a request line.
        let raw = format!("GET http://{a}/ctl\x01x HTTP/1.1\r\nHost: {a}\r\n\r\n");
        assert_eq!(fetch(c.addr(), raw).status(), 400);
        // A failed request: its reason is the error.
        let r = fetch(c.addr(), get("127.0.0.1:1", "/refused"));
        assert_eq!(r.status(), 502);

        let evil_line = format!("GET http://{a}{evil}");
        // Every request's line (each follows its response, in no set order): the fill
        // and the hit of /static/j, the evil target, the reject, the refused one.
        let j = format!("\"request\":\"GET http://{a}/static/j\"");
        assert!(
            wait_until(Duration::from_secs(5), || {
                let log = c.log();
                log.contains("\"reject\"")
                    && log.contains("/refused")
                    && log.contains("q\\\"x")
                    && log.matches(&j).count() == 2
            }),
            "{}",
            c.log()
        );
        let log = c.log();
        let lines = lines_json(&log);
        assert!(lines.len() >= 6, "{log}");
        for v in &lines {
            assert!(v["time"].is_string() && v["level"].is_string(), "{v}");
        }
        // Start-up lines are JSON too, with their text as `message`.
        assert!(
            lines.iter().any(|v| v["message"]
                .as_str()
                .is_some_and(|m| m.contains("listening on"))),
            "{log}"
        );
        let fill = request_line(&lines, &format!("GET http://{a}/static/j"));
        assert_eq!(fill["op"], "fill");
        assert_eq!(fill["status"], 200);
        assert!(fill["bytes"].as_u64().unwrap() > 0);
        assert!(fill["duration_ms"].is_u64());
        assert!(fill["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert_eq!(fill["level"], "info");
        let hits: Vec<_> = lines
            .iter()
            .filter(|v| v["request"] == format!("GET http://{a}/static/j") && v["op"] == "hit")
            .collect();
        assert_eq!(hits.len(), 1, "{log}");
        let evil_v = request_line(&lines, &evil_line);
        assert_eq!(evil_v["status"], 200);
        assert_ne!(evil_v["op"], "hit");
        let refused = request_line(&lines, "GET http://127.0.0.1:1/refused");
        assert_eq!(refused["status"], 502);
        assert!(
            refused["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{refused}"
        );
        assert_eq!(refused["level"], "warn");
        let reject = lines
            .iter()
            .find(|v| v["op"] == "reject")
            .expect("reject line");
        assert_eq!(reject["status"], 400);
        assert!(reject.get("request").is_none(), "{reject}");
        assert!(reject["error"].is_string(), "{reject}");
    });
}

#[test]
fn text_stays_the_default_line() {
    with_deadline(DEADLINE, || {
        let o = Origin::standard();
        let c = Chacha::start(&common::config(""));
        let a = o.authority();
        assert_stored(&fetch(c.addr(), get(&a, "/static/t")));
        let needle = format!("\"GET http://{a}/static/t\" 200 ");
        assert!(
            wait_until(Duration::from_secs(5), || c.log().contains(&needle)),
            "{}",
            c.log()
        );
        let log = c.log();
        let line = log.lines().find(|l| l.contains(&needle)).unwrap();
        assert!(line.starts_with('[') && line.ends_with("ms fill"), "{line}");
        assert!(serde_json::from_str::<serde_json::Value>(line).is_err());
    });
}
