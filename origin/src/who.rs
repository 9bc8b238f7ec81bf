//! Who runs an `origin` command, for the audit log: `--actor`, else the person logged in.
//!
//! Operators run the origin's commands as its service user (`runuser -u depotmesh-origin`,
//! `sudo -u depotmesh-origin`), so `$USER` names the service, not the person. The kernel keeps
//! the user a person logged in as (`/proc/self/loginuid`, set by pam_loginuid at an ssh or
//! console login and kept through su, sudo and runuser): that user is the default. Then sudo's
//! `SUDO_USER`, then the account the command runs as — unless that is a system account (a
//! service's user), which names nobody: then `--actor` is required.

use std::fmt;

/// Below this uid an account is a system account (Debian's `SYS_UID_MAX` is 999,
/// /etc/login.defs); root (0) is a person logged in as root.
const FIRST_PERSON_UID: u32 = 1000;

/// `loginuid` when no login set it.
const UNSET_LOGINUID: u32 = u32::MAX;

/// What the command could tell about who runs it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    /// `--actor`.
    pub(crate) flag: Option<String>,
    /// The name of the user logged in (`loginuid`), if a login set it.
    pub(crate) login: Option<String>,
    /// `SUDO_USER`.
    pub(crate) sudo_user: Option<String>,
    /// The account the process runs as (its name in the user database, else `$USER`).
    pub(crate) user: Option<String>,
    /// The process runs as a system account (a uid from 1 to 999).
    pub(crate) system_account: bool,
}

/// No one to record as acting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NoActor {
    user: Option<String>,
}

impl fmt::Display for NoActor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(user) => write!(
                f,
                "give --actor NAME: the audit log records who acted, and {user} is a service's \
                 account (no login names the person running it)"
            ),
            None => write!(
                f,
                "give --actor NAME: the audit log records who acted, and nothing names the \
                 person running this"
            ),
        }
    }
}

impl std::error::Error for NoActor {}

/// Who acts: the flag, the login, sudo's user, then the process's account if it is not a
/// service's.
pub(crate) fn choose(seen: Seen) -> Result<String, NoActor> {
    let named = |name: &Option<String>| name.clone().filter(|n| !n.is_empty());
    named(&seen.flag)
        .or_else(|| named(&seen.login))
        .or_else(|| named(&seen.sudo_user))
        .or_else(|| named(&seen.user).filter(|_| !seen.system_account))
        .ok_or(NoActor {
            user: named(&seen.user),
        })
}

/// What this process can tell about who runs it, with `flag` as `--actor`.
pub(crate) fn seen(flag: Option<String>) -> Seen {
    let login = std::fs::read_to_string("/proc/self/loginuid")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|&uid| uid != UNSET_LOGINUID)
        .and_then(user_name);
    let uid = nix::unistd::getuid().as_raw();
    Seen {
        flag,
        login,
        sudo_user: std::env::var("SUDO_USER").ok(),
        user: user_name(uid).or_else(|| std::env::var("USER").ok()),
        system_account: (1..FIRST_PERSON_UID).contains(&uid),
    }
}

/// The name of the account `uid`, as the system's user database (NSS) has it.
fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen() -> Seen {
        Seen {
            flag: None,
            login: Some("alice".into()),
            sudo_user: Some("bob".into()),
            user: Some("depotmesh-origin".into()),
            system_account: true,
        }
    }

    #[test]
    fn the_flag_then_the_login_then_sudo_then_user() {
        let flagged = Seen {
            flag: Some("carol".into()),
            ..seen()
        };
        assert_eq!(choose(flagged).as_deref(), Ok("carol"));
        assert_eq!(choose(seen()).as_deref(), Ok("alice"));
        let no_login = Seen {
            login: None,
            ..seen()
        };
        assert_eq!(choose(no_login).as_deref(), Ok("bob"));
        let a_person = Seen {
            login: None,
            sudo_user: None,
            user: Some("dave".into()),
            system_account: false,
            ..seen()
        };
        assert_eq!(choose(a_person).as_deref(), Ok("dave"));
    }

    #[test]
    fn a_service_account_alone_names_nobody() {
        let service = Seen {
            login: None,
            sudo_user: Some(String::new()),
            ..seen()
        };
        let refusal = choose(service).unwrap_err().to_string();
        assert!(refusal.contains("--actor"), "{refusal}");
        assert!(refusal.contains("depotmesh-origin"), "{refusal}");
        let empty_flag = Seen {
            flag: Some(String::new()),
            ..seen()
        };
        assert_eq!(choose(empty_flag).as_deref(), Ok("alice"));
    }
}
