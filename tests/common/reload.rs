//! Live reload from a test: rewrite a running chacha's config file, send SIGHUP, wait
//! for the line that ends the reload (`reload: ...` when applied, `reload rejected: ...`
//! when not).

use std::time::Duration;

use super::cached::wait_until;
use super::chacha::DIR_PLACEHOLDER;
use super::Chacha;

/// How long a reload may take.
pub const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// Whether `line` is the one line that ends a reload.
pub fn is_reload_end(line: &str) -> bool {
    line.contains("reload: ") || line.contains("reload rejected: ")
}

/// The lines of `log` that end a reload, in order.
pub fn reload_ends(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| is_reload_end(l))
        .map(str::to_string)
        .collect()
}

/// Writes `yaml` (`@DIR@` → the cache dir; loopback destinations allowed as
/// [`Chacha::start`] does) as `c`'s config file, sends SIGHUP and returns the line that
/// ends this reload; panics if none comes within [`RELOAD_WAIT`].
pub fn reload(c: &Chacha, yaml: &str) -> String {
    let yaml = super::chacha::with_loopback_allowed(yaml)
        .replace(DIR_PLACEHOLDER, c.dir().to_str().unwrap());
    std::fs::write(c.config_path(), yaml).unwrap();
    sighup(c)
}

/// Sends SIGHUP without touching the config; returns the line that ends the reload.
pub fn sighup(c: &Chacha) -> String {
    let before = reload_ends(&c.log()).len();
    c.signal(libc::SIGHUP);
    assert!(
        wait_until(RELOAD_WAIT, || reload_ends(&c.log()).len() > before),
        "no reload line after SIGHUP; log:\n{}",
        c.log()
    );
    reload_ends(&c.log())[before].clone()
}
