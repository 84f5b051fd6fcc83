//! What the kernel says about CPU: steal time of the whole machine (`/proc/stat`) and
//! CPU time of one process (`/proc/PID/stat`). Parsing is plain functions.

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
}

impl MachineTicks {
    pub fn since(&self, earlier: &MachineTicks) -> MachineTicks {
        MachineTicks {
            total: self.total.saturating_sub(earlier.total),
            steal: self.steal.saturating_sub(earlier.steal),
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
        let later = MachineTicks {
            total: 700,
            steal: 20,
        };
        assert_eq!(later.since(&t).steal, 12);
        assert!(parse_machine("intr 1 2 3").is_none());
    }

    // Proves utime+stime are read even when the command name has spaces and parentheses.
    #[test]
    fn process_line() {
        let s = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1000 0 0";
        assert_eq!(parse_process(s), Some(300));
        assert_eq!(micros_per_txn(300, 1000), Some(3000));
        assert_eq!(micros_per_txn(300, 0), None);
    }

    // Proves the live files parse on this machine.
    #[test]
    fn live_proc() {
        assert!(read_machine().unwrap().total > 0);
        read_process(std::process::id()).unwrap();
    }
}
