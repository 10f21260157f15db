//! The Prometheus text exposition format 0.0.4: `# HELP` and `# TYPE` before each
//! family, counters named `_total`, base units (seconds, bytes), histograms as
//! cumulative `_bucket{le=..}` series ending in `+Inf`, then `_sum` and `_count`.

use std::fmt::Write;

use super::*;

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    /// One sample; `labels` already formatted (`a="x",b="y"`), or empty.
    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }
    /// One histogram series; `scale` divides sums and bounds into the base unit.
    fn histogram<const N: usize>(
        &mut self,
        name: &str,
        labels: &str,
        h: &Histogram<N>,
        bounds: &[u64; N],
        scale: f64,
    ) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, bound) in h.buckets.iter().zip(bounds) {
            cumulative += b.get();
            let le = *bound as f64 / scale;
            let _ = writeln!(
                self.0,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let count = h.count.get();
        let _ = writeln!(self.0, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        self.sample(&format!("{name}_sum"), labels, h.sum.get() as f64 / scale);
        self.sample(&format!("{name}_count"), labels, count);
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders a snapshot. Series whose labels are fixed enums are always present (zero
/// until something happens), except request series, which appear once seen (7 methods ×
/// 5 classes × 12 ops would be mostly zeros).
pub fn render(s: &Snapshot) -> String {
    let t = &s.totals;
    let mut o = Out(String::with_capacity(16 * 1024));

    o.family(
        "chacha_requests_total",
        "counter",
        "Requests answered, by method, status class and operation.",
    );
    for m in Method::ALL {
        for (c, class) in STATUS_CLASSES.iter().enumerate() {
            for (i, op) in OPS.iter().enumerate() {
                let n = t.requests[m as usize][c][i].get();
                if n > 0 {
                    let labels = format!(
                        "method=\"{}\",status=\"{class}\",op=\"{}\"",
                        m.as_str(),
                        op.as_str()
                    );
                    o.sample("chacha_requests_total", &labels, n);
                }
            }
        }
    }

    o.family(
        "chacha_response_seconds",
        "histogram",
        "Time from a request's head to its response head, by operation.",
    );
    for (i, op) in OPS.iter().enumerate() {
        let labels = format!("op=\"{}\"", op.as_str());
        o.histogram(
            "chacha_response_seconds",
            &labels,
            &t.response_us[i],
            &RESPONSE_BOUNDS_US,
            1e6,
        );
    }

    o.family(
        "chacha_transfer_speed_bytes_per_second",
        "histogram",
        "Body bytes sent to a client over the time they took, by operation (the original's buckets).",
    );
    for (i, op) in OPS.iter().enumerate() {
        let labels = format!("op=\"{}\"", op.as_str());
        o.histogram(
            "chacha_transfer_speed_bytes_per_second",
            &labels,
            &t.speed[i],
            &SPEED_BOUNDS,
            1.0,
        );
    }

    o.family(
        "chacha_client_sent_bytes_total",
        "counter",
        "Response body bytes sent to clients, by operation.",
    );
    for (i, op) in OPS.iter().enumerate() {
        let labels = format!("op=\"{}\"", op.as_str());
        o.sample(
            "chacha_client_sent_bytes_total",
            &labels,
            t.client_bytes[i].get(),
        );
    }
    o.family(
        "chacha_origin_received_bytes_total",
        "counter",
        "Bytes read from origins (heads and bodies), by the operation of the request they served.",
    );
    for (i, op) in OPS.iter().enumerate() {
        let labels = format!("op=\"{}\"", op.as_str());
        o.sample(
            "chacha_origin_received_bytes_total",
            &labels,
            t.origin_bytes[i].get(),
        );
    }

    o.family(
        "chacha_cache_outcomes_total",
        "counter",
        "Cache-Status outcomes of proxied responses.",
    );
    for (i, name) in OUTCOMES.iter().enumerate() {
        let labels = format!("outcome=\"{name}\"");
        o.sample("chacha_cache_outcomes_total", &labels, t.outcomes[i].get());
    }
    o.family(
        "chacha_cache_not_stored_total",
        "counter",
        "Responses relayed without storing them, by Cache-Status detail.",
    );
    for (i, name) in NOT_STORED_REASONS.iter().enumerate() {
        let labels = format!("reason=\"{name}\"");
        o.sample(
            "chacha_cache_not_stored_total",
            &labels,
            t.not_stored[i].get(),
        );
    }
    o.family(
        "chacha_origin_responses_total",
        "counter",
        "Origin response heads: 304 (not_modified), 200 (full), 206 (partial), other.",
    );
    for (i, name) in ORIGIN_RESPONSES.iter().enumerate() {
        let labels = format!("kind=\"{name}\"");
        o.sample(
            "chacha_origin_responses_total",
            &labels,
            t.origin_responses[i].get(),
        );
    }

    o.family(
        "chacha_fill_failures_total",
        "counter",
        "Fills that failed, by reason.",
    );
    for (i, name) in FILL_FAILURES.iter().enumerate() {
        let labels = format!("reason=\"{name}\"");
        o.sample(
            "chacha_fill_failures_total",
            &labels,
            t.fill_failures[i].get(),
        );
    }
    o.family(
        "chacha_fill_resumes_total",
        "counter",
        "Fill bodies cut by the origin and resumed with Range.",
    );
    o.sample("chacha_fill_resumes_total", "", t.fill_resumes.get());
    o.family(
        "chacha_validations_merged_total",
        "counter",
        "Requests validated by the 304 to an identical conditional request sent after they arrived.",
    );
    o.sample(
        "chacha_validations_merged_total",
        "",
        t.validations_merged.get(),
    );

    if let Some(d) = &s.disk {
        o.family(
            "chacha_fills_in_flight",
            "gauge",
            "Fills being written now.",
        );
        o.sample("chacha_fills_in_flight", "", d.fills_in_flight);
        o.family(
            "chacha_fill_readers_waiting",
            "gauge",
            "Readers waiting for the next bytes of a fill in flight.",
        );
        o.sample("chacha_fill_readers_waiting", "", d.readers_waiting);
        o.family(
            "chacha_disk_used_bytes",
            "gauge",
            "Bytes of committed cache entries.",
        );
        o.sample("chacha_disk_used_bytes", "", d.used);
        o.family(
            "chacha_disk_limit_bytes",
            "gauge",
            "The cache's size limit (disk.limit).",
        );
        o.sample("chacha_disk_limit_bytes", "", d.limit);
        o.family("chacha_cache_entries", "gauge", "Committed cache entries.");
        o.sample("chacha_cache_entries", "", d.entries);
    }
    o.family(
        "chacha_evictions_total",
        "counter",
        "Entries evicted to make room.",
    );
    o.sample("chacha_evictions_total", "", t.evictions.get());
    o.family(
        "chacha_evicted_bytes_total",
        "counter",
        "Bytes of the entries evicted to make room.",
    );
    o.sample("chacha_evicted_bytes_total", "", t.evicted_bytes.get());
    if let Some(scan) = s.scan {
        o.family(
            "chacha_startup_scan_seconds",
            "gauge",
            "How long the startup scan of the cache dir took.",
        );
        o.sample("chacha_startup_scan_seconds", "", scan.as_secs_f64());
    }

    let opened = t.connections_opened.get();
    o.family(
        "chacha_client_connections",
        "gauge",
        "Open client connections.",
    );
    o.sample(
        "chacha_client_connections",
        "",
        opened.saturating_sub(t.connections_closed.get()),
    );
    o.family(
        "chacha_client_connections_total",
        "counter",
        "Client connections accepted.",
    );
    o.sample("chacha_client_connections_total", "", opened);

    if let Some(n) = s.leaves_minted {
        o.family(
            "chacha_tls_leaves_minted_total",
            "counter",
            "Interception leaf certificates signed.",
        );
        o.sample("chacha_tls_leaves_minted_total", "", n);
    }
    o.family(
        "chacha_tls_handshake_failures_total",
        "counter",
        "Client TLS handshakes of intercepted CONNECTs that failed or timed out.",
    );
    for (i, name) in HANDSHAKE_FAILURES.iter().enumerate() {
        let labels = format!("reason=\"{name}\"");
        o.sample(
            "chacha_tls_handshake_failures_total",
            &labels,
            t.handshake_failures[i].get(),
        );
    }
    o.family(
        "chacha_upstream_errors_total",
        "counter",
        "Requests to origins that failed before a response head, by kind.",
    );
    for (i, name) in UPSTREAM_ERRORS.iter().enumerate() {
        let labels = format!("kind=\"{name}\"");
        o.sample(
            "chacha_upstream_errors_total",
            &labels,
            t.upstream_errors[i].get(),
        );
    }

    o.family(
        "chacha_direct_connect_total",
        "counter",
        "Direct-connect: 307s to a key's owner, and this node's GET /direct-connect answers.",
    );
    for (r, result) in DIRECT_CONNECT_RESULTS.iter().enumerate() {
        let labels = format!("result=\"{result}\"");
        o.sample(
            "chacha_direct_connect_total",
            &labels,
            t.direct_connect[r].get(),
        );
    }
    if let Some(peers) = &s.peers {
        o.family(
            "chacha_peer_up",
            "gauge",
            "Cluster nodes as seen from this one: 1 up, 0 down.",
        );
        for (name, up) in peers {
            let labels = format!("peer=\"{}\"", escape(name));
            o.sample("chacha_peer_up", &labels, u8::from(*up));
        }
    }
    if let Some(changes) = &s.peer_changes {
        o.family(
            "chacha_peer_state_changes_total",
            "counter",
            "Cluster nodes' state changes (up to down or back) seen from this one.",
        );
        for (name, n) in changes {
            let labels = format!("peer=\"{}\"", escape(name));
            o.sample("chacha_peer_state_changes_total", &labels, *n);
        }
    }
    if s.peers.is_some() {
        o.family(
            "chacha_kv_requests_total",
            "counter",
            "KV requests this node served, by kind and result.",
        );
        for (k, kind) in KV_KINDS.iter().enumerate() {
            for (r, result) in KV_RESULTS.iter().enumerate() {
                let labels = format!("kind=\"{kind}\",result=\"{result}\"");
                o.sample(
                    "chacha_kv_requests_total",
                    &labels,
                    t.kv_requests[k][r].get(),
                );
            }
        }
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn counters_and_families() {
        let s = Snapshot::default();
        s.totals.requests[Method::Get as usize][1][0].add(3);
        s.totals.requests[Method::Other as usize][4][4].add(1);
        s.totals.outcomes[0].add(3);
        s.totals.client_bytes[0].add(300);
        let text = render(&s);
        let l = lines(&text);
        assert!(l.contains(&"chacha_requests_total{method=\"GET\",status=\"2xx\",op=\"hit\"} 3"));
        assert!(l.contains(&"chacha_requests_total{method=\"OTHER\",status=\"5xx\",op=\"pass\"} 1"));
        assert!(l.contains(&"chacha_cache_outcomes_total{outcome=\"hit\"} 3"));
        assert!(l.contains(&"chacha_cache_outcomes_total{outcome=\"replaced\"} 0"));
        assert!(l.contains(&"chacha_client_sent_bytes_total{op=\"hit\"} 300"));
        // Every family has HELP then TYPE, once, before its samples.
        let mut seen = std::collections::HashSet::new();
        for (i, line) in l.iter().enumerate() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(seen.insert(name.to_string()), "{name} twice");
                assert!(l[i - 1].starts_with(&format!("# HELP {name} ")));
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| seen.contains(*f)))
                    .unwrap_or(name);
                assert!(seen.contains(family), "{line} before its TYPE");
            }
        }
        // No disk, cluster or interception: no gauges for them.
        assert!(!text.contains("chacha_disk_used_bytes"));
        assert!(!text.contains("chacha_peer_up"));
        assert!(!text.contains("chacha_tls_leaves_minted_total"));
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let s = Snapshot::default();
        let h = &s.totals.response_us[0];
        h.observe(&RESPONSE_BOUNDS_US, 400); // <= 0.0005 s
        h.observe(&RESPONSE_BOUNDS_US, 2_000); // <= 0.0025 s
        h.observe(&RESPONSE_BOUNDS_US, 120_000_000); // beyond the last bound
        let text = render(&s);
        let l = lines(&text);
        let b = |le: &str| format!("chacha_response_seconds_bucket{{op=\"hit\",le=\"{le}\"}}");
        assert!(l.contains(&format!("{} 1", b("0.0005")).as_str()));
        assert!(l.contains(&format!("{} 1", b("0.001")).as_str()));
        assert!(l.contains(&format!("{} 2", b("0.0025")).as_str()));
        assert!(l.contains(&format!("{} 2", b("60")).as_str()));
        assert!(l.contains(&format!("{} 3", b("+Inf")).as_str()));
        assert!(l.contains(&"chacha_response_seconds_sum{op=\"hit\"} 120.0024"));
        assert!(l.contains(&"chacha_response_seconds_count{op=\"hit\"} 3"));
        // The speed histogram keeps the original's bounds, in bytes per second.
        assert!(text.contains(
            "chacha_transfer_speed_bytes_per_second_bucket{op=\"fill\",le=\"100000000\"} 0"
        ));
        assert!(text.contains(
            "chacha_transfer_speed_bytes_per_second_bucket{op=\"fill\",le=\"40000000000\"} 0"
        ));
    }

    #[test]
    fn gauges_from_shared_state() {
        let s = Snapshot {
            disk: Some(Disk {
                used: 10,
                limit: 100,
                entries: 2,
                fills_in_flight: 1,
                readers_waiting: 4,
            }),
            peers: Some(vec![
                ("10.0.0.1:8080".into(), true),
                ("[::1]:8080".into(), false),
            ]),
            peer_changes: Some(vec![("[::1]:8080".into(), 3)]),
            leaves_minted: Some(5),
            scan: Some(Duration::from_millis(1500)),
            ..Default::default()
        };
        s.totals.connections_opened.add(5);
        s.totals.connections_closed.add(2);
        let text = render(&s);
        let l = lines(&text);
        for want in [
            "chacha_disk_used_bytes 10",
            "chacha_disk_limit_bytes 100",
            "chacha_cache_entries 2",
            "chacha_fills_in_flight 1",
            "chacha_fill_readers_waiting 4",
            "chacha_startup_scan_seconds 1.5",
            "chacha_client_connections 3",
            "chacha_client_connections_total 5",
            "chacha_tls_leaves_minted_total 5",
            "chacha_peer_up{peer=\"10.0.0.1:8080\"} 1",
            "chacha_peer_up{peer=\"[::1]:8080\"} 0",
            "chacha_peer_state_changes_total{peer=\"[::1]:8080\"} 3",
            "chacha_kv_requests_total{kind=\"get\",result=\"ok\"} 0",
        ] {
            assert!(l.contains(&want), "missing {want} in\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
