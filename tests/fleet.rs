//! Issue 14 (scale-out): `scripts/fleet-sim.sh` in a small mode — an origin host, two chacha
//! hosts in a cluster and two runner hosts, each in its own network namespace on a bridge,
//! addresses from 198.18.0.0/15 only, links shaped with tbf — run as a real test, with
//! direct-connect off, on, and with chacha host 0 killed mid-pull: every pull completes
//! with every blob's SHA-256 verified and no failure reaching a runner, the origin sends
//! the image about once for the whole cluster (at most two full-body fetches of a blob
//! across the kill; its first response of every blob is cut, so chacha resumes with
//! `Range`, RFC 9110 §14.2; runners' transfers are cut too and resumed through chacha),
//! direct-connect redirects runners to owners, and the teardown leaves no namespace,
//! bridge or veth behind.
//!
//! Needs root and iproute2 (`ip netns`, `tc`), as CI has (.ci/run installs iproute2): without
//! them the test FAILS saying so; it never passes silently.

mod common;

use common::netns::{self, links, namespaces};
use common::registry::pull_bin;
use common::{with_deadline, TempDir};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(280);
const RUNNERS: u64 = 2;
const LAYERS: u64 = 4;
const LAYER_MIB: u64 = 16;

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn small_fleet_pulls_complete_origin_sends_image_once_and_teardown_is_clean() {
    // Preconditions, checked loudly: this test is part of CI.
    netns::require("tests/fleet.rs", &[("python3", "the origin host")]);

    let chacha = env!("CARGO_BIN_EXE_chacha").to_string();
    let pull = pull_bin();
    let root = env!("CARGO_MANIFEST_DIR").to_string();
    // A prefix of our own (namespace names), so parallel runs and leftovers never mix.
    let prefix = format!("fst{}", std::process::id() % 100_000);
    assert!(namespaces(&prefix).is_empty());
    let links_before = links();
    let out = TempDir::new("fleet");
    let out_dir = out.path().to_path_buf();
    let p = prefix.clone();
    with_deadline(DEADLINE, move || {
        let run = Command::new("timeout")
            .args(["250", "bash"])
            .arg(Path::new(&root).join("scripts/fleet-sim.sh"))
            .env("FLEET_PREFIX", &p)
            .env("NODES", "2")
            .env("RUNNERS", RUNNERS.to_string())
            .env("LAYERS", LAYERS.to_string())
            .env("LAYER_MIB", LAYER_MIB.to_string())
            .env("DIRECT_CONNECT", "off on")
            .env("KILL_RUN", "1")
            .env("KILL_N", "2")
            .env("CHACHA_RATE", "400mbit")
            .env("ORIGIN_RATE", "200mbit")
            // The storage cuts its first response of every blob; runners cut theirs too.
            .env("ORIGIN_CUT_AT", "3000000")
            .env("CUT_EVERY", "10MiB")
            .env("PULL_TIMEOUT", "120")
            .env("CHACHA_BIN", &chacha)
            .env("PULL_BIN", &pull)
            .env("OUT", &out_dir)
            .env("RUST_LOG", "warn")
            .output()
            .expect("running scripts/fleet-sim.sh");
        let stderr = String::from_utf8_lossy(&run.stderr);
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "fleet-sim.sh failed ({:?}):\n{stdout}\n{stderr}",
            run.status
        );

        let results = std::fs::read_to_string(out_dir.join("results.jsonl")).unwrap();
        let rows: Vec<Value> = results
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // N=2 with direct-connect off, on, then the kill run (host 0 killed mid-pull,
        // runners through host 1).
        assert_eq!(rows.len(), 3, "three runs:\n{results}");
        let image = n(&rows[0]["image_bytes"]);
        assert!(image > (LAYERS * LAYER_MIB) << 20, "{results}");
        for (r, (dc, kill)) in rows
            .iter()
            .zip([("off", false), ("on", false), ("off", true)])
        {
            let ctx = format!("{r}\n{stderr}");
            assert_eq!(n(&r["nodes"]), 2, "{ctx}");
            assert_eq!(r["direct_connect"], dc, "{ctx}");
            assert_eq!(r["kill"], kill, "{ctx}");
            // Every pull complete, every blob verified against its digest exactly once per
            // runner, no pull exited non-zero.
            assert_eq!(n(&r["pulls_ok"]), RUNNERS, "{ctx}");
            assert_eq!(n(&r["pulls_failed"]), 0, "{ctx}");
            assert_eq!(r["blobs_verified"], Value::Bool(true), "{ctx}");
            assert!(
                r["exit_codes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|c| n(c) == 0),
                "{ctx}"
            );
            assert_eq!(n(&r["bytes"]), RUNNERS * image, "{ctx}");
            // The cuts happened and were resumed: the storage's first response of every
            // layer was cut (chacha resumed each with a Range request), and every runner's
            // transfer of every layer was cut once at 10 MiB and resumed through chacha
            // with a 206 (or at the owner, after a direct-connect redirect).
            assert_eq!(n(&r["origin_cuts"]), LAYERS, "{ctx}");
            assert!(n(&r["origin_full_ranged_304"][1]) >= LAYERS, "{ctx}");
            assert_eq!(n(&r["client_cuts"]), RUNNERS * LAYERS, "{ctx}");
            assert!(n(&r["runner_206s"]) >= RUNNERS * LAYERS, "{ctx}");
            // No failure reached a runner: no retries beyond the injected cuts. Across a
            // node's death the bar is 0 failed pulls (above); a transfer cut by
            // the death and resumed by the runner (Tart resumes too) shows here, printed.
            if kill {
                eprintln!("kill run: {} runner retries", n(&r["retries"]));
            } else {
                assert_eq!(n(&r["retries"]), 0, "{ctx}");
            }
            // The origin sent about one image for the whole cluster (resumes included):
            // one full-body fetch per blob. Across an owner's death at most two full-body
            // fetches per blob (issue 14): the one the death cut and the stand-in's. The
            // bytes then also count the ranged requests that continued the responses the
            // death cut (RFC 9110 §14.2), which a byte bound of two images missed in about
            // 1 run in 8 (2.19 images, with two full fetches per blob at most); three
            // images is the sanity bound there.
            let origin = n(&r["origin_bytes"]);
            let max_full = if kill { 2 } else { 1 };
            assert!(
                n(&r["origin_full_per_blob_max"]) <= max_full,
                "a blob was fetched whole more than {max_full} time(s): {ctx}"
            );
            let max_tenths = if kill { 30 } else { 11 };
            assert!(
                origin >= image && origin * 10 <= image * max_tenths,
                "origin sent {origin} bytes for an image of {image}: {ctx}"
            );
            if dc == "on" {
                // Direct-connect acted: runners were redirected to owners.
                assert!(n(&r["chacha_307s"]) > 0, "{ctx}");
            }
        }
        // The table was written.
        let table = std::fs::read_to_string(out_dir.join("table.md")).unwrap();
        assert!(table.contains("| 2 | off | - | 2/0 |"), "{table}");
        assert!(table.contains("| 2 | on | - | 2/0 |"), "{table}");
    });
    let left = namespaces(&prefix);
    assert!(left.is_empty(), "teardown left namespaces {left:?}");
    // The bridge and veths live inside the namespaces: the default namespace never got one.
    let new: Vec<_> = links().difference(&links_before).cloned().collect();
    assert!(
        new.is_empty(),
        "links left in the default namespace: {new:?}"
    );
    drop(out);
}
