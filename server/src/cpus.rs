//! Which CPUs the process may use, and pinning a runtime thread to one of them.

use tracing::{debug, warn};

/// The CPUs this process may run on, in order.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    use nix::{sched::sched_getaffinity, unistd::Pid};
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

pub(crate) fn pin_to(cpu: usize) {
    use nix::{
        sched::{CpuSet, sched_setaffinity},
        unistd::Pid,
    };
    let mut set = CpuSet::new();
    let pinned = set
        .set(cpu)
        .and_then(|()| sched_setaffinity(Pid::from_raw(0), &set));
    match pinned {
        Ok(()) => debug!(cpu, "runtime pinned"),
        Err(error) => warn!(cpu, %error, "cannot pin runtime thread; running unpinned"),
    }
}
