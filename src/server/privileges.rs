//! `chacha run --user NAME`: dropping root after the listeners are bound and the CA
//! is loaded.
//!
//! The drop goes supplementary groups (getgrouplist + setgroups), then the group, then
//! the user, and is verified afterwards (the ids read back, and `setuid(0)` must fail).
//! glibc applies setgroups/setgid/setuid to every thread of the process (its setxid
//! broadcast), and chacha drops before it starts the worker threads anyway.

use std::ffi::{CStr, CString};
use std::io;
use std::path::Path;

/// A user to run as, looked up in the user database (getpwnam_r).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Supplementary groups from the group database, the primary group included.
    pub groups: Vec<libc::gid_t>,
}

impl User {
    /// Looks `name` up; the error is one line naming it.
    pub fn lookup(name: &str) -> Result<User, String> {
        let c_name =
            CString::new(name).map_err(|_| format!("--user {name:?}: not a valid user name"))?;
        let mut buf = vec![0u8; 16 * 1024];
        // SAFETY: passwd is plain old data; getpwnam_r fills it with pointers into `buf`.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        loop {
            // SAFETY: all pointers are valid for the stated lengths.
            let rc = unsafe {
                libc::getpwnam_r(
                    c_name.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                )
            };
            if rc == libc::ERANGE && buf.len() < 1 << 20 {
                buf.resize(buf.len() * 2, 0);
                continue;
            }
            if rc != 0 {
                return Err(format!(
                    "--user {name}: cannot look the user up: {}",
                    io::Error::from_raw_os_error(rc)
                ));
            }
            break;
        }
        if result.is_null() {
            return Err(format!("--user {name}: no such user"));
        }
        let (uid, gid) = (pwd.pw_uid, pwd.pw_gid);
        let groups = group_list(&c_name, gid)
            .map_err(|e| format!("--user {name}: cannot list its groups: {e}"))?;
        Ok(User {
            name: name.to_string(),
            uid,
            gid,
            groups,
        })
    }
}

/// getgrouplist(3): the groups `name` belongs to, `gid` included.
fn group_list(name: &CStr, gid: libc::gid_t) -> io::Result<Vec<libc::gid_t>> {
    let mut n: libc::c_int = 32;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let mut count = n;
        // SAFETY: `groups` holds `count` entries; getgrouplist writes at most that many
        // and sets `count` to the number needed.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count as usize);
            return Ok(groups);
        }
        if count <= n {
            // glibc returns -1 with an unchanged count only on failure.
            n *= 2;
            if n > 65_536 {
                return Err(io::Error::other("too many groups"));
            }
        } else {
            n = count;
        }
    }
}

/// Drops to `user`: supplementary groups, group, user; then checks the drop took.
/// Needs root (CAP_SETUID/CAP_SETGID). The error is one line.
pub fn drop_to(user: &User) -> Result<(), String> {
    let fail = |what: &str, e: io::Error| format!("--user {}: {what} failed: {e}", user.name);
    // SAFETY: plain syscalls (glibc wrappers) on valid arguments.
    unsafe {
        if libc::setgroups(user.groups.len(), user.groups.as_ptr()) != 0 {
            return Err(fail("setgroups", io::Error::last_os_error()));
        }
        if libc::setgid(user.gid) != 0 {
            return Err(fail("setgid", io::Error::last_os_error()));
        }
        if libc::setuid(user.uid) != 0 {
            return Err(fail("setuid", io::Error::last_os_error()));
        }
    }
    verify(user)
}

/// The ids read back are the user's, and root cannot be regained.
fn verify(user: &User) -> Result<(), String> {
    // SAFETY: getters without arguments.
    let (uid, euid, gid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    if (uid, euid, gid, egid) != (user.uid, user.uid, user.gid, user.gid) {
        return Err(format!(
            "--user {}: the drop did not take (uid {uid}, euid {euid}, gid {gid}, egid {egid})",
            user.name
        ));
    }
    let mut groups = vec![0 as libc::gid_t; user.groups.len() + 1];
    // SAFETY: `groups` holds the stated number of entries.
    let n = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    if n < 0 {
        return Err(format!(
            "--user {}: getgroups failed: {}",
            user.name,
            io::Error::last_os_error()
        ));
    }
    groups.truncate(n as usize);
    groups.sort_unstable();
    let mut want = user.groups.clone();
    want.sort_unstable();
    want.dedup();
    groups.dedup();
    if groups != want {
        return Err(format!(
            "--user {}: the groups did not take (have {groups:?}, want {want:?})",
            user.name
        ));
    }
    // SAFETY: as above; a successful setuid(0) is exactly what must not happen.
    if user.uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(format!(
            "--user {}: root could be regained after the drop",
            user.name
        ));
    }
    Ok(())
}

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: getter without arguments.
    unsafe { libc::geteuid() == 0 }
}

/// Checks (as the user chacha now runs as) that it may create and remove files in
/// `dir` and in every directory directly under it (the cache's fan-out and temp dirs);
/// the error names the first directory that fails.
pub fn check_writable_tree(dir: &Path) -> Result<(), (std::path::PathBuf, io::Error)> {
    writable(dir).map_err(|e| (dir.to_path_buf(), e))?;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return Err((dir.to_path_buf(), e)),
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            let p = entry.path();
            writable(&p).map_err(|e| (p.clone(), e))?;
        }
    }
    Ok(())
}

/// access(2) with W_OK|X_OK: after the drop real and effective ids are the same.
fn writable(dir: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_user_is_one_line() {
        let e = User::lookup("no-such-user-chacha-xyz").unwrap_err();
        assert_eq!(e, "--user no-such-user-chacha-xyz: no such user");
    }

    #[test]
    fn root_lookup_has_its_primary_group() {
        let u = User::lookup("root").unwrap();
        assert_eq!((u.uid, u.gid), (0, 0));
        assert!(u.groups.contains(&0));
    }
}
