//! SIGTERM/SIGINT (and SIGHUP) are blocked in every thread and taken synchronously by
//! the main thread with sigwait, so no async-signal-safety concerns arise.
//!
//! SIGHUP is what `systemctl reload` sends (examples/chacha.service): it runs the live
//! reload ([`super::reload`]) on the main thread, never the default action (which would
//! terminate the process).

use std::io;

fn stop_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks the stop signals in the calling thread and in every thread it spawns later.
pub fn block_stop_signals() -> io::Result<()> {
    let set = stop_set();
    // SAFETY: `set` is a valid, initialised signal set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT; returns its name. Each SIGHUP meanwhile runs `on_hup`.
pub fn wait_stop_signal(on_hup: &mut dyn FnMut()) -> &'static str {
    let set = stop_set();
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: valid set and out-pointer.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc != 0 {
            continue;
        }
        match sig {
            libc::SIGINT => return "SIGINT",
            libc::SIGTERM => return "SIGTERM",
            _ => on_hup(),
        }
    }
}
