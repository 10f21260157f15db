//! Worker pinning: with one worker per CPU (the default `workers`), worker `i` runs only
//! on the `i`-th CPU the process may use, and so do the kernel's io_uring workers that
//! its ring starts (they inherit the affinity of the thread that creates them). A fill's
//! disk writes are done by such a kernel worker: pinned, it copies the piece its worker
//! just received while that piece is still in the core's cache, and waking it and being
//! woken by it needs no cross-CPU interrupt (measured: README, "Fill CPU").

/// The CPU worker `id` of `workers` is pinned to, given the CPUs the process may use
/// (ascending): the `id`-th, and only when there is exactly one worker per CPU. With
/// fewer workers the scheduler keeps the freedom to use the idle CPUs; with more, two
/// pinned workers would share a CPU that nothing can relieve.
pub fn cpu_for(id: usize, workers: usize, allowed: &[usize]) -> Option<usize> {
    match workers == allowed.len() {
        true => allowed.get(id).copied(),
        false => None,
    }
}

/// The CPUs this process may run on (its affinity mask, which `taskset` and cgroup
/// cpusets narrow), ascending.
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most
    // its size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        set
    };
    // SAFETY: CPU_ISSET reads the set in bounds (c < CPU_SETSIZE).
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes in bounds (the
    // caller's cpu came from `allowed_cpus`, below CPU_SETSIZE).
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::cpu_for;

    #[test]
    fn one_worker_per_allowed_cpu_is_pinned_in_order_and_nothing_else_is() {
        let cases: &[(usize, usize, &[usize], Option<usize>)] = &[
            (0, 2, &[0, 1], Some(0)),
            (1, 2, &[0, 1], Some(1)),
            // taskset -c 2,5: the workers follow the allowed CPUs, not 0 and 1.
            (0, 2, &[2, 5], Some(2)),
            (1, 2, &[2, 5], Some(5)),
            // Fewer workers than CPUs: left to the scheduler.
            (0, 1, &[0, 1], None),
            // More workers than CPUs: left to the scheduler.
            (2, 3, &[0, 1], None),
            (0, 3, &[0, 1], None),
            // Nothing known: nothing pinned.
            (0, 0, &[], None),
        ];
        for &(id, workers, allowed, want) in cases {
            assert_eq!(
                cpu_for(id, workers, allowed),
                want,
                "{id}/{workers} on {allowed:?}"
            );
        }
    }

    #[test]
    fn the_process_may_run_on_some_cpu() {
        let cpus = super::allowed_cpus().expect("sched_getaffinity");
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]), "ascending: {cpus:?}");
    }
}
