//! Integration-test infrastructure: an in-test origin, a harness around the real
//! `chacha` binary, a raw HTTP/1.1 client, a generated-body source/verifier and a
//! per-test deadline. Every socket has timeouts; everything binds 127.0.0.1:0.

// Each test file uses a different subset of these helpers.
#![allow(dead_code, unused_imports)]

pub mod access;
pub mod cached;
pub mod chacha;
pub mod client;
pub mod cluster;
pub mod gate;
pub mod gen;
pub mod kv;
pub mod netns;
pub mod origin;
pub mod raw_origin;
pub mod registry;
pub mod reload;
pub mod tls;
pub mod wire;

pub use chacha::{run_to_exit, Chacha, Outcome, TempDir};
pub use client::{get, get_with, request, request_with, ClientError, Conn, Head, Response};
pub use origin::{Body, Fault, Origin, Request};

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// A minimal valid config: ephemeral port, one worker, a fresh cache dir, no rules.
/// `extra` is appended verbatim (top-level YAML keys).
pub fn config(extra: &str) -> String {
    format!(
        "addr: 127.0.0.1:0\nworkers: 1\ndisk:\n  dir: \"{}\"\n  limit: 100MB\n{extra}",
        chacha::DIR_PLACEHOLDER
    )
}

/// Runs `f` on its own thread and fails the test if it has not finished within `limit`.
/// Panics inside `f` are re-raised here. A timed-out body is abandoned; any chacha it
/// spawned dies with its thread at process exit (PR_SET_PDEATHSIG).
pub fn with_deadline<F: FnOnce() + Send + 'static>(limit: Duration, f: F) {
    let (tx, rx) = mpsc::channel::<()>();
    let name = thread::current().name().unwrap_or("test").to_string();
    let handle = thread::Builder::new()
        .name(name)
        .spawn(move || {
            // Dropped on return or unwind: either way the waiter wakes.
            let _done = tx;
            f();
        })
        .unwrap();
    match rx.recv_timeout(limit) {
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test exceeded its deadline of {limit:?}"),
        _ => {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}
