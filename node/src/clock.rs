//! The one clock every daemon and tool reads: the system's. Decision code never calls it (it is
//! handed `now`, so that tests and `netsim` run it in virtual time); drivers read it here.

use proto::tuf::Time;

/// Unix seconds now (0 if the system clock says before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Now, as signed metadata counts time.
pub fn now() -> Time {
    Time::from_unix(i64::try_from(unix_now()).unwrap_or(i64::MAX))
}

/// Clock ticks per second of `/proc/self/stat`: USER_HZ, fixed at 100 by the Linux ABI on every
/// architecture this project runs on (`getconf CLK_TCK`).
const TICKS_PER_SECOND: u64 = 100;

/// CPU time this process has used so far, user and system (`/proc/self/stat`, 10 ms
/// resolution); `None` where that file is missing or unreadable (not Linux). For benchmarks and
/// summaries that report the CPU a piece of work cost.
pub fn process_cpu() -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; count fields from the
    // last ')'. After it: state (3), ..., utime (14), stime (15).
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    let ticks = user.checked_add(system)?;
    Some(std::time::Duration::from_millis(
        ticks.checked_mul(1000 / TICKS_PER_SECOND)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_past_this_code_and_both_readings_agree() {
        // 2026-01-01: the clock of any machine that runs this code is past it.
        assert!(unix_now() > 1_767_225_600);
        let (seconds, time) = (unix_now(), now());
        assert!((time.unix() - i64::try_from(seconds).unwrap()).abs() <= 1);
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let before = process_cpu().unwrap();
        let mut hasher = blake3::Hasher::new();
        let started = std::time::Instant::now();
        // Busy for at least 50 ms of wall time, so at least a few ticks of CPU.
        while started.elapsed() < std::time::Duration::from_millis(50) {
            hasher.update(&[7_u8; 65536]);
        }
        assert!(process_cpu().unwrap() > before);
    }
}
