//! What the kernel says about CPU: busy and steal time of the whole machine
//! (`/proc/stat`) and CPU time of processes (`/proc/PID/stat`). Parsing is plain
//! functions.

use std::io;

/// Clock ticks per second in `/proc` (USER_HZ: fixed at 100 by the Linux ABI).
pub const USER_HZ: u64 = 100;
/// Microseconds per clock tick.
pub const MICROS_PER_TICK: u64 = 1_000_000 / USER_HZ;

/// The machine's CPU time in ticks, all CPUs together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MachineTicks {
    pub total: u64,
    pub steal: u64,
    /// user + nice + system + irq + softirq: everything but idle, iowait and steal.
    pub busy: u64,
}

impl MachineTicks {
    pub fn since(&self, earlier: &MachineTicks) -> MachineTicks {
        MachineTicks {
            total: self.total.saturating_sub(earlier.total),
            steal: self.steal.saturating_sub(earlier.steal),
            busy: self.busy.saturating_sub(earlier.busy),
        }
    }
}

/// Parses the aggregate `cpu` line of `/proc/stat`: user nice system idle iowait irq
/// softirq steal (guest time is already counted in user, so it is not added).
pub fn parse_machine(stat: &str) -> Option<MachineTicks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    Some(MachineTicks {
        total: v.iter().sum(),
        steal: v[7],
        busy: v[0] + v[1] + v[2] + v[5] + v[6],
    })
}

/// Parses utime + stime (ticks) from `/proc/PID/stat`. The command name may hold spaces
/// and parentheses, so fields are counted after the last `)`.
pub fn parse_process(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state(3) ppid ... utime is field 14, stime 15 (1-based, name = 2).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// One process as `/proc/PID/stat` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcEntry {
    pub pid: u32,
    pub ppid: u32,
    /// When it started, in ticks since boot: with the pid, it names one process even
    /// when the pid is reused.
    pub start: u64,
    /// utime + stime of all its threads, live and exited.
    pub ticks: u64,
}

/// Parses pid, ppid, start time and utime + stime from `/proc/PID/stat`.
pub fn parse_proc_entry(stat: &str) -> Option<ProcEntry> {
    let pid = stat.split_whitespace().next()?.parse().ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3 (index 0 here), ppid 4, utime 14, stime 15,
    // starttime 22.
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcEntry {
        pid,
        ppid: f.get(1)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
        ticks: parse_process(stat)?,
    })
}

/// Every process on the machine now (those that exit while being read are skipped).
pub fn read_all_processes() -> io::Result<Vec<ProcEntry>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some(p) = parse_proc_entry(&s)
        {
            out.push(p);
        }
    }
    Ok(out)
}

pub fn read_machine() -> io::Result<MachineTicks> {
    let s = std::fs::read_to_string("/proc/stat")?;
    parse_machine(&s).ok_or_else(|| io::Error::other("unreadable /proc/stat"))
}

pub fn read_process(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_process(&s).ok_or_else(|| io::Error::other(format!("unreadable /proc/{pid}/stat")))
}

/// Microseconds of CPU per transaction, from a tick delta.
pub fn micros_per_txn(ticks: u64, txns: u64) -> Option<u64> {
    (txns > 0).then(|| ticks * MICROS_PER_TICK / txns)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves steal is the eighth number of the cpu line and the total sums eight.
    #[test]
    fn machine_line() {
        let s = "cpu  100 2 30 400 5 6 7 8 9 10\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        let t = parse_machine(s).unwrap();
        assert_eq!(t.steal, 8);
        assert_eq!(t.total, 100 + 2 + 30 + 400 + 5 + 6 + 7 + 8);
        assert_eq!(t.busy, 100 + 2 + 30 + 6 + 7);
        let later = MachineTicks {
            total: 700,
            steal: 20,
            busy: 200,
        };
        assert_eq!(later.since(&t).steal, 12);
        assert_eq!(later.since(&t).busy, 55);
        assert!(parse_machine("intr 1 2 3").is_none());
    }

    // Proves utime+stime are read even when the command name has spaces and parentheses.
    #[test]
    fn process_line() {
        let s = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1000 0 0";
        assert_eq!(parse_process(s), Some(300));
        assert_eq!(micros_per_txn(300, 1000), Some(3000));
        assert_eq!(micros_per_txn(300, 0), None);
        let e = parse_proc_entry(s).unwrap();
        assert_eq!((e.pid, e.ppid, e.ticks, e.start), (4242, 1, 300, 1000));
        assert!(parse_proc_entry("4242 (x) S 1").is_none());
    }

    // Proves the live files parse on this machine.
    #[test]
    fn live_proc() {
        assert!(read_machine().unwrap().total > 0);
        read_process(std::process::id()).unwrap();
        let all = read_all_processes().unwrap();
        assert!(all.iter().any(|p| p.pid == std::process::id()));
    }
}
