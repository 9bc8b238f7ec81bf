//! What a yard run is given, and how it speaks while it runs.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;

/// What to run.
#[derive(Clone, Debug)]
pub struct YardOptions {
    /// Vehicles in the yard.
    pub vehicles: usize,
    /// Size of the firmware image, bytes.
    pub image_bytes: usize,
    /// The release fails its health check on every vehicle (only the canary gets it).
    pub failing_canary: bool,
    /// Where everything is written (recreated).
    pub out: PathBuf,
    /// The run fails if it has not ended by then.
    pub timeout: Duration,
    /// Seed of the generated firmware.
    pub seed: u64,
    /// Every vehicle agent's `download_bytes_per_sec` (all its mesh fetches together);
    /// `None`: no limit.
    pub vehicle_down_bytes_per_sec: Option<u64>,
    /// The depot's `[serve] upload_bytes_per_sec` (all it sends the yard together); `None`: no
    /// limit.
    pub depot_up_bytes_per_sec: Option<u64>,
    /// Add a corrupt peer to the yard: it claims the delta and answers every request with a
    /// corrupt body ([`crate::rogue`]).
    pub corrupt_peer: bool,
    /// Add a slow reader to the yard: a member that holds as many range requests open at the
    /// depot as it lets it and reads none of them ([`crate::attackers::slow_reader`]).
    pub slow_reader: bool,
    /// Add a report flooder to the yard: a member that hands the depot's relay reports as
    /// fast as it answers ([`crate::attackers::report_flood`]).
    pub report_flood: bool,
    /// The first this many vehicles have a single-bank ECU ([`vehicle_peer::remap`]: one bank
    /// and a spare area as large as the bank) instead of A/B banks.
    pub single_bank: usize,
    /// The last this many vehicles had their gateway ECU replaced: it runs v1's factory build,
    /// which no delta starts from, so they install v2 from the image compressed.
    pub replaced_parts: usize,
    /// How the campaign must end for the run to succeed; `None`: halted with
    /// `failing_canary`, completed otherwise.
    pub expect: Option<Expected>,
    /// Print progress lines.
    pub verbose: bool,
}

/// How a yard's campaign is expected to end. A run whose campaign ends otherwise still writes
/// its summary and report, and `netsim yard` exits with [`UNEXPECTED_EXIT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    /// Every wave opened and the gates held.
    Completed,
    /// The director halted it (a release that fails its health check).
    Halted,
}

impl Expected {
    /// The campaign state's name, as the director gives it.
    pub fn state(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Halted => "halted",
        }
    }

    /// Whether a campaign that ended in `state` ended as expected; if not, why not.
    pub fn judge(self, state: &str, reason: Option<&str>) -> Result<(), String> {
        if state == self.state() {
            return Ok(());
        }
        let wanted = match self {
            Self::Completed => "complete",
            Self::Halted => "halt",
        };
        Err(format!(
            "the campaign was expected to {wanted}; it {state}{}",
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        ))
    }
}

/// `netsim yard`'s exit code when the campaign did not end as expected (1: the run itself
/// failed; 2: the command line was wrong).
pub const UNEXPECTED_EXIT: u8 = 3;

impl YardOptions {
    /// How the campaign must end for the run to succeed.
    pub fn expected(&self) -> Expected {
        self.expect.unwrap_or(match self.failing_canary {
            true => Expected::Halted,
            false => Expected::Completed,
        })
    }

    /// Refuses a yard this machine or the simulated ECUs cannot hold.
    pub(super) fn check(&self) -> anyhow::Result<()> {
        if self.vehicles == 0 || self.vehicles > 64 {
            bail!("--vehicles {}: give 1 to 64", self.vehicles);
        }
        if self.single_bank > self.vehicles {
            bail!(
                "--single-bank {}: the yard has only {} vehicles",
                self.single_bank,
                self.vehicles
            );
        }
        if self.replaced_parts > self.vehicles {
            bail!(
                "--replaced-parts {}: the yard has only {} vehicles",
                self.replaced_parts,
                self.vehicles
            );
        }
        if self.image_bytes < (1 << 20) || self.image_bytes > (1 << 30) {
            bail!("--image-mib: give 1 to 1024");
        }
        Ok(())
    }

    /// The run's first line: the yard's size, the seed, the links' limits and the attackers.
    pub(super) fn header(&self) -> String {
        let attackers: Vec<&str> = [
            (self.corrupt_peer, "a corrupt peer"),
            (self.slow_reader, "a slow reader"),
            (self.report_flood, "a report flooder"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        let replaced = match self.replaced_parts {
            0 => String::new(),
            n => format!(" ({n} with a replaced gateway, on v1's factory build)"),
        };
        format!(
            "yard: {} vehicles{replaced}, {} MiB image, seed {}; links: each vehicle downloads {}, the depot uploads to the yard {} (all vehicles together){}",
            self.vehicles,
            self.image_bytes >> 20,
            self.seed,
            rate_text(self.vehicle_down_bytes_per_sec),
            rate_text(self.depot_up_bytes_per_sec),
            if attackers.is_empty() {
                String::new()
            } else {
                format!("; attackers: {}", attackers.join(", "))
            },
        )
    }
}

/// A link rate as the header and the table print it.
pub(super) fn rate_text(bytes_per_sec: Option<u64>) -> String {
    match bytes_per_sec {
        None => "without a limit".into(),
        Some(rate) if rate % 1024 == 0 => format!("at most {} KiB/s", rate / 1024),
        Some(rate) => format!("at most {rate} B/s"),
    }
}

/// Prints the run's progress lines, each stamped with the seconds since the run started.
#[derive(Clone, Copy, Debug)]
pub(super) struct Log {
    verbose: bool,
    started: Instant,
}

impl Log {
    /// Starts the clock the lines are stamped with; prints nothing unless `verbose`.
    pub(super) fn new(verbose: bool) -> Self {
        Self {
            verbose,
            started: Instant::now(),
        }
    }

    pub(super) fn say(self, line: &str) {
        if self.verbose {
            println!("[{:>6.1} s] {line}", self.started.elapsed().as_secs_f64());
        }
    }

    /// Runs `work`, saying every [`HEARTBEAT`] that it is still at `what` and for how long: a
    /// step of more than a few seconds shows that it goes on.
    pub(super) fn during<T>(self, what: &str, work: impl FnOnce() -> T) -> T {
        if !self.verbose {
            return work();
        }
        let begun = Instant::now();
        let (done, finished) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|scope| {
            scope.spawn(move || {
                // On a terminal the origin keeps a progress line of its own on standard error
                // (its delta's segments); a line of ours first clears it.
                let clear = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    finished.recv_timeout(HEARTBEAT)
                {
                    let line = format!(
                        "{what}: still at it after {:.0} s",
                        begun.elapsed().as_secs_f64()
                    );
                    if clear {
                        print!("\r\x1b[K");
                    }
                    self.say(&line);
                }
            });
            let result = work();
            // The heartbeat ends when its channel closes, sent to or not.
            drop(done);
            result
        })
    }
}

/// How often a long step says it goes on.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> YardOptions {
        YardOptions {
            vehicles: 4,
            image_bytes: 2 << 20,
            failing_canary: false,
            out: PathBuf::from("unused"),
            timeout: Duration::from_secs(60),
            seed: 1,
            vehicle_down_bytes_per_sec: None,
            depot_up_bytes_per_sec: None,
            corrupt_peer: false,
            slow_reader: false,
            report_flood: false,
            single_bank: 4,
            replaced_parts: 4,
            expect: None,
            verbose: false,
        }
    }

    #[test]
    fn a_yard_that_cannot_be_built_is_refused_by_its_flag() {
        assert!(options().check().is_ok());
        let cases: [(YardOptions, &str); 6] = [
            (
                YardOptions {
                    vehicles: 0,
                    ..options()
                },
                "--vehicles 0: give 1 to 64",
            ),
            (
                YardOptions {
                    vehicles: 65,
                    ..options()
                },
                "--vehicles 65: give 1 to 64",
            ),
            (
                YardOptions {
                    single_bank: 5,
                    ..options()
                },
                "--single-bank 5: the yard has only 4 vehicles",
            ),
            (
                YardOptions {
                    replaced_parts: 5,
                    ..options()
                },
                "--replaced-parts 5: the yard has only 4 vehicles",
            ),
            (
                YardOptions {
                    image_bytes: 1 << 19,
                    ..options()
                },
                "--image-mib: give 1 to 1024",
            ),
            (
                YardOptions {
                    image_bytes: (1 << 30) + 1,
                    ..options()
                },
                "--image-mib: give 1 to 1024",
            ),
        ];
        for (yard, error) in cases {
            let refused = yard.check().unwrap_err().to_string();
            assert_eq!(refused, error);
        }
    }

    #[test]
    fn a_halt_fails_a_run_expected_to_complete_and_completing_fails_a_failing_canary() {
        assert_eq!(options().expected(), Expected::Completed);
        let failing = YardOptions {
            failing_canary: true,
            ..options()
        };
        assert_eq!(failing.expected(), Expected::Halted);
        let told = YardOptions {
            expect: Some(Expected::Completed),
            ..failing
        };
        assert_eq!(told.expected(), Expected::Completed);

        assert_eq!(Expected::Completed.judge("completed", None), Ok(()));
        assert_eq!(Expected::Halted.judge("halted", Some("health")), Ok(()));
        assert_eq!(
            Expected::Completed.judge("halted", Some("1 failed health checks in wave 1")),
            Err("the campaign was expected to complete; it halted: 1 failed health checks in wave 1".into())
        );
        assert_eq!(
            Expected::Halted.judge("completed", None),
            Err("the campaign was expected to halt; it completed".into())
        );
        assert!(Expected::Completed.judge("aborted", None).is_err());
        assert!(Expected::Halted.judge("running", None).is_err());
    }

    #[test]
    fn the_header_names_the_replaced_gateways() {
        assert!(
            options().header().starts_with(
                "yard: 4 vehicles (4 with a replaced gateway, on v1's factory build), 2 MiB image"
            ),
            "{}",
            options().header()
        );
        let none = YardOptions {
            replaced_parts: 0,
            ..options()
        };
        assert!(
            none.header().starts_with("yard: 4 vehicles, 2 MiB"),
            "{}",
            none.header()
        );
    }
}
