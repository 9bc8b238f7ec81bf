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
}
