//! Four eyes with evidence: a campaign starts, and a halted one resumes, only on the signatures
//! of [`NEEDED`] distinct approvers, none its creator, each by the approver's own ed25519 key
//! over the campaign's [`ApprovalStatement`] (which names the spec's digest, so a signature is
//! for exactly the spec the approver saw).
//!
//! Sans-IO: the director hands in what the campaign is waiting for and a signature; this says
//! whether it counts and whether enough have come. The signatures are kept in the campaign's
//! record and in the audit log, where `origin audit verify` checks them again.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use proto::director_api::{ApprovalStatement, PendingApproval};

/// Distinct approvers, none the campaign's creator, who must sign.
pub const NEEDED: usize = 2;

/// One approver's signature, as kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// The approver (an authenticated operator's name).
    pub by: String,
    /// Their approval key (hex) the signature verified under.
    pub key: String,
    /// The signature (hex).
    pub signature: String,
    /// What was signed.
    pub statement: ApprovalStatement,
    /// When it came (Unix seconds).
    pub at: u64,
}

/// Why a signature does not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// The campaign waits for no signature of this kind.
    #[error("campaign {campaign} awaits no {action}: {why}")]
    NotAwaited {
        /// The campaign.
        campaign: String,
        /// `approve` or `resume`.
        action: String,
        /// Where it stands instead.
        why: String,
    },
    /// Its creator signed.
    #[error("campaign {campaign} was created by {by}: someone else must approve it")]
    Creator {
        /// The campaign.
        campaign: String,
        /// The creator.
        by: String,
    },
    /// The approver signed this already.
    #[error("{by} has already signed this {action} of campaign {campaign}")]
    Twice {
        /// The campaign.
        campaign: String,
        /// The approver.
        by: String,
        /// `approve` or `resume`.
        action: String,
    },
    /// The signature does not verify.
    #[error(
        "the signature is not {by}'s approval key's over campaign {campaign}'s {action} (round {round}, spec sha256 {digest})"
    )]
    BadSignature {
        /// The campaign.
        campaign: String,
        /// The approver.
        by: String,
        /// `approve` or `resume`.
        action: String,
        /// The round.
        round: u64,
        /// The spec digest.
        digest: String,
    },
}

/// What a campaign is waiting for, and the signatures it holds.
#[derive(Debug)]
pub struct Waiting<'a> {
    /// What must be signed.
    pub statement: ApprovalStatement,
    /// Its creator (who may not sign).
    pub creator: &'a str,
    /// Every signature the campaign holds, of this statement or earlier ones.
    pub signed: &'a [Signed],
}

impl Waiting<'_> {
    /// The signatures of this statement.
    pub fn signatures(&self) -> impl Iterator<Item = &Signed> {
        self.signed.iter().filter(|s| s.statement == self.statement)
    }

    /// What the campaign's status shows.
    pub fn pending(&self) -> PendingApproval {
        PendingApproval {
            statement: self.statement.clone(),
            signed_by: self.signatures().map(|s| s.by.clone()).collect(),
            needed: NEEDED,
        }
    }

    /// Checks `by`'s signature over the statement (for `action`), under their approval `key`.
    pub fn check(
        &self,
        action: &str,
        by: &str,
        key: &VerifyingKey,
        signature: &str,
        now: u64,
    ) -> Result<Signed, ApprovalError> {
        let s = &self.statement;
        let campaign = s.campaign.to_string();
        if action != s.action {
            return Err(ApprovalError::NotAwaited {
                campaign,
                action: action.to_string(),
                why: format!("it awaits signatures to {}", s.action),
            });
        }
        if by == self.creator {
            return Err(ApprovalError::Creator {
                campaign,
                by: by.to_string(),
            });
        }
        if self.signatures().any(|signed| signed.by == by) {
            return Err(ApprovalError::Twice {
                campaign,
                by: by.to_string(),
                action: action.to_string(),
            });
        }
        if !s.verify(key, signature) {
            return Err(ApprovalError::BadSignature {
                campaign,
                by: by.to_string(),
                action: action.to_string(),
                round: s.round,
                digest: s.spec_sha256.clone(),
            });
        }
        Ok(Signed {
            by: by.to_string(),
            key: hex::encode(key.as_bytes()),
            signature: signature.to_string(),
            statement: s.clone(),
            at: now,
        })
    }

    /// Whether the signatures held are enough.
    pub fn complete(&self) -> bool {
        self.signatures().count() >= NEEDED
    }
}

/// A campaign start or resume in the audit log that the approvers' signatures do not carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit entry {seq} ({action} of campaign {campaign}): {why}")]
#[non_exhaustive]
pub struct UnsignedDecision {
    /// The entry's sequence number.
    pub seq: u64,
    /// `campaign approve` or `campaign resume`.
    pub action: String,
    /// The campaign.
    pub campaign: String,
    /// What is wrong.
    pub why: String,
}

/// Checks, over the audit log's entries (as signed, in order), that every campaign start and
/// resume carries valid signatures of [`NEEDED`] distinct operators other than the campaign's
/// creator, each under an approval key the log recorded for that operator (`operator add`)
/// before it, over that campaign's spec digest as created. Returns how many decisions were
/// checked.
pub fn audit(entries: &[serde_json::Value]) -> Result<usize, UnsignedDecision> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut created: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut checked = 0;
    for entry in entries {
        let detail = &entry["detail"];
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let action = text(&entry["action"]);
        match action.as_str() {
            "operator add" => {
                if let Some(key) = detail["approval_key"].as_str() {
                    keys.entry(text(&detail["operator"]))
                        .or_default()
                        .insert(key.to_string());
                }
            }
            "operator remove" => {
                keys.remove(&text(&detail["operator"]));
            }
            "campaign create" => {
                created.insert(
                    text(&detail["campaign"]),
                    (text(&entry["actor"]), text(&detail["spec_sha256"])),
                );
            }
            "campaign approve" | "campaign resume" => {
                let campaign = text(&detail["campaign"]);
                let fail = |why: String| UnsignedDecision {
                    seq: entry["seq"].as_u64().unwrap_or_default(),
                    action: action.clone(),
                    campaign: campaign.clone(),
                    why,
                };
                let (creator, digest) = created
                    .get(&campaign)
                    .ok_or_else(|| fail("the log holds no creation of it".into()))?;
                let signed: Vec<Signed> = serde_json::from_value(detail["approvals"].clone())
                    .map_err(|e| fail(format!("no approvers' signatures: {e}")))?;
                let mut by = BTreeSet::new();
                for s in &signed {
                    let wanted = action.trim_start_matches("campaign ");
                    if s.statement.campaign.as_str() != campaign
                        || s.statement.action != wanted
                        || &s.statement.spec_sha256 != digest
                    {
                        return Err(fail(format!(
                            "{}'s signature is over another statement ({} {} of spec {})",
                            s.by, s.statement.action, s.statement.campaign, s.statement.spec_sha256
                        )));
                    }
                    if &s.by == creator {
                        return Err(fail(format!("{} approved their own campaign", s.by)));
                    }
                    if !keys.get(&s.by).is_some_and(|k| k.contains(&s.key)) {
                        return Err(fail(format!(
                            "{}'s key {} is not an approval key the log recorded for them",
                            s.by, s.key
                        )));
                    }
                    let key = proto::director_api::parse_key(&s.key)
                        .map_err(|e| fail(format!("{}'s key: {e}", s.by)))?;
                    if !s.statement.verify(&key, &s.signature) {
                        return Err(fail(format!("{}'s signature does not verify", s.by)));
                    }
                    by.insert(s.by.clone());
                }
                if by.len() < NEEDED {
                    return Err(fail(format!(
                        "signed by {} distinct approver(s), {NEEDED} needed",
                        by.len()
                    )));
                }
                checked += 1;
            }
            _ => {}
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(action: &str, round: u64) -> ApprovalStatement {
        ApprovalStatement {
            campaign: "gw-2.0".parse().unwrap(),
            action: action.into(),
            round,
            spec_sha256: "ab".repeat(32),
        }
    }

    fn waiting(signed: &[Signed]) -> Waiting<'_> {
        Waiting {
            statement: statement("approve", 0),
            creator: "alice",
            signed,
        }
    }

    #[test]
    fn two_distinct_approvers_not_the_creator_with_their_own_keys() {
        let keys: Vec<_> = (1..=3u8)
            .map(|i| ed25519_dalek::SigningKey::from_bytes(&[i; 32]))
            .collect();
        let mut signed = Vec::new();
        let s = statement("approve", 0);
        let w = waiting(&signed);
        // The creator, with a valid signature of her own key, does not count.
        assert!(matches!(
            w.check(
                "approve",
                "alice",
                &keys[0].verifying_key(),
                &s.sign(&keys[0]),
                1
            ),
            Err(ApprovalError::Creator { .. })
        ));
        // Bob's signature made with carol's key does not verify under bob's key.
        assert!(matches!(
            w.check(
                "approve",
                "bob",
                &keys[1].verifying_key(),
                &s.sign(&keys[2]),
                1
            ),
            Err(ApprovalError::BadSignature { .. })
        ));
        // A signature over another spec, or for a resume, is not this approval's.
        let other = ApprovalStatement {
            spec_sha256: "cd".repeat(32),
            ..s.clone()
        };
        for sig in [other.sign(&keys[1]), statement("resume", 0).sign(&keys[1])] {
            assert!(
                w.check("approve", "bob", &keys[1].verifying_key(), &sig, 1)
                    .is_err()
            );
        }
        assert!(matches!(
            w.check(
                "resume",
                "bob",
                &keys[1].verifying_key(),
                &s.sign(&keys[1]),
                1
            ),
            Err(ApprovalError::NotAwaited { .. })
        ));
        signed.push(
            w.check(
                "approve",
                "bob",
                &keys[1].verifying_key(),
                &s.sign(&keys[1]),
                1,
            )
            .unwrap(),
        );
        let w = waiting(&signed);
        assert!(!w.complete());
        assert!(matches!(
            w.check(
                "approve",
                "bob",
                &keys[1].verifying_key(),
                &s.sign(&keys[1]),
                2
            ),
            Err(ApprovalError::Twice { .. })
        ));
        signed.push(
            w.check(
                "approve",
                "carol",
                &keys[2].verifying_key(),
                &s.sign(&keys[2]),
                2,
            )
            .unwrap(),
        );
        let w = waiting(&signed);
        assert!(w.complete());
        assert_eq!(w.pending().signed_by, ["bob", "carol"]);
        // A resume later is a new statement: the approval's signatures do not count for it.
        let resume = Waiting {
            statement: statement("resume", 1),
            creator: "alice",
            signed: &signed,
        };
        assert!(!resume.complete());
        assert_eq!(resume.signatures().count(), 0);
    }
}
