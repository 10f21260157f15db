//! Proxy authentication (`access.proxy-auth`): `Proxy-Authorization: Basic` (RFC 9110
//! §11.7.1, RFC 7617) checked against an htpasswd file of bcrypt hashes, as
//! `htpasswd -B` writes them and Squid's `basic_ncsa_auth` / nginx's
//! `auth_basic_user_file` read them.
//!
//! bcrypt is slow on purpose (tens to hundreds of milliseconds at the usual costs), so it
//! never runs on a worker's event loop: the first check of a credential runs on a
//! blocking thread, and its result is kept per core (keyed by SHA-256 of
//! `user:password`, never the password itself) for [`OK_TTL`], so a client's later
//! requests cost a hash and a map lookup. Concurrent checks of the same credential on a
//! core wait for the one verification; at most [`MAX_VERIFYING`] verifications run at
//! once in the whole process, so password guessing cannot take every blocking thread
//! (DNS lookups run there too).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::basic;

/// How long a successful verification is trusted on a core.
pub const OK_TTL: Duration = Duration::from_secs(300);
/// How long a failed one is remembered (a client retrying the same wrong password costs
/// no bcrypt).
pub const FAIL_TTL: Duration = Duration::from_secs(60);
/// Remembered credentials per core; past it the expired ones go, then all.
pub const CACHE_ENTRIES: usize = 4096;
/// bcrypt verifications in flight in the whole process (the blocking pool has
/// [`crate::driver::BLOCKING_THREADS`] threads; one stays free for DNS).
pub const MAX_VERIFYING: usize = crate::driver::BLOCKING_THREADS - 1;

/// The `Proxy-Authenticate` challenge of a 407 (RFC 9110 §11.7.1, RFC 7617 §2).
pub const CHALLENGE: &str = "Basic realm=\"chacha\", charset=\"UTF-8\"";

static VERIFYING: AtomicUsize = AtomicUsize::new(0);

/// The users of an htpasswd file: name → bcrypt hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Htpasswd {
    users: HashMap<Vec<u8>, String>,
    /// A hash of the same cost as the users' (the first one), checked for unknown user
    /// names so that they take as long as wrong passwords.
    decoy: String,
}

impl Htpasswd {
    /// Reads `path`; the error names the file and line.
    pub fn load(path: &Path) -> Result<Htpasswd, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read htpasswd file {}: {e}", path.display()))?;
        Htpasswd::parse(&text).map_err(|e| format!("{}:{e}", path.display()))
    }

    /// `user:hash` lines; blank lines and `#` comments are skipped. Only bcrypt hashes
    /// (`$2y$`, `$2b$`, `$2a$`) are accepted: the other kinds htpasswd can write (MD5
    /// `$apr1$`, `{SHA}`, crypt, plain text) are weak, so a file holding one is refused
    /// at startup rather than leaving that user locked out without a word.
    pub fn parse(text: &str) -> Result<Htpasswd, String> {
        let mut users = HashMap::new();
        let mut decoy = None;
        for (index, line) in text.lines().enumerate() {
            let n = index + 1;
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("{n}: expected user:hash"));
            };
            if user.is_empty() {
                return Err(format!("{n}: empty user name"));
            }
            // `htpasswd` writes `user:hash`; some tools append `:comment` fields.
            let hash = hash.split(':').next().unwrap_or("").trim();
            let kind = ["$2y$", "$2b$", "$2a$"]
                .iter()
                .any(|prefix| hash.starts_with(prefix));
            if !kind {
                let what = if hash.starts_with("$apr1$") {
                    "an MD5 ($apr1$) hash"
                } else if hash.starts_with("{SHA}") {
                    "a SHA-1 ({SHA}) hash"
                } else if hash.starts_with("$2x$") {
                    "a $2x$ bcrypt hash (the variant of the old crypt_blowfish bug)"
                } else {
                    "not a bcrypt hash (crypt or plain text)"
                };
                return Err(format!(
                    "{n}: user {user:?}: {what}; only bcrypt is accepted: create the entry with `htpasswd -B`"
                ));
            }
            if let Err(e) = hash.parse::<bcrypt::HashParts>() {
                return Err(format!("{n}: user {user:?}: invalid bcrypt hash: {e}"));
            }
            let cost: u32 = hash[4..6].parse().unwrap_or(0);
            if !(4..=31).contains(&cost) {
                return Err(format!(
                    "{n}: user {user:?}: bcrypt cost {cost} outside 4-31"
                ));
            }
            if users
                .insert(user.as_bytes().to_vec(), hash.to_owned())
                .is_some()
            {
                return Err(format!("{n}: user {user:?} appears twice"));
            }
            decoy.get_or_insert_with(|| hash.to_owned());
        }
        let Some(decoy) = decoy else {
            return Err(" no users (lines of user:hash, as `htpasswd -B` writes)".to_owned());
        };
        Ok(Htpasswd { users, decoy })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s (bcrypt: slow, for a blocking thread).
    pub fn verify(&self, user: &[u8], password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, &self.decoy);
                false
            }
        }
    }
}

/// Why a request is refused: 407 (no or wrong credentials) or 503 (too many
/// verifications in flight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 407 with [`CHALLENGE`]; the one-line reason.
    Unauthorized(&'static str),
    /// 503 with `Retry-After: 1`.
    Busy,
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Unauthorized(_) => 407,
            Refusal::Busy => 503,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            Refusal::Unauthorized(reason) => reason,
            Refusal::Busy => "proxy credentials: too many checks in progress, retry",
        }
    }

    /// The field the answer must carry.
    pub fn header(&self) -> (&'static str, &'static str) {
        match self {
            Refusal::Unauthorized(_) => ("Proxy-Authenticate", CHALLENGE),
            Refusal::Busy => ("Retry-After", "1"),
        }
    }
}

type Key = [u8; 32];

/// One core's verified credentials and verifications in flight (clones share them).
#[derive(Default, Clone)]
pub struct AuthCore {
    state: Rc<CoreState>,
}

#[derive(Default)]
struct CoreState {
    /// Credential key → (verified, until).
    cache: RefCell<HashMap<Key, (bool, Instant)>>,
    pending: RefCell<HashMap<Key, Rc<Slot>>>,
}

impl CoreState {
    fn remember(&self, key: Key, ok: bool) {
        let mut cache = self.cache.borrow_mut();
        let now = Instant::now();
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        let ttl = if ok { OK_TTL } else { FAIL_TTL };
        cache.insert(key, (ok, now + ttl));
    }
}

/// A verification in flight that requests wait on.
#[derive(Default)]
struct Slot {
    result: Cell<Option<Result<bool, Refusal>>>,
    wakers: RefCell<Vec<Waker>>,
}

impl Slot {
    fn finish(&self, result: Result<bool, Refusal>) {
        self.result.set(Some(result));
        for waker in self.wakers.take() {
            waker.wake();
        }
    }
}

struct Wait(Rc<Slot>);

impl Future for Wait {
    type Output = Result<bool, Refusal>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = self.0.result.take();
        match result {
            Some(result) => {
                self.0.result.set(Some(result.clone()));
                Poll::Ready(result)
            }
            None => {
                self.0.wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl AuthCore {
    /// Checks a request's `Proxy-Authorization` field (RFC 9110 §11.7.1).
    pub async fn check(&self, users: &Arc<Htpasswd>, field: Option<&[u8]>) -> Result<(), Refusal> {
        let Some(field) = field else {
            return Err(Refusal::Unauthorized("proxy authentication required"));
        };
        let Some(credentials) = basic::credentials(field) else {
            return Err(Refusal::Unauthorized(
                "Proxy-Authorization is not a valid Basic credential",
            ));
        };
        let key = key_of(credentials.as_bytes());
        let now = Instant::now();
        if let Some(&(ok, until)) = self.state.cache.borrow().get(&key) {
            if until > now {
                return verdict(ok);
            }
        }
        let slot = self.state.pending.borrow().get(&key).cloned();
        let slot = match slot {
            Some(slot) => slot,
            None => self.start(users, key, credentials)?,
        };
        verdict(Wait(slot).await?)
    }

    /// Starts verifying on a blocking thread; the task runs to its end even when every
    /// request waiting for it is gone.
    fn start(
        &self,
        users: &Arc<Htpasswd>,
        key: Key,
        credentials: basic::Credentials,
    ) -> Result<Rc<Slot>, Refusal> {
        if VERIFYING.fetch_add(1, Ordering::SeqCst) >= MAX_VERIFYING {
            VERIFYING.fetch_sub(1, Ordering::SeqCst);
            return Err(Refusal::Busy);
        }
        let slot = Rc::new(Slot::default());
        self.state.pending.borrow_mut().insert(key, slot.clone());
        let users = users.clone();
        let job = monoio::spawn_blocking(move || {
            users.verify(credentials.user(), credentials.password())
        });
        let state = self.state.clone();
        let done = slot.clone();
        monoio::spawn(async move {
            let result = job.await;
            VERIFYING.fetch_sub(1, Ordering::SeqCst);
            let result = match result {
                Ok(ok) => {
                    state.remember(key, ok);
                    Ok(ok)
                }
                // The blocking thread panicked: refuse this time, remember nothing.
                Err(_) => Err(Refusal::Busy),
            };
            state.pending.borrow_mut().remove(&key);
            done.finish(result);
        });
        Ok(slot)
    }
}

fn verdict(ok: bool) -> Result<(), Refusal> {
    if ok {
        Ok(())
    } else {
        Err(Refusal::Unauthorized("wrong proxy user name or password"))
    }
}

fn key_of(credential: &[u8]) -> Key {
    let digest = ring::digest::digest(&ring::digest::SHA256, credential);
    let mut key = [0; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bcrypt_entries_and_verifies() {
        let alice = bcrypt::hash("open sesame", 4).unwrap();
        // htpasswd -B writes $2y$; other tools $2b$ and $2a$.
        let bob = bcrypt::hash("hunter2", 4)
            .unwrap()
            .replacen("$2b$", "$2y$", 1);
        let carol = bcrypt::hash("x:y", 4).unwrap().replacen("$2b$", "$2a$", 1);
        let text = format!("# users\n\nalice:{alice}\r\nbob:{bob}\ncarol:{carol}:comment\n");
        let users = Htpasswd::parse(&text).unwrap();
        assert_eq!(users.len(), 3);
        assert!(users.verify(b"alice", b"open sesame"));
        assert!(!users.verify(b"alice", b"open sesame "));
        assert!(!users.verify(b"alice", b"hunter2"));
        assert!(users.verify(b"bob", b"hunter2"));
        assert!(users.verify(b"carol", b"x:y"));
        assert!(!users.verify(b"mallory", b"open sesame"));
        assert!(!users.verify(b"", b""));
    }

    #[test]
    fn refuses_other_hash_kinds_with_the_line() {
        let good = bcrypt::hash("pw", 4).unwrap();
        let cases = [
            (
                format!("a:{good}\nb:$apr1$abc$def\n"),
                "2: user \"b\": an MD5 ($apr1$) hash",
            ),
            (
                "a:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n".to_owned(),
                "1: user \"a\": a SHA-1",
            ),
            ("a:plain\n".to_owned(), "not a bcrypt hash"),
            (format!("a:{}\n", good.replacen("$2b$", "$2x$", 1)), "$2x$"),
            ("a:$2y$10$short\n".to_owned(), "invalid bcrypt hash"),
            (
                format!("a:{good}\na:{good}\n"),
                "2: user \"a\" appears twice",
            ),
            ("no colon\n".to_owned(), "1: expected user:hash"),
            (format!(":{good}\n"), "1: empty user name"),
            ("# nobody\n".to_owned(), "no users"),
        ];
        for (text, needle) in cases {
            let err = Htpasswd::parse(&text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn refusals_carry_the_challenge_or_retry_after() {
        let r = Refusal::Unauthorized("proxy authentication required");
        assert_eq!(r.status(), 407);
        assert_eq!(r.header(), ("Proxy-Authenticate", CHALLENGE));
        assert!(CHALLENGE.starts_with("Basic realm="));
        assert_eq!(Refusal::Busy.status(), 503);
        assert_eq!(Refusal::Busy.header(), ("Retry-After", "1"));
    }

    #[test]
    fn checks_are_cached_per_credential_and_run_off_the_event_loop() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let users = Arc::new(Htpasswd::parse(&format!("u:{hash}\n")).unwrap());
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .attach_thread_pool(Box::new(monoio::blocking::DefaultThreadPool::new(2)))
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            let core = AuthCore::default();
            let good = basic::header_value("u", "pw");
            let bad = basic::header_value("u", "nope");
            assert_eq!(
                core.check(&users, None).await,
                Err(Refusal::Unauthorized("proxy authentication required"))
            );
            assert!(matches!(
                core.check(&users, Some(b"Bearer x")).await,
                Err(Refusal::Unauthorized(_))
            ));
            // Two concurrent checks of one credential share one verification.
            let (a, b) = monoio::join!(
                core.check(&users, Some(good.as_bytes())),
                core.check(&users, Some(good.as_bytes()))
            );
            assert_eq!((a, b), (Ok(()), Ok(())));
            assert_eq!(core.state.cache.borrow().len(), 1);
            assert!(core.state.pending.borrow().is_empty());
            assert_eq!(
                core.check(&users, Some(bad.as_bytes())).await,
                Err(Refusal::Unauthorized("wrong proxy user name or password"))
            );
            assert_eq!(core.state.cache.borrow().len(), 2, "failures remembered");
            // A cached success needs no blocking thread.
            assert_eq!(core.check(&users, Some(good.as_bytes())).await, Ok(()));
        });
    }
}
