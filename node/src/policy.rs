//! The link policy: may this vehicle move update bytes over the link it has now? Sans-IO — fed
//! the link, the update's priority, the bytes used and the time, it answers; the vehicle peer
//! and netsim run the same code.
//!
//! # Rules
//!
//! | link | security | fix | feature |
//! |---|---|---|---|
//! | yard WiFi, other WiFi | yes | yes | yes |
//! | cellular (home) | yes, within budget | inside a cellular window, or once its deadline passed; within budget | no: waits for WiFi |
//! | cellular roaming | yes, within budget | no | no |
//!
//! Cellular also needs the signal at or above the configured minimum (a weak link wastes bytes
//! on retransmissions and drains the budget for little). The monthly budget counts every
//! cellular byte, is never exceeded (an answer carries how many bytes may still go), and starts
//! again on the first of each calendar month in the vehicle's configured time zone. Windows are
//! times of day in that zone (`22:00-05:00` wraps past midnight). A fix waits for WiFi or a
//! window; once `fix_deadline` has passed since it was released, it may use cellular at any time
//! as a security update would — so a fix reaches a vehicle that never sees WiFi.

use std::fmt;

/// The link a vehicle has now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinkClass {
    /// The home depot's yard WiFi.
    YardWifi,
    /// Any other WiFi (another depot, a customer site).
    OtherWifi,
    /// Cellular on the home network.
    Cellular,
    /// Cellular while roaming.
    CellularRoaming,
}

impl LinkClass {
    /// Whether bytes on this link count against the budget.
    pub fn metered(self) -> bool {
        matches!(self, Self::Cellular | Self::CellularRoaming)
    }

    /// All classes, for tables.
    pub const ALL: [Self; 4] = [
        Self::YardWifi,
        Self::OtherWifi,
        Self::Cellular,
        Self::CellularRoaming,
    ];

    /// Its name in configuration, probes and metrics: `yard-wifi`, `other-wifi`, `cellular`,
    /// `cellular-roaming`.
    pub fn name(self) -> &'static str {
        match self {
            Self::YardWifi => "yard-wifi",
            Self::OtherWifi => "other-wifi",
            Self::Cellular => "cellular",
            Self::CellularRoaming => "cellular-roaming",
        }
    }
}

/// Why a link class name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseLinkClassError {
    /// None of the four names.
    #[error("link class {0:?} must be yard-wifi, other-wifi, cellular or cellular-roaming")]
    Unknown(String),
}

impl std::str::FromStr for LinkClass {
    type Err = ParseLinkClassError;

    fn from_str(text: &str) -> Result<Self, ParseLinkClassError> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == text)
            .ok_or_else(|| ParseLinkClassError::Unknown(text.to_string()))
    }
}

pub use proto::custom::Priority;

/// A time of day range, in minutes after midnight; `end < start` wraps past midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First minute inside.
    pub start: u16,
    /// First minute outside.
    pub end: u16,
}

/// Why a time window was refused ([`Window::parse`]); each names the text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    /// No `-` between two times.
    #[error("window {0:?} is not HH:MM-HH:MM")]
    NoRange(String),
    /// A time that is not a time of day.
    #[error("window {0:?} is not HH:MM-HH:MM (00:00 to 23:59)")]
    BadTime(String),
    /// It starts where it ends.
    #[error("window {0:?} is empty")]
    Empty(String),
}

impl Window {
    /// Parses `HH:MM-HH:MM`.
    pub fn parse(text: &str) -> Result<Self, WindowError> {
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m) = (h.parse::<u16>().ok()?, m.parse::<u16>().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (a, b) = text
            .split_once('-')
            .ok_or_else(|| WindowError::NoRange(text.to_string()))?;
        let (Some(start), Some(end)) = (minute(a), minute(b)) else {
            return Err(WindowError::BadTime(text.to_string()));
        };
        if start == end {
            return Err(WindowError::Empty(text.to_string()));
        }
        Ok(Self { start, end })
    }

    /// Whether minute-of-day `m` is inside.
    pub fn contains(&self, m: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// Times of day, as windows in local time (UTC plus an offset): when cellular may carry fixes,
/// or when a depot's backhaul may prefetch. No windows: never open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule<'a> {
    /// The windows.
    pub windows: &'a [Window],
    /// Local time's offset from UTC, in minutes.
    pub utc_offset_minutes: i32,
}

impl Schedule<'_> {
    fn local(&self, now: u64) -> i64 {
        i64::try_from(now).unwrap_or(i64::MAX) + i64::from(self.utc_offset_minutes) * 60
    }

    /// Whether a window is open at `now` (Unix seconds).
    pub fn is_open(&self, now: u64) -> bool {
        let m = u16::try_from(self.local(now).rem_euclid(86_400) / 60).unwrap_or(0);
        self.windows.iter().any(|w| w.contains(m))
    }

    /// The next time (Unix seconds, after `now`) a window opens; `None` without windows.
    pub fn next_open(&self, now: u64) -> Option<u64> {
        let local = self.local(now);
        let day_start = local - local.rem_euclid(86_400);
        let offset = i64::from(self.utc_offset_minutes) * 60;
        self.windows
            .iter()
            .flat_map(|w| {
                let at = day_start + i64::from(w.start) * 60;
                [at, at + 86_400]
            })
            .filter(|&at| at > local)
            .min()
            .and_then(|at| u64::try_from(at - offset).ok())
    }
}

/// The vehicle's cellular rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Times of day when fixes may use cellular.
    pub cellular_windows: Vec<Window>,
    /// Cellular bytes a vehicle may use per calendar month.
    pub monthly_budget: u64,
    /// Lowest signal quality (0–100) cellular is used at.
    pub min_signal: u8,
    /// Seconds after its release when a fix may use cellular outside the windows.
    pub fix_deadline_secs: u64,
    /// The vehicle's time zone, as minutes east of UTC (windows and months are local).
    pub utc_offset_minutes: i32,
}

/// The link now: its class and, for cellular, its signal quality (0–100).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// The class.
    pub class: LinkClass,
    /// Signal quality 0–100 (ignored on WiFi).
    pub signal: u8,
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead; at most `max_bytes` on this link now (`u64::MAX` on WiFi).
    Allow {
        /// Bytes that may still go over this link before asking again.
        max_bytes: u64,
        /// Why (for logs and reports).
        reason: &'static str,
    },
    /// Not now; ask again at `retry_at` (Unix seconds), or when the link changes.
    Wait {
        /// When the answer may change without a new link (None: only a link change helps).
        retry_at: Option<u64>,
        /// Why.
        reason: &'static str,
    },
}

impl Decision {
    /// Whether bytes may move now.
    pub fn allowed(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }
}

/// Cellular bytes used in the current month.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// The month they count in, as months since January 1970 (local time).
    pub month: i64,
    /// Bytes.
    pub bytes: u64,
}

/// The policy of one vehicle: its rules and what it used this month.
#[derive(Clone, Debug)]
pub struct LinkPolicy {
    config: PolicyConfig,
    usage: Usage,
}

impl LinkPolicy {
    /// A policy with `config`, nothing used yet.
    pub fn new(config: PolicyConfig) -> Self {
        Self {
            config,
            usage: Usage::default(),
        }
    }

    /// A policy that resumes with `usage` (as persisted).
    pub fn with_usage(config: PolicyConfig, usage: Usage) -> Self {
        Self { config, usage }
    }

    /// What was used this month (to persist).
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The rules.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    fn local(&self, now: u64) -> i64 {
        i64::try_from(now).unwrap_or(i64::MAX) + i64::from(self.config.utc_offset_minutes) * 60
    }

    /// Cellular bytes left this month at `now`.
    pub fn remaining(&self, now: u64) -> u64 {
        let month = month_index(self.local(now));
        let used = if self.usage.month == month {
            self.usage.bytes
        } else {
            0
        };
        self.config.monthly_budget.saturating_sub(used)
    }

    /// Counts `bytes` moved over `class` at `now`.
    pub fn record(&mut self, class: LinkClass, bytes: u64, now: u64) {
        if !class.metered() {
            return;
        }
        let month = month_index(self.local(now));
        if self.usage.month != month {
            self.usage = Usage { month, bytes: 0 };
        }
        self.usage.bytes = self.usage.bytes.saturating_add(bytes);
    }

    /// May an update of `priority`, released at `released` (Unix seconds), use `link` at
    /// `now`?
    pub fn decide(&self, link: Link, priority: Priority, released: u64, now: u64) -> Decision {
        if !link.class.metered() {
            return Decision::Allow {
                max_bytes: u64::MAX,
                reason: "WiFi",
            };
        }
        let wait = |retry_at, reason| Decision::Wait { retry_at, reason };
        if link.class == LinkClass::CellularRoaming && priority != Priority::Security {
            return wait(None, "roaming: security updates only");
        }
        if priority == Priority::Feature {
            return wait(None, "feature updates wait for WiFi");
        }
        if link.signal < self.config.min_signal {
            return wait(None, "cellular signal below the minimum");
        }
        let remaining = self.remaining(now);
        if remaining == 0 {
            return wait(
                Some(self.next_month_start(now)),
                "monthly cellular budget used up",
            );
        }
        let allow = |reason| Decision::Allow {
            max_bytes: remaining,
            reason,
        };
        match priority {
            Priority::Security => allow("security update on cellular"),
            Priority::Fix => {
                let deadline = released.saturating_add(self.config.fix_deadline_secs);
                if now >= deadline {
                    return allow("fix past its deadline on cellular");
                }
                if self.in_window(now) {
                    return allow("fix inside a cellular window");
                }
                let next = self
                    .next_window_start(now)
                    .map_or(deadline, |w| w.min(deadline));
                wait(Some(next), "fix waits for WiFi or a cellular window")
            }
            Priority::Feature => wait(None, "feature updates wait for WiFi"),
        }
    }

    fn windows(&self) -> Schedule<'_> {
        Schedule {
            windows: &self.config.cellular_windows,
            utc_offset_minutes: self.config.utc_offset_minutes,
        }
    }

    fn in_window(&self, now: u64) -> bool {
        self.windows().is_open(now)
    }

    /// The next time (Unix seconds, after `now`) a window opens.
    fn next_window_start(&self, now: u64) -> Option<u64> {
        self.windows().next_open(now)
    }

    /// When the next month's budget starts (Unix seconds, after `now`, in the vehicle's zone).
    pub fn next_month_start(&self, now: u64) -> u64 {
        let (y, m) = year_month(month_index(self.local(now)) + 1);
        let local = days_from_civil(y, m, 1) * 86_400;
        u64::try_from(local - i64::from(self.config.utc_offset_minutes) * 60).unwrap_or(u64::MAX)
    }
}

/// Months since January 1970 of local time `t` (seconds).
fn month_index(t: i64) -> i64 {
    let (y, m, _) = civil_from_days(t.div_euclid(86_400));
    (y - 1970) * 12 + i64::from(m) - 1
}

fn year_month(index: i64) -> (i64, u32) {
    let m = u32::try_from(index.rem_euclid(12) + 1).unwrap_or(1);
    (1970 + index.div_euclid(12), m)
}

/// The proleptic Gregorian date of day `z` since 1970-01-01 (the era arithmetic of Howard
/// Hinnant's public date algorithms).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Day number since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// 2026-03-10 00:00 UTC.
    const DAY: u64 = 1_773_100_800;
    const H: u64 = 3600;

    fn config() -> PolicyConfig {
        PolicyConfig {
            cellular_windows: vec![Window::parse("22:00-05:00").unwrap()],
            monthly_budget: 500 << 20,
            min_signal: 30,
            fix_deadline_secs: 7 * 24 * H,
            utc_offset_minutes: 0,
        }
    }

    #[test]
    fn dates_match_the_calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(
            civil_from_days(i64::try_from(DAY / 86_400).unwrap()),
            (2026, 3, 10)
        );
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(
            days_from_civil(2000, 3, 1) - days_from_civil(2000, 2, 28),
            2
        );
        for z in -800_000..800_000i64 {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    /// Every priority × link × (inside/outside window) × (budget left/used up) × (before/after
    /// the fix deadline), against the table in the module docs.
    #[test]
    fn every_combination_follows_the_table() {
        let mut rows = 0;
        for link in LinkClass::ALL {
            for priority in Priority::ALL {
                for in_window in [false, true] {
                    for budget_left in [false, true] {
                        for past_deadline in [false, true] {
                            let mut policy = LinkPolicy::new(config());
                            let now = DAY + if in_window { 23 * H } else { 12 * H };
                            let released = if past_deadline {
                                now - 8 * 24 * H
                            } else {
                                now - H
                            };
                            if !budget_left {
                                policy.record(LinkClass::Cellular, 500 << 20, now);
                            }
                            let decision = policy.decide(
                                Link {
                                    class: link,
                                    signal: 80,
                                },
                                priority,
                                released,
                                now,
                            );
                            let expected = match (link, priority) {
                                (LinkClass::YardWifi | LinkClass::OtherWifi, _) => true,
                                (_, Priority::Feature) => false,
                                (LinkClass::CellularRoaming, Priority::Fix) => false,
                                (_, Priority::Security) => budget_left,
                                (LinkClass::Cellular, Priority::Fix) => {
                                    budget_left && (in_window || past_deadline)
                                }
                            };
                            assert_eq!(
                                decision.allowed(),
                                expected,
                                "{link:?} {priority:?} window {in_window} budget {budget_left} deadline {past_deadline}: {decision:?}"
                            );
                            if let Decision::Allow { max_bytes, .. } = decision {
                                if link.metered() {
                                    assert_eq!(max_bytes, policy.remaining(now));
                                }
                            }
                            rows += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(rows, 4 * 3 * 2 * 2 * 2);
    }

    #[test]
    fn the_budget_is_never_exceeded_and_starts_again_each_month() {
        let mut policy = LinkPolicy::new(config());
        let link = Link {
            class: LinkClass::Cellular,
            signal: 90,
        };
        let mut now = DAY;
        let mut moved = 0u64;
        // A security update drains the budget in chunks the policy allows.
        while let Decision::Allow { max_bytes, .. } =
            policy.decide(link, Priority::Security, now, now)
        {
            let chunk = max_bytes.min(7 << 20);
            policy.record(link.class, chunk, now);
            moved += chunk;
            now += 60;
        }
        assert_eq!(moved, 500 << 20);
        match policy.decide(link, Priority::Security, now, now) {
            Decision::Wait { retry_at, reason } => {
                assert_eq!(reason, "monthly cellular budget used up");
                // 2026-04-01 00:00 UTC.
                assert_eq!(retry_at, Some(1_775_001_600));
            }
            other => panic!("{other:?}"),
        }
        // WiFi bytes never count.
        policy.record(LinkClass::YardWifi, 10 << 30, now);
        assert_eq!(policy.remaining(now), 0);
        // April: the whole budget again.
        assert_eq!(policy.remaining(1_775_001_600), 500 << 20);
        assert!(
            policy
                .decide(link, Priority::Security, now, 1_775_001_600)
                .allowed()
        );
    }

    #[test]
    fn a_fix_waits_for_the_window_then_escalates_at_its_deadline() {
        let policy = LinkPolicy::new(config());
        let link = Link {
            class: LinkClass::Cellular,
            signal: 90,
        };
        let released = DAY + 9 * H;
        // Noon: waits, and says the window opens at 22:00.
        match policy.decide(link, Priority::Fix, released, DAY + 12 * H) {
            Decision::Wait { retry_at, .. } => assert_eq!(retry_at, Some(DAY + 22 * H)),
            other => panic!("{other:?}"),
        }
        assert!(
            policy
                .decide(link, Priority::Fix, released, DAY + 22 * H)
                .allowed()
        );
        assert!(
            policy
                .decide(link, Priority::Fix, released, DAY + 28 * H)
                .allowed()
        ); // 04:00
        assert!(
            !policy
                .decide(link, Priority::Fix, released, DAY + 29 * H)
                .allowed()
        ); // 05:00
        // Seven days after release: cellular at noon too.
        let deadline = released + 7 * 24 * H;
        assert!(
            !policy
                .decide(link, Priority::Fix, released, deadline - 3 * H)
                .allowed()
        ); // 06:00, before the deadline
        assert!(
            policy
                .decide(link, Priority::Fix, released, deadline + 3 * H)
                .allowed()
        );
        // Without windows, the wait ends at the deadline.
        let none = LinkPolicy::new(PolicyConfig {
            cellular_windows: vec![],
            ..config()
        });
        match none.decide(link, Priority::Fix, released, DAY + 12 * H) {
            Decision::Wait { retry_at, .. } => assert_eq!(retry_at, Some(deadline)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn roaming_weak_signal_and_time_zones() {
        let policy = LinkPolicy::new(config());
        let roaming = Link {
            class: LinkClass::CellularRoaming,
            signal: 90,
        };
        assert!(
            policy
                .decide(roaming, Priority::Security, DAY, DAY)
                .allowed()
        );
        for priority in [Priority::Fix, Priority::Feature] {
            assert_eq!(
                policy.decide(roaming, priority, 0, DAY + 23 * H),
                Decision::Wait {
                    retry_at: None,
                    reason: "roaming: security updates only"
                }
            );
        }
        let weak = Link {
            class: LinkClass::Cellular,
            signal: 29,
        };
        assert!(!policy.decide(weak, Priority::Security, DAY, DAY).allowed());
        // UTC+2: 21:00 UTC is 23:00 local, inside 22:00-05:00.
        let east = LinkPolicy::new(PolicyConfig {
            utc_offset_minutes: 120,
            ..config()
        });
        let link = Link {
            class: LinkClass::Cellular,
            signal: 50,
        };
        assert!(
            east.decide(link, Priority::Fix, DAY, DAY + 21 * H)
                .allowed()
        );
        assert!(
            !policy
                .decide(link, Priority::Fix, DAY, DAY + 21 * H)
                .allowed()
        );
    }

    #[test]
    fn windows_parse_and_refuse_by_text() {
        assert_eq!(
            Window::parse("09:30-17:00").unwrap(),
            Window {
                start: 570,
                end: 1020
            }
        );
        assert_eq!(
            Window::parse("22:00-05:00").unwrap().to_string(),
            "22:00-05:00"
        );
        for bad in [
            "",
            "9-17",
            "24:00-01:00",
            "10:60-11:00",
            "10:00-10:00",
            "10:00",
        ] {
            let error = Window::parse(bad).unwrap_err().to_string();
            assert!(error.contains("window"), "{bad}: {error}");
        }
    }
}
