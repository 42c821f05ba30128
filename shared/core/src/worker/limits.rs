//! A local job's `--cpus` and `--ram`, held on this machine.
//!
//! One mechanism that needs no privilege and no service: the worker itself.
//! - **CPUs**: the script starts pinned (`sched_setaffinity`) to `--cpus`
//!   of the CPUs the worker may use, chosen from an offset of the job's id
//!   so that jobs side by side spread; `OMP_NUM_THREADS` says the same to
//!   thread pools that count the machine, unless the job sets it.
//! - **Memory**: the worker adds up the proportional set size (PSS: a page
//!   shared by a forked data loader counts once, as a cgroup charges it) of
//!   every process of the job's process group and of the script's
//!   descendants, twice a second, and kills the job once it is over `--ram`
//!   (no grace: a job over its memory keeps allocating). The job fails with
//!   the limit and the size it reached as its reason.
//!
//! Not a cgroup: a job's process that leaves both its group and its
//! ancestry (a double-forked daemon) is not counted, and an allocation
//! faster than half a second overshoots before it is seen. A cgroup v2
//! `memory.max` would close both, but needs a delegated hierarchy (systemd
//! as init, a user manager) that many machines this runs on (containers, CI
//! runners, WSL) do not have; the kernel's own OOM killer still guards the
//! machine.

use crate::resources::ResourceRequest;
use crate::size::format_mib;
use std::collections::BTreeMap;
use std::path::Path;

/// What a local job is held to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The CPUs the script is pinned to; `None`: all the worker has.
    pub cpus: Option<Vec<usize>>,
    pub memory_mib: Option<u64>,
}

impl Limits {
    /// The limits of `r` for a job whose id is `key`, on a worker allowed
    /// the CPUs `allowed`.
    pub fn for_request(r: &ResourceRequest, allowed: &[usize], key: &str) -> Limits {
        let want = r.cpus as usize;
        let cpus = (want > 0 && want < allowed.len()).then(|| {
            let start = key
                .bytes()
                .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
            (0..want)
                .map(|i| allowed[(start + i) % allowed.len()])
                .collect()
        });
        Limits {
            cpus,
            memory_mib: r.ram_mib,
        }
    }

    /// Pins the command's process to its CPUs before it runs, and tells
    /// thread pools how many there are.
    pub fn apply(&self, cmd: &mut tokio::process::Command, job_env: &BTreeMap<String, String>) {
        let Some(cpus) = &self.cpus else { return };
        if !job_env.contains_key("OMP_NUM_THREADS") {
            cmd.env("OMP_NUM_THREADS", cpus.len().to_string());
        }
        #[cfg(target_os = "linux")]
        {
            // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes in it.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            for c in cpus {
                // SAFETY: as above; ids come from sched_getaffinity.
                unsafe { libc::CPU_SET(*c, &mut set) };
            }
            // SAFETY: sched_setaffinity is a plain system call, safe between
            // fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    }

    /// Why the job must stop, if its processes' memory is over the limit.
    pub fn over(&self, pgid: i32) -> Option<String> {
        let limit = self.memory_mib?;
        let used = job_memory_kib(Path::new("/proc"), pgid)? / 1024;
        (used > limit).then(|| {
            format!(
                "out of memory: the job used {}, over its --ram limit of {} (stopped by the worker)",
                format_mib(used),
                format_mib(limit)
            )
        })
    }
}

/// The CPUs this process may run on.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a zeroed cpu_set_t, filled by the kernel.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: pid 0 is this thread; the size is the set's.
        if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
            == 0
        {
            // SAFETY: reading bits of the set the kernel filled.
            return (0..libc::CPU_SETSIZE as usize)
                .filter(|c| unsafe { libc::CPU_ISSET(*c, &set) })
                .collect();
        }
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n).collect()
}

/// The memory (KiB) of the processes in group `pgid` and of their
/// descendants, read from `proc`: their PSS where the kernel gives it, else
/// their resident size. `None`: no such process is left.
pub(crate) fn job_memory_kib(proc: &Path, pgid: i32) -> Option<u64> {
    let mut parents: Vec<(i32, i32, i32)> = Vec::new(); // (pid, ppid, pgrp)
    for e in std::fs::read_dir(proc).ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some((ppid, pgrp)) = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| stat_fields(&s))
        {
            parents.push((pid, ppid, pgrp));
        }
    }
    let mut members: Vec<i32> = parents
        .iter()
        .filter(|p| p.2 == pgid)
        .map(|p| p.0)
        .collect();
    // Descendants that left the group (setsid, setpgid) still count.
    let mut grew = true;
    while grew {
        grew = false;
        for p in &parents {
            if !members.contains(&p.0) && members.contains(&p.1) {
                members.push(p.0);
                grew = true;
            }
        }
    }
    if members.is_empty() {
        return None;
    }
    Some(
        members
            .iter()
            .filter_map(|pid| process_kib(&proc.join(pid.to_string())))
            .sum(),
    )
}

/// `ppid` and `pgrp` from a `/proc/PID/stat` line (the command, in
/// parentheses, may hold spaces and parentheses: fields follow its last `)`).
fn stat_fields(stat: &str) -> Option<(i32, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let _state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((ppid, pgrp))
}

/// One process's PSS (`smaps_rollup`), else its RSS (`status`), in KiB.
fn process_kib(dir: &Path) -> Option<u64> {
    let field = |file: &str, name: &str| {
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| crate::size::proc_kib(&t, name))
    };
    field("smaps_rollup", "Pss:").or_else(|| field("status", "VmRSS:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_below_the_workers_cpus_is_pinned_to_that_many_distinct_cpus() {
        let r = ResourceRequest {
            cpus: 2,
            ..Default::default()
        };
        let allowed = [0, 2, 4, 6];
        let l = Limits::for_request(&r, &allowed, "job-1");
        let cpus = l.cpus.unwrap();
        assert_eq!(cpus.len(), 2);
        assert_ne!(cpus[0], cpus[1]);
        assert!(cpus.iter().all(|c| allowed.contains(c)));
        let all = ResourceRequest {
            cpus: 4,
            ..Default::default()
        };
        assert_eq!(Limits::for_request(&all, &allowed, "job-1").cpus, None);
    }

    #[test]
    fn stat_fields_read_past_a_command_with_parentheses_and_spaces() {
        let line = "4242 (evil) 1 2 (x) S 17 4242 4242 0 -1";
        assert_eq!(stat_fields(line), Some((17, 4242)));
    }

    #[test]
    fn the_memory_of_a_group_counts_its_members_and_descendants_only() {
        let d = tempfile::tempdir().unwrap();
        let proc = |pid: i32, ppid: i32, pgrp: i32, pss: u64| {
            let p = d.path().join(pid.to_string());
            std::fs::create_dir(&p).unwrap();
            std::fs::write(
                p.join("stat"),
                format!("{pid} (python3) S {ppid} {pgrp} {pgrp} 0"),
            )
            .unwrap();
            std::fs::write(
                p.join("smaps_rollup"),
                format!("Rss: 1 kB\nPss: {pss} kB\n"),
            )
            .unwrap();
        };
        proc(100, 1, 100, 1000); // the script
        proc(101, 100, 100, 200); // a data loader
        proc(102, 100, 102, 30); // left the group with setsid
        proc(103, 102, 102, 4); // and its child
        proc(200, 1, 200, 99999); // another job
        assert_eq!(job_memory_kib(d.path(), 100), Some(1234));
        assert_eq!(job_memory_kib(d.path(), 300), None);
    }
}
