//! The always-validating decision, as a pure function: what the flow does once the origin
//! answered its conditional request (RFC 9111 §4.3: every request is validated), given
//! what the key's storage (this node's disk, or the key's owner) holds for the key. Used
//! by the one cached flow (`cached.rs`), whatever the storage.

use crate::cache::policy::{should_drop_on_status, NotStorable};

/// What the cache holds for the key when the conditional request goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// A complete entry (its validators went out).
    Entry,
    /// An entry another request is still writing (its validators went out).
    Filling,
    /// Nothing: the request went out unconditional.
    Nothing,
}

/// What to do with the origin's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// 304 on the held entry: serve it from the cache (RFC 9111 §4.3.3, §4.3.4).
    ServeEntry,
    /// 304 on the entry being written: stream it as it is written.
    ServeFill,
    /// A storable 200: store it while the client gets it (RFC 9111 §3).
    Fill,
    /// A 200 that may not be stored: relay it, cut to the client's range.
    RelayUnstored(NotStorable),
    /// Anything else: relay it as is; `drop_entry` when the answer proves the held
    /// entry gone (404/410 for exactly the URL asked, RFC 9110 §15.5.5, §15.5.11).
    Relay { drop_entry: bool },
}

/// Decides on the origin's `status`. `storable` (RFC 9111 §3) is asked only for a 200,
/// `key_exact` (whether the key covers the whole request) only when an entry could be
/// dropped, so the hot path (304 on an entry) evaluates neither.
pub fn decide(
    status: u16,
    held: Held,
    storable: impl FnOnce() -> Result<(), NotStorable>,
    key_exact: impl FnOnce() -> bool,
) -> Action {
    match (status, held) {
        (304, Held::Entry) => Action::ServeEntry,
        (304, Held::Filling) => Action::ServeFill,
        (200, _) => match storable() {
            Ok(()) => Action::Fill,
            Err(reason) => Action::RelayUnstored(reason),
        },
        (_, Held::Entry) => Action::Relay {
            drop_entry: should_drop_on_status(status, key_exact()),
        },
        _ => Action::Relay { drop_entry: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::{Fill, Relay, RelayUnstored, ServeEntry, ServeFill};
    use Held::{Entry, Filling, Nothing};

    fn run(status: u16, held: Held, storable: Result<(), NotStorable>, exact: bool) -> Action {
        decide(status, held, || storable, || exact)
    }

    /// (origin status, held, storable, key exact) → action, and the rule it follows.
    type Row = (
        u16,
        Held,
        Result<(), NotStorable>,
        bool,
        Action,
        &'static str,
    );

    /// One row per rule.
    #[test]
    fn decision_table() {
        let ok = Ok(());
        let keep = Relay { drop_entry: false };
        let no_store = NotStorable::NoStoreResponse;
        #[rustfmt::skip]
        let rows: &[Row] = &[
            (304, Entry, ok, true, ServeEntry, "RFC 9111 §4.3.4: a 304 validates the entry"),
            (304, Filling, ok, true, ServeFill, "RFC 9111 §4.3.4: it validates the entry being written"),
            (304, Nothing, ok, true, keep, "a 304 to an unconditional request is relayed"),
            (200, Nothing, ok, true, Fill, "RFC 9111 §3: a storable 200 is stored"),
            (200, Entry, ok, true, Fill, "RFC 9111 §4.3.3: a 200 replaces the entry"),
            (200, Filling, ok, true, Fill, "a 200 to a joined fill is newer than the fill"),
            (200, Entry, Err(no_store), true, RelayUnstored(no_store), "RFC 9111 §5.2.2.5: no-store"),
            (200, Nothing, Err(NotStorable::Vary), true, RelayUnstored(NotStorable::Vary), "Vary is not stored"),
            (404, Entry, ok, true, Relay { drop_entry: true }, "RFC 9110 §15.5.5: a 404 for the exact URL drops the entry"),
            (410, Entry, ok, true, Relay { drop_entry: true }, "RFC 9110 §15.5.11: a 410 drops the entry"),
            (404, Entry, ok, false, keep, "a 404 to a request the key does not cover keeps the entry"),
            (403, Entry, ok, true, keep, "a 403 says nothing about the resource"),
            (500, Entry, ok, true, keep, "RFC 9111 §4.3.3: a 5xx does not replace the entry"),
            (404, Nothing, ok, true, keep, "nothing to drop"),
            (404, Filling, ok, true, keep, "a fill in progress is not dropped"),
            (206, Entry, ok, true, keep, "a 206 (no Range was sent) is relayed"),
        ];
        for (status, held, storable, exact, want, rule) in rows {
            assert_eq!(run(*status, *held, *storable, *exact), *want, "{rule}");
        }
    }

    #[test]
    fn the_hot_path_evaluates_nothing_else() {
        let a = decide(
            304,
            Entry,
            || panic!("storable asked"),
            || panic!("exact asked"),
        );
        assert_eq!(a, ServeEntry);
        let a = decide(
            500,
            Nothing,
            || panic!("storable asked"),
            || panic!("exact asked"),
        );
        assert_eq!(a, Relay { drop_entry: false });
    }
}
