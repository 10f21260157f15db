//! The `Cache-Status` response field (RFC 9211) chacha adds to every proxied response.
//!
//! Chacha validates every stored entry with the origin before serving it. Strictly, RFC 9211
//! §2.1 calls a response a hit only "as long as it did not go forward (e.g., for
//! validation)"; chacha still reports a body served from its disk after a 304 as `hit`,
//! because that is what operators grep for and every request forwards anyway (the
//! original's users read it that way too).
//! The value is one list member: the cache identifier, then `;`-separated parameters
//! (an RFC 8941 sf-list); `true` booleans are written bare (`stored`, `collapsed`).

use super::policy::NotStorable;
use crate::metrics::CacheCount;

/// The identifier of this cache in `Cache-Status` (RFC 9211 §2).
pub const CACHE_NAME: &str = "chacha";

/// What happened to one proxied request, from the cache's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The stored entry was validated by the origin (304) and served from the cache.
    Revalidated,
    /// The origin answered 200 and the response was stored; `replaced` when it replaced an
    /// entry that failed validation.
    Stored { replaced: bool },
    /// The origin's response was relayed without storing it. `had_entry` when an entry
    /// existed (it failed validation); `status` is the origin's status.
    NotStored {
        had_entry: bool,
        status: u16,
        reason: NotStorable,
    },
    /// The origin could not be reached or answered garbage; chacha answered with an error.
    UpstreamError { had_entry: bool },
    /// Served from another request's in-flight fill of the same key (read-while-write).
    Collapsed,
    /// A storable 200 relayed without storing it, for a reason of the cache's own.
    NotFilled(NotFilled),
    /// Cluster mode: relayed uncached because the key's owner is unreachable; `status`
    /// is the origin's.
    OwnerUnreachable { status: u16 },
}

/// Why a storable 200 was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFilled {
    /// Another request was already filling the key.
    FillInProgress,
    /// The fill file could not be created.
    DiskError,
}

/// RFC 9211 §2.2 `fwd` values chacha uses.
fn fwd(had_entry: bool) -> &'static str {
    // `stale`: an entry was selected but could not be used without going forward;
    // `uri-miss`: no entry for this URI.
    if had_entry {
        "stale"
    } else {
        "uri-miss"
    }
}

impl Outcome {
    /// What `chacha_cache_outcomes_total` / `chacha_cache_not_stored_total` count for it
    /// (indices into `metrics::OUTCOMES` / `metrics::NOT_STORED_REASONS`); `stored` and
    /// `replaced` are counted at commit instead.
    fn count(&self) -> CacheCount {
        match *self {
            Outcome::Revalidated => CacheCount::Outcome(0),
            Outcome::Collapsed => CacheCount::Outcome(1),
            // Counted when the entry is committed (`metrics::entry_stored`): the header
            // goes out before the body, which may still fail.
            Outcome::Stored { .. } => CacheCount::Nothing,
            Outcome::NotStored { reason, .. } => CacheCount::NotStored(match reason {
                NotStorable::Method => 0,
                NotStorable::Status => 1,
                NotStorable::NoStoreRequest => 2,
                NotStorable::NoStoreResponse => 3,
                NotStorable::Private => 4,
                NotStorable::PragmaNoCache => 5,
                NotStorable::Vary => 6,
                NotStorable::Authorization => 7,
                NotStorable::NoValidator => 8,
                NotStorable::TooLarge => 9,
            }),
            Outcome::NotFilled(NotFilled::FillInProgress) => CacheCount::NotStored(10),
            Outcome::NotFilled(NotFilled::DiskError) => CacheCount::NotStored(11),
            Outcome::OwnerUnreachable { .. } => CacheCount::NotStored(12),
            Outcome::UpstreamError { .. } => CacheCount::Nothing,
        }
    }

    /// The `Cache-Status` field value, e.g. `chacha; fwd=uri-miss; fwd-status=200; stored`.
    /// Every proxied response's value is made here, once: this is also where the outcome
    /// is counted (`chacha_cache_outcomes_total`, `chacha_cache_not_stored_total`).
    pub fn header_value(&self) -> String {
        crate::metrics::cache_outcome(self.count());
        match *self {
            Outcome::Revalidated => format!("{CACHE_NAME}; hit"),
            Outcome::Stored { replaced } => {
                let fwd = if replaced { "stale" } else { "miss" };
                format!("{CACHE_NAME}; fwd={fwd}; fwd-status=200; stored")
            }
            Outcome::NotStored {
                had_entry,
                status,
                reason,
            } => {
                // §2.2 `method`: the request method's semantics require forwarding.
                let fwd = if reason == NotStorable::Method {
                    "method"
                } else {
                    fwd(had_entry)
                };
                format!(
                    "{CACHE_NAME}; fwd={fwd}; fwd-status={status}; detail={}",
                    reason.detail()
                )
            }
            // No fwd-status: there was no response from the next hop (§2.3).
            Outcome::UpstreamError { had_entry } => {
                format!(
                    "{CACHE_NAME}; fwd={}; detail=upstream-error",
                    fwd(had_entry)
                )
            }
            // §2.5: `collapsed` is only meaningful with `fwd`; `miss` because the waiter
            // cannot tell whether the filler had a stale entry.
            Outcome::Collapsed => format!("{CACHE_NAME}; hit; collapsed"),
            Outcome::NotFilled(why) => {
                let detail = match why {
                    NotFilled::FillInProgress => "fill-in-progress",
                    NotFilled::DiskError => "disk-error",
                };
                format!("{CACHE_NAME}; fwd=miss; fwd-status=200; detail={detail}")
            }
            Outcome::OwnerUnreachable { status } => {
                format!("{CACHE_NAME}; fwd=uri-miss; fwd-status={status}; detail=owner-unreachable")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values() {
        let cases: &[(Outcome, &str)] = &[
            (Outcome::Revalidated, "chacha; hit"),
            (
                Outcome::Stored { replaced: false },
                "chacha; fwd=miss; fwd-status=200; stored",
            ),
            (
                Outcome::Stored { replaced: true },
                "chacha; fwd=stale; fwd-status=200; stored",
            ),
            (
                Outcome::NotStored {
                    had_entry: false,
                    status: 200,
                    reason: NotStorable::NoValidator,
                },
                "chacha; fwd=uri-miss; fwd-status=200; detail=no-validator",
            ),
            (
                Outcome::NotStored {
                    had_entry: true,
                    status: 404,
                    reason: NotStorable::Status,
                },
                "chacha; fwd=stale; fwd-status=404; detail=status",
            ),
            (
                Outcome::NotStored {
                    had_entry: false,
                    status: 201,
                    reason: NotStorable::Method,
                },
                "chacha; fwd=method; fwd-status=201; detail=method",
            ),
            (
                Outcome::NotStored {
                    had_entry: false,
                    status: 200,
                    reason: NotStorable::TooLarge,
                },
                "chacha; fwd=uri-miss; fwd-status=200; detail=too-large",
            ),
            (
                Outcome::UpstreamError { had_entry: false },
                "chacha; fwd=uri-miss; detail=upstream-error",
            ),
            (
                Outcome::UpstreamError { had_entry: true },
                "chacha; fwd=stale; detail=upstream-error",
            ),
            (Outcome::Collapsed, "chacha; hit; collapsed"),
            (
                Outcome::NotFilled(NotFilled::FillInProgress),
                "chacha; fwd=miss; fwd-status=200; detail=fill-in-progress",
            ),
            (
                Outcome::NotFilled(NotFilled::DiskError),
                "chacha; fwd=miss; fwd-status=200; detail=disk-error",
            ),
            (
                Outcome::OwnerUnreachable { status: 404 },
                "chacha; fwd=uri-miss; fwd-status=404; detail=owner-unreachable",
            ),
        ];
        for (outcome, want) in cases {
            assert_eq!(outcome.header_value(), *want, "{outcome:?}");
        }
    }

    /// Every detail must be an sf-token (RFC 8941 §3.3.4) so it can go unquoted.
    #[test]
    fn details_are_sf_tokens() {
        use NotStorable::*;
        for reason in [
            Method,
            Status,
            NoStoreRequest,
            NoStoreResponse,
            Private,
            PragmaNoCache,
            Vary,
            Authorization,
            NoValidator,
            TooLarge,
        ] {
            let d = reason.detail().as_bytes();
            assert!(d[0].is_ascii_alphabetic(), "{reason:?}");
            assert!(
                d.iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(b)),
                "{reason:?}"
            );
        }
    }
}
