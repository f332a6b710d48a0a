//! CPU time and peak memory of a running process, read from `/proc`.
//!
//! Sampled while the process still runs (a reaped child's `/proc` entry is gone, and the
//! rusage of `wait4` would need `unsafe`): `utime + stime` of `/proc/<pid>/stat` and `VmHWM`
//! of `/proc/<pid>/status`, the resident set's high-water mark over the process's life.

use crate::error::BenchError;

/// The unit of `/proc/<pid>/stat` times (USER_HZ): 100 per second for user space on x86 and
/// ARM Linux, whatever the kernel's own tick rate.
const USER_HZ: f64 = 100.0;

/// One sample of a process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Usage {
    /// User plus system CPU seconds of every thread so far.
    pub(crate) cpu_s: f64,
    /// Peak resident set so far, in MiB.
    pub(crate) peak_rss_mib: f64,
}

/// Samples process `pid`.
pub(crate) fn usage(pid: u32) -> Result<Usage, BenchError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(BenchError::io(format!("cannot read /proc/{pid}/stat")))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(BenchError::io(format!("cannot read /proc/{pid}/status")))?;
    let ticks = parse_cpu_ticks(&stat)
        .ok_or_else(|| BenchError::Failed(format!("/proc/{pid}/stat has no CPU times")))?;
    let peak_kib = parse_hwm_kib(&status)
        .ok_or_else(|| BenchError::Failed(format!("/proc/{pid}/status has no VmHWM")))?;
    Ok(Usage {
        cpu_s: ticks as f64 / USER_HZ,
        peak_rss_mib: peak_kib as f64 / 1024.0,
    })
}

/// `utime + stime`: fields 14 and 15, counted after the command name, which may hold spaces
/// and parentheses, so from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 9";
        assert_eq!(parse_cpu_ticks(stat), Some(42));
    }

    #[test]
    fn the_high_water_mark_is_read_in_kib() {
        let status = "Name:\tflatsync\nVmPeak:\t  99999 kB\nVmHWM:\t   20480 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_hwm_kib(status), Some(20480));
        assert_eq!(parse_hwm_kib("Name:\tzombie\n"), None);
    }

    #[test]
    fn this_process_has_a_positive_sample() {
        let sample = usage(std::process::id()).expect("our own /proc entry");
        assert!(sample.peak_rss_mib > 0.0);
        assert!(sample.cpu_s >= 0.0);
    }
}
