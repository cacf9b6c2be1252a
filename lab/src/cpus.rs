//! Which CPUs the server and the load generator run on. On a machine with room for both
//! (4 CPUs or more), disjoint sets, split along physical cores (hyperthread siblings stay
//! together), so neither takes cycles from the other; on a smaller one, shared CPUs, and every
//! report says so.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};

/// The CPUs this process may run on.
pub fn allowed() -> Vec<usize> {
    use nix::{sched::sched_getaffinity, unistd::Pid};
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// `0-3,6,8-9` (the kernel's cpulist format, as `taskset -c` takes it).
pub fn parse_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} is not a CPU or a range of CPUs (example: 0-3,6)");
        let (lo, hi): (usize, usize) = match part.split_once('-') {
            Some((lo, hi)) => (
                lo.parse().map_err(|_| bad())?,
                hi.parse().map_err(|_| bad())?,
            ),
            None => {
                let cpu: usize = part.parse().map_err(|_| bad())?;
                (cpu, cpu)
            }
        };
        if lo > hi || hi >= nix::sched::CpuSet::count() {
            return Err(bad());
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        return Err(format!("{s:?} names no CPU"));
    }
    Ok(cpus)
}

/// `0-3,6`: the list written back compactly.
pub fn format_list(cpus: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// Restricts the calling thread (and the threads it starts afterwards) to `cpus`.
pub fn restrict_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    use nix::{
        sched::{CpuSet, sched_setaffinity},
        unistd::Pid,
    };
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu).map_err(std::io::Error::from)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).map_err(std::io::Error::from)
}

/// The physical core of `cpu` (package, core), from sysfs; `None` where sysfs does not say.
fn physical_core(cpu: usize) -> Option<(u32, u32)> {
    let read = |what: &str| -> Option<u32> {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/topology/{what}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some((read("physical_package_id")?, read("core_id")?))
}

/// Where the server and the load generator run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuPlan {
    pub server: Vec<usize>,
    pub loadgen: Vec<usize>,
    /// No CPU in both sets.
    pub disjoint: bool,
    /// One sentence for the report.
    pub note: String,
}

impl CpuPlan {
    /// The sets asked for (`--server-cpus`, `--loadgen-cpus`), completed from `allowed`: one
    /// set given, the other gets the rest; none given, a split along physical cores when there
    /// are at least 4 CPUs, else shared CPUs.
    pub fn choose(
        server: Option<Vec<usize>>,
        loadgen: Option<Vec<usize>>,
        allowed: &[usize],
    ) -> Result<Self> {
        let outside = |set: &[usize], flag: &str| -> Result<()> {
            match set.iter().find(|c| !allowed.contains(c)) {
                Some(cpu) => Err(LabError::Config(format!(
                    "{flag}: CPU {cpu} is not one this process may use ({})",
                    format_list(allowed)
                ))),
                None => Ok(()),
            }
        };
        let rest = |taken: &[usize]| -> Vec<usize> {
            allowed
                .iter()
                .copied()
                .filter(|c| !taken.contains(c))
                .collect()
        };
        let (server, loadgen) = match (server, loadgen) {
            (Some(s), Some(l)) => {
                outside(&s, "--server-cpus")?;
                outside(&l, "--loadgen-cpus")?;
                (s, l)
            }
            (Some(s), None) => {
                outside(&s, "--server-cpus")?;
                let l = rest(&s);
                if l.is_empty() {
                    return Err(LabError::Config(
                        "--server-cpus takes every CPU: give --loadgen-cpus too (they may overlap)"
                            .into(),
                    ));
                }
                (s, l)
            }
            (None, Some(l)) => {
                outside(&l, "--loadgen-cpus")?;
                let s = rest(&l);
                if s.is_empty() {
                    return Err(LabError::Config(
                        "--loadgen-cpus takes every CPU: give --server-cpus too (they may overlap)"
                            .into(),
                    ));
                }
                (s, l)
            }
            (None, None) if allowed.len() >= 4 => split(allowed),
            (None, None) => (allowed.to_vec(), allowed.to_vec()),
        };
        let disjoint = !server.iter().any(|c| loadgen.contains(c));
        let note = if disjoint {
            format!(
                "server on CPUs {}, load generator on CPUs {}: disjoint sets",
                format_list(&server),
                format_list(&loadgen)
            )
        } else {
            format!(
                "server and load generator SHARE CPUs (server {}, load generator {}): this \
                 machine has {} CPU(s), too few to give each its own (4 or more are split \
                 automatically; --server-cpus/--loadgen-cpus choose by hand). Each takes cycles \
                 from the other, so throughput is bounded by both together",
                format_list(&server),
                format_list(&loadgen),
                allowed.len()
            )
        };
        Ok(Self {
            server,
            loadgen,
            disjoint,
            note,
        })
    }
}

/// Halves along physical cores: the server gets the first half of the cores (rounded up).
fn split(allowed: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut cores: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
    for &cpu in allowed {
        // Without topology, every CPU is a core of its own.
        let key = physical_core(cpu).unwrap_or((u32::MAX, cpu as u32));
        cores.entry(key).or_default().push(cpu);
    }
    let mut groups: Vec<Vec<usize>> = cores.into_values().collect();
    if groups.len() < 2 {
        // One physical core with many threads: split the threads instead.
        groups = allowed.iter().map(|&c| vec![c]).collect();
    }
    let half = groups.len().div_ceil(2);
    let mut server: Vec<usize> = groups[..half].concat();
    let mut loadgen: Vec<usize> = groups[half..].concat();
    server.sort_unstable();
    loadgen.sort_unstable();
    (server, loadgen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_print_as_taskset_writes_them() {
        assert_eq!(parse_list("0-3,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_list("5,1,1").unwrap(), vec![1, 5]);
        assert_eq!(format_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        for bad in ["", "a", "3-1", "1-", "99999"] {
            assert!(parse_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn small_machines_share_and_say_so_large_ones_split() {
        let two = CpuPlan::choose(None, None, &[0, 1]).unwrap();
        assert!(!two.disjoint);
        assert_eq!(
            (two.server.as_slice(), two.loadgen.as_slice()),
            (&[0, 1][..], &[0, 1][..])
        );
        assert!(two.note.contains("SHARE"), "{}", two.note);
        let eight: Vec<usize> = (0..8).collect();
        let plan = CpuPlan::choose(None, None, &eight).unwrap();
        assert!(plan.disjoint, "{plan:?}");
        assert_eq!(plan.server.len() + plan.loadgen.len(), 8);
        // By hand: one set given, the other is the rest.
        let plan = CpuPlan::choose(Some(vec![1]), None, &[0, 1]).unwrap();
        assert_eq!(
            (plan.server, plan.loadgen, plan.disjoint),
            (vec![1], vec![0], true)
        );
        assert!(CpuPlan::choose(Some(vec![0, 1]), None, &[0, 1]).is_err());
        let e = CpuPlan::choose(Some(vec![7]), Some(vec![0]), &[0, 1]).unwrap_err();
        assert!(e.to_string().contains("--server-cpus: CPU 7"), "{e}");
    }
}
