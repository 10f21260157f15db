//! Merged revalidations that keep "always validating" intact.
//!
//! Every cached request is validated with the origin (RFC 9111 §4.3). Requests for the
//! same entry whose conditional request would be **byte-identical** (same method, URL,
//! `Authorization`, `Cookie` and every other end-to-end field that reaches the origin,
//! the same stored validators; the client's own conditionals and `Range` are not sent,
//! chacha evaluates them itself, RFC 9111 §4.3.2) share one conditional request, but only
//! one **sent after each of them arrived**: the origin's answer to it is the answer it
//! would have given each of them (RFC 9110 §9.2.1: GET is safe; the origin sees the very
//! same bytes, later than each client's request arrived), so no client is ever answered
//! by a validation older than its request, nor by one made with other credentials.
//!
//! Per core (thread-per-core: no lock, no shared atomic), a map keyed by the entry's key
//! and the exact bytes of the conditional request (built by the same writer that sends
//! it, so "byte-identical" holds by construction) holds a group of at most two rounds:
//! - the round **in flight**: its request is sent; nobody joins it any more;
//! - the round **queued**: its first request (the leader) waits for the in-flight round
//!   to end; every identical request arriving meanwhile joins it. When the in-flight
//!   round ends, the queued leader sends its request (after all its members arrived),
//!   its round becomes the one in flight, and later arrivals form the next queue.
//!
//! What members get: a `304` (the hot path) is shared, unless it sets a cookie or is
//! `private`/`no-store`: each member serves its own entry from its own storage and
//! answers its own conditionals and `Range`. An upstream error
//! before any response (connect, timeout, reset) is the same for the same bytes: each
//! member answers it with the same status (502/504). Anything else (a new `200`, a `401`,
//! a `5xx`, ...) is the leader's alone: each member then sends its own request, as
//! without merging, so a response body is never handed to another client.
//!
//! A single request with no identical one in flight costs one map insert and one remove.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use monoio::io::AsyncReadRent;

use super::validate::conditional_head;
use super::Worker;
use crate::cache::policy::Validators;
use crate::http::uri::{Scheme, Uri};
use crate::http::{BodyKind, RequestHead, ResponseHead};
use crate::stream::{BodyReader, BufConn};
use crate::upstream::{
    pool_key, send_upstream, ExchangeError, SendFailure, UpstreamConn, UpstreamError,
};

/// How a request was validated. (Unboxed: boxing the common variant would cost an
/// allocation per request; the value lives on the request's stack for a moment.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum Validated {
    /// Its own request: the connection and the origin's response head.
    Own(UpstreamConn, ResponseHead),
    /// A `304` to the identical request another client's leader sent after this request
    /// arrived: serve the held entry.
    Shared(Rc<ResponseHead>),
}

/// Sends the conditional request for `req` (see [`conditional_head`]), merged with the
/// identical requests for the entry of `key` that arrive before it is sent. Without
/// `validators` (nothing held: a miss) the request goes out alone; misses are merged by
/// the fill's single-flight instead.
pub(crate) async fn revalidate<C: AsyncReadRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    uri: &Uri,
    validators: Option<&Validators>,
    key: &str,
    w: &Worker,
) -> Result<Validated, SendFailure> {
    let Some(validators) = validators else {
        let head = conditional_head(req, uri, None, Vec::with_capacity(512));
        return send_own(client, &head, uri, w).await;
    };
    // The group's key: the entry, the origin's scheme and port (the head's Host may
    // leave the port out), then the exact head bytes sent.
    let mut group = Vec::with_capacity(key.len() + 600);
    group.extend_from_slice(key.as_bytes());
    group.push(0);
    group.push(u8::from(uri.scheme == Scheme::Https));
    group.extend_from_slice(&uri.port_or_default().to_be_bytes());
    let prefix = group.len();
    let group = conditional_head(req, uri, Some(validators), group);
    let group: Rc<[u8]> = group.into();
    match join(&group) {
        Role::Lead(round) => {
            let guard = Leader {
                group: group.clone(),
                round,
                done: false,
            };
            lead(client, uri, &group[prefix..], guard, w).await
        }
        Role::Queue(round, ahead) => {
            log::debug!(
                "merge: {} waits for the next validation (leads it)",
                req.target
            );
            // From here on its members are answered on every path, also when this
            // future is dropped (they then send their own requests).
            let guard = Leader {
                group: group.clone(),
                round,
                done: false,
            };
            // Bounded: the round ahead ends within its own bounds (its leader's
            // connect and head timeouts); past them this one goes anyway.
            let _ = monoio::time::timeout(bound(w), ahead.done()).await;
            drop(ahead);
            promote(&group, &guard.round);
            lead(client, uri, &group[prefix..], guard, w).await
        }
        Role::Member(round) => {
            log::debug!(
                "merge: {} waits for the next validation (joined)",
                req.target
            );
            // Bounded as the leader's wait plus its own exchange.
            let answer = monoio::time::timeout(bound(w) * 2, round.done()).await;
            drop(round);
            match answer {
                Ok(Answer::NotModified(resp)) => {
                    crate::metrics::validation_merged();
                    Ok(Validated::Shared(resp))
                }
                Ok(Answer::Failed(e)) => Err(SendFailure {
                    error: ExchangeError::Upstream(copy_error(&e)),
                    close_client: false,
                }),
                // Not shareable (or the leader went away): this request's own.
                Ok(Answer::Own) | Err(_) => send_own(client, &group[prefix..], uri, w).await,
            }
        }
    }
}

/// How long the rounds ahead of a request may take: one exchange's connect and head
/// timeouts, and a second of slack.
fn bound(w: &Worker) -> Duration {
    w.timeouts.connect + w.timeouts.upstream_head + Duration::from_secs(1)
}

async fn send_own<C: AsyncReadRent>(
    client: &mut BufConn<C>,
    head: &[u8],
    uri: &Uri,
    w: &Worker,
) -> Result<Validated, SendFailure> {
    let mut no_body = BodyReader::new(BodyKind::None);
    let (up, resp) = send_upstream(client, head, &pool_key(uri), &mut no_body, w).await?;
    Ok(Validated::Own(up, resp))
}

/// Sends the round's request (`head`) and publishes what its members may share; the
/// guard publishes also when this future is dropped half-way.
async fn lead<C: AsyncReadRent>(
    client: &mut BufConn<C>,
    uri: &Uri,
    head: &[u8],
    mut guard: Leader,
    w: &Worker,
) -> Result<Validated, SendFailure> {
    let mut no_body = BodyReader::new(BodyKind::None);
    let res = send_upstream(client, head, &pool_key(uri), &mut no_body, w).await;
    let answer = match &res {
        _ if guard.round.members.get() == 0 => Answer::Own,
        Ok((_, resp)) if resp.status == 304 && shareable(resp) => {
            Answer::NotModified(Rc::new(resp.clone()))
        }
        Ok(_) => Answer::Own,
        Err(SendFailure {
            error: ExchangeError::Upstream(e),
            ..
        }) => Answer::Failed(Rc::new(copy_error(e))),
        Err(_) => Answer::Own,
    };
    guard.finish(answer);
    res.map(|(up, resp)| Validated::Own(up, resp))
}

/// Whether a 304 may answer the round's other members: not one that sets a cookie (a
/// session id minted per response would go to several clients) or is meant for one
/// user (`private`, `no-store`: RFC 9111 §5.2.2.5, §5.2.2.7); those go to their sender
/// only, the members send their own requests.
fn shareable(not_modified: &ResponseHead) -> bool {
    let h = &not_modified.headers;
    // Any mention (also `private="field"`) counts: a false alarm costs only the merge.
    let mentions =
        |v: &[u8], what: &[u8]| v.windows(what.len()).any(|w| w.eq_ignore_ascii_case(what));
    !h.contains("set-cookie")
        && !h
            .get_all("cache-control")
            .any(|v| mentions(v, b"private") || mentions(v, b"no-store"))
}

/// What a round's members get.
#[derive(Clone)]
enum Answer {
    NotModified(Rc<ResponseHead>),
    Failed(Rc<UpstreamError>),
    /// Send your own request.
    Own,
}

/// One conditional request and the requests waiting for its answer.
struct Round {
    answer: RefCell<Option<Answer>>,
    waiters: RefCell<Vec<Waker>>,
    /// Requests that joined it (besides its leader).
    members: Cell<usize>,
}

impl Round {
    fn new() -> Rc<Round> {
        Rc::new(Round {
            answer: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
            members: Cell::new(0),
        })
    }

    /// Its answer, once published.
    async fn done(&self) -> Answer {
        poll_fn(|cx| {
            if let Some(a) = &*self.answer.borrow() {
                return Poll::Ready(a.clone());
            }
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    fn publish(&self, answer: Answer) {
        *self.answer.borrow_mut() = Some(answer);
        for w in self.waiters.take() {
            w.wake();
        }
    }
}

/// The rounds of one (entry, request bytes): at least one of them is set while the
/// group is in the map.
#[derive(Default)]
struct Group {
    in_flight: Option<Rc<Round>>,
    queued: Option<Rc<Round>>,
}

enum Role {
    /// Nothing in flight: send now.
    Lead(Rc<Round>),
    /// A round is in flight: lead the queued one once the one ahead ends.
    Queue(Rc<Round>, Rc<Round>),
    /// A queued round exists: wait for its answer.
    Member(Rc<Round>),
}

thread_local! {
    /// This core's groups.
    static GROUPS: RefCell<HashMap<Rc<[u8]>, Group>> = RefCell::new(HashMap::new());
}

fn join(group: &Rc<[u8]>) -> Role {
    GROUPS.with_borrow_mut(|groups| {
        let g = groups.entry(group.clone()).or_default();
        match (&g.in_flight, &g.queued) {
            (_, Some(q)) => {
                q.members.set(q.members.get() + 1);
                Role::Member(q.clone())
            }
            (Some(ahead), None) => {
                let round = Round::new();
                g.queued = Some(round.clone());
                Role::Queue(round, ahead.clone())
            }
            (None, None) => {
                let round = Round::new();
                g.in_flight = Some(round.clone());
                Role::Lead(round)
            }
        }
    })
}

/// The queued `round` is about to send: it becomes the round in flight, and nobody joins
/// it any more.
fn promote(group: &Rc<[u8]>, round: &Rc<Round>) {
    GROUPS.with_borrow_mut(|groups| {
        let g = groups.entry(group.clone()).or_default();
        if g.queued.as_ref().is_some_and(|q| Rc::ptr_eq(q, round)) {
            g.queued = None;
        }
        g.in_flight = Some(round.clone());
    })
}

/// A round's leader: publishes its answer once, and takes the round out of its group
/// (a queued round's members then wake with [`Answer::Own`] if it never sent).
struct Leader {
    group: Rc<[u8]>,
    round: Rc<Round>,
    done: bool,
}

impl Leader {
    fn finish(&mut self, answer: Answer) {
        self.done = true;
        GROUPS.with_borrow_mut(|groups| {
            if let Some(g) = groups.get_mut(&self.group) {
                let mine =
                    |r: &Option<Rc<Round>>| r.as_ref().is_some_and(|r| Rc::ptr_eq(r, &self.round));
                if mine(&g.in_flight) {
                    g.in_flight = None;
                }
                if mine(&g.queued) {
                    g.queued = None;
                }
                if g.in_flight.is_none() && g.queued.is_none() {
                    groups.remove(&self.group);
                }
            }
        });
        self.round.publish(answer);
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Answer::Own);
        }
    }
}

/// The same error for another member (the variants hold text and durations).
fn copy_error(e: &UpstreamError) -> UpstreamError {
    match e {
        UpstreamError::Resolve(s) => UpstreamError::Resolve(s.clone()),
        UpstreamError::Connect(s) => UpstreamError::Connect(s.clone()),
        UpstreamError::ConnectTimeout(d) => UpstreamError::ConnectTimeout(*d),
        UpstreamError::HeadTimeout(d) => UpstreamError::HeadTimeout(*d),
        UpstreamError::Closed(s) => UpstreamError::Closed(s.clone()),
        UpstreamError::Protocol(s) => UpstreamError::Protocol(s.clone()),
        UpstreamError::Tls(s) => UpstreamError::Tls(s.clone()),
        UpstreamError::Denied(s) => UpstreamError::Denied(s.clone()),
    }
}
