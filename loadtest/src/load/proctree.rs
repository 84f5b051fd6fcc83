//! CPU time by role (the forwarder, PostgreSQL, Redis, the bank simulators, loadgen)
//! over a window, from periodic samples of every process on the machine.
//!
//! A role is named by root PIDs and owns each root and all its descendants, except
//! descendants under another listed root (the nearest listed ancestor wins) or under an
//! excluded PID. Processes are keyed by (pid, start time), never by name: PostgreSQL's
//! children and kernel threads rename themselves, and a pid may be reused.
//!
//! A process present in the window's first sample counts from its ticks there; one that
//! appears later counts all its ticks (it started inside the window). A process that
//! exits counts up to its last sample, so it loses at most one sampling interval.

use std::collections::{BTreeMap, HashMap};

use super::sysstat::ProcEntry;

/// Parent links followed at most when looking for a process's role: real trees are a
/// few levels deep, and a cycle (a pid reused while the samples were read) must end.
pub const ANCESTRY_DEPTH_MAX: usize = 64;

/// One process identity: pid and start time (ticks since boot).
pub type ProcKey = (u32, u64);

/// The listed PIDs: a role name, or `None` for a PID whose tree belongs to no role
/// (a relay that is idle during the switch's run, say).
#[derive(Debug, Clone, Default)]
pub struct Roots {
    by_pid: HashMap<u32, Option<String>>,
}

impl Roots {
    pub fn new() -> Roots {
        Roots::default()
    }

    /// `pid` and its descendants belong to `role`.
    pub fn add(&mut self, role: &str, pid: u32) {
        self.by_pid.insert(pid, Some(role.to_owned()));
    }

    /// `pid` and its descendants belong to no role.
    pub fn exclude(&mut self, pid: u32) {
        self.by_pid.insert(pid, None);
    }

    /// The role names, each once, in order.
    pub fn roles(&self) -> Vec<String> {
        let mut r: Vec<String> = self.by_pid.values().flatten().cloned().collect();
        r.sort();
        r.dedup();
        r
    }
}

/// Role names loadgen gives itself: `forwarder` (the switch or the relay, whichever the
/// run drives), `loadgen`, and `machine` (all busy CPU).
pub const RESERVED_ROLES: [&str; 3] = ["forwarder", "loadgen", "machine"];

/// Parses `ROLE=PID` (the `--pid` flag): a role of letters, digits, `_` and `-`, not a
/// reserved one, and a pid above 0.
pub fn parse_role_pid(s: &str) -> Result<(String, u32), String> {
    let (role, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ROLE=PID, e.g. postgres=1234"))?;
    let role = role.trim();
    if role.is_empty()
        || !role
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!("{role:?}: a role is letters, digits, _ and -"));
    }
    if RESERVED_ROLES.contains(&role) {
        return Err(format!("{role:?} is set by loadgen itself"));
    }
    let pid: u32 = pid
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{pid:?}: not a process id"))?;
    Ok((role.to_owned(), pid))
}

/// The role of each process in `procs` that has one: (key, role, ticks).
pub fn assign(procs: &[ProcEntry], roots: &Roots) -> Vec<(ProcKey, String, u64)> {
    let parent: HashMap<u32, u32> = procs.iter().map(|p| (p.pid, p.ppid)).collect();
    let mut out = Vec::new();
    for p in procs {
        let mut pid = p.pid;
        for _ in 0..ANCESTRY_DEPTH_MAX {
            if let Some(role) = roots.by_pid.get(&pid) {
                if let Some(role) = role {
                    out.push(((p.pid, p.start), role.clone(), p.ticks));
                }
                break;
            }
            match parent.get(&pid) {
                Some(&pp) if pp != 0 && pp != pid => pid = pp,
                _ => break,
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
struct Seen {
    role: String,
    baseline: u64,
    last: u64,
}

/// CPU ticks by role between the first sample and the last.
#[derive(Debug, Clone, Default)]
pub struct CpuTracker {
    seen: HashMap<ProcKey, Seen>,
    samples: u64,
}

impl CpuTracker {
    pub fn new() -> CpuTracker {
        CpuTracker::default()
    }

    /// Adds one sample (the output of [`assign`]).
    pub fn observe(&mut self, sample: Vec<(ProcKey, String, u64)>) {
        let first = self.samples == 0;
        self.samples += 1;
        for (key, role, ticks) in sample {
            let s = self.seen.entry(key).or_insert(Seen {
                role,
                // Present at the window's start: count from here. New: count it all.
                baseline: if first { ticks } else { 0 },
                last: ticks,
            });
            s.last = s.last.max(ticks);
        }
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Ticks by role since the first sample.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        let mut t = BTreeMap::new();
        for s in self.seen.values() {
            *t.entry(s.role.clone()).or_default() += s.last.saturating_sub(s.baseline);
        }
        t
    }

    /// Distinct processes seen by role.
    pub fn processes(&self) -> BTreeMap<String, u64> {
        let mut t = BTreeMap::new();
        for s in self.seen.values() {
            *t.entry(s.role.clone()).or_default() += 1;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32, start: u64, ticks: u64) -> ProcEntry {
        ProcEntry {
            pid,
            ppid,
            start,
            ticks,
        }
    }

    // Proves a root owns its whole tree, the nearest listed ancestor wins, an excluded
    // subtree and unrelated processes belong to no role.
    #[test]
    fn roles_by_tree() {
        let mut roots = Roots::new();
        roots.add("postgres", 100);
        roots.add("loadgen", 200);
        roots.add("forwarder", 201);
        roots.exclude(202);
        let procs = [
            p(1, 0, 0, 5),
            p(100, 1, 10, 50),
            p(101, 100, 11, 7),
            p(102, 101, 12, 3),
            p(200, 1, 20, 40),
            p(201, 200, 21, 30),
            p(202, 200, 22, 9),
            p(203, 202, 23, 9),
            p(300, 1, 30, 99),
        ];
        let mut got: Vec<(u32, String)> = assign(&procs, &roots)
            .into_iter()
            .map(|((pid, _), role, _)| (pid, role))
            .collect();
        got.sort();
        let want: Vec<(u32, String)> = [
            (100, "postgres"),
            (101, "postgres"),
            (102, "postgres"),
            (200, "loadgen"),
            (201, "forwarder"),
        ]
        .iter()
        .map(|(a, b)| (*a, (*b).to_owned()))
        .collect();
        assert_eq!(got, want);
        assert_eq!(roots.roles(), ["forwarder", "loadgen", "postgres"]);
    }

    // Proves --pid values parse as role=pid and bad or reserved ones are refused.
    #[test]
    fn role_pid_flag() {
        assert_eq!(parse_role_pid("postgres=123"), Ok(("postgres".into(), 123)));
        assert_eq!(parse_role_pid("bank_sim= 7"), Ok(("bank_sim".into(), 7)));
        for bad in [
            "postgres",
            "=1",
            "pg=x",
            "pg=0",
            "a b=1",
            "forwarder=1",
            "machine=2",
        ] {
            assert!(parse_role_pid(bad).is_err(), "{bad}");
        }
    }

    // Proves a parent cycle (pid reuse racing the read) ends without a role.
    #[test]
    fn cycle_ends() {
        let mut roots = Roots::new();
        roots.add("x", 9);
        let procs = [p(5, 6, 0, 1), p(6, 5, 0, 1)];
        assert!(assign(&procs, &roots).is_empty());
    }

    // Proves deltas are summed per process: present at the start counts from its first
    // sample, new in the window counts all its ticks, a reused pid is another process,
    // and an exited one keeps what it had at its last sample.
    #[test]
    fn deltas_per_process() {
        let mut t = CpuTracker::new();
        let s = |v: &[(u32, u64, &str, u64)]| -> Vec<(ProcKey, String, u64)> {
            v.iter()
                .map(|(pid, start, role, ticks)| ((*pid, *start), (*role).to_owned(), *ticks))
                .collect()
        };
        t.observe(s(&[
            (10, 1, "pg", 1000),
            (11, 1, "pg", 500),
            (20, 1, "redis", 70),
        ]));
        t.observe(s(&[
            (10, 1, "pg", 1010),
            (11, 1, "pg", 520),
            (12, 50, "pg", 4),
        ]));
        // 11 exited; 12 grew; pid 11 reused by a new backend.
        t.observe(s(&[
            (10, 1, "pg", 1030),
            (12, 50, "pg", 9),
            (11, 60, "pg", 2),
        ]));
        t.observe(s(&[(20, 1, "redis", 75)]));
        let totals = t.totals();
        assert_eq!(totals["pg"], 30 + 20 + 9 + 2);
        assert_eq!(totals["redis"], 5);
        assert_eq!(t.processes()["pg"], 4);
        assert_eq!(t.samples(), 4);
    }
}
