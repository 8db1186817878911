//! Zero-touch bootstrap, the decision: given what a box without a cluster
//! sees on the gossip network, what it does next. Pure; the agent runs it
//! ([`crate::agent`]) and the membership actor answers the founder's
//! confirmation requests ([`Promise`]).
//!
//! Rules (every box runs the same with the same inputs):
//! - a box that sees a formed cluster (an alive member announcing a
//!   cluster id) joins it: as a manager when it is in the founding set the
//!   founder announces, else as a worker. So a box that starts minutes
//!   late, or a 4th that loses the race, joins rather than founds;
//! - otherwise the candidates are this box and the alive boxes announcing
//!   the same `bootstrap_expect` and no cluster; with at least `expect` of
//!   them, the proposal is the `expect` lowest peer ids;
//! - the lowest of a proposal founds only when every box in it announces
//!   the very same proposal, and then only after each of them confirmed it
//!   directly ([`Promise`]): a box confirms one founder at a time and
//!   sticks to it for [`PROMISE_MS`], so two founders can never both
//!   collect a full set that shares a box.
//! - key derivation: the pre-shared key and both join secrets derive from
//!   `--cluster-key` (SHA-256 with distinct prefixes), so every box with the
//!   key can join by itself; a box with another key cannot even connect.

use sha2::{Digest, Sha256};
use skein_protocol::gossip::Announce;
use skein_protocol::NodeRole;

/// How long a box stays bound to the founder it confirmed.
pub const PROMISE_MS: u64 = 15_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not enough boxes yet (or waiting for agreement); `why` for the log.
    Wait { why: String, proposal: Vec<String> },
    /// This box founds the cluster with `set` (after the confirmations).
    Found { set: Vec<String> },
    /// Join the cluster `cluster_id` through `via` (HOST:PORT) in `role`.
    Join {
        cluster_id: String,
        via: Vec<String>,
        role: NodeRole,
    },
}

/// What this box decides now. `others` are the alive members' announces.
pub fn decide(me: &str, expect: u32, others: &[&Announce]) -> Decision {
    // A formed cluster wins: the smallest id if (wrongly) several show up.
    let mut formed: Vec<&&Announce> = others.iter().filter(|a| !a.cluster_id.is_empty()).collect();
    formed.sort_by(|a, b| (&a.cluster_id, &a.peer).cmp(&(&b.cluster_id, &b.peer)));
    if let Some(first) = formed.first() {
        let cluster_id = first.cluster_id.clone();
        let members: Vec<&&Announce> = formed
            .iter()
            .filter(|a| a.cluster_id == cluster_id)
            .copied()
            .collect();
        let chosen = members
            .iter()
            .any(|a| a.proposal.first() == Some(&a.peer) && a.proposal.iter().any(|p| p == me));
        // Managers first: they can admit (others relay to the leader anyway).
        let mut via: Vec<String> = members
            .iter()
            .filter(|a| a.role == NodeRole::Manager)
            .chain(members.iter().filter(|a| a.role != NodeRole::Manager))
            .flat_map(|a| a.addrs.iter().cloned())
            .collect();
        via.dedup();
        return Decision::Join {
            cluster_id,
            via,
            role: if chosen {
                NodeRole::Manager
            } else {
                NodeRole::Worker
            },
        };
    }
    let expect = expect.max(1) as usize;
    let mut candidates: Vec<&str> = others
        .iter()
        .filter(|a| a.bootstrap_expect as usize == expect && a.role == NodeRole::Manager)
        .map(|a| a.peer.as_str())
        .chain(std::iter::once(me))
        .collect();
    candidates.sort();
    candidates.dedup();
    if candidates.len() < expect {
        return Decision::Wait {
            why: format!(
                "waiting for boxes with the same cluster key: {} of {expect} seen",
                candidates.len()
            ),
            proposal: Vec::new(),
        };
    }
    let set: Vec<String> = candidates[..expect].iter().map(|s| s.to_string()).collect();
    if !set.iter().any(|p| p == me) {
        return Decision::Wait {
            why: "not in the founding set: will join once the cluster forms".into(),
            proposal: set,
        };
    }
    let agreed = set
        .iter()
        .filter(|p| p.as_str() != me)
        .all(|p| others.iter().any(|a| &a.peer == p && a.proposal == set));
    if set[0] == me && agreed {
        return Decision::Found { set };
    }
    Decision::Wait {
        why: if agreed {
            format!("waiting for {} to found the cluster", set[0])
        } else {
            "waiting for the founding set to agree".into()
        },
        proposal: set,
    }
}

/// A box's promise to one founder (answers [`GossipRequest::Confirm`]).
///
/// [`GossipRequest::Confirm`]: skein_protocol::gossip::GossipRequest::Confirm
#[derive(Clone, Debug, Default)]
pub struct Promise {
    held: Option<(String, Vec<String>, u64)>,
}

impl Promise {
    /// Confirms `founder`'s `set` when it is what this box proposes itself
    /// and no other founder holds this box's promise.
    pub fn confirm(
        &mut self,
        founder: &str,
        set: &[String],
        my_proposal: &[String],
        in_cluster: bool,
        now: u64,
    ) -> Result<(), String> {
        if in_cluster {
            return Err("this box is already in a cluster: join it".into());
        }
        if let Some((f, s, at)) = &self.held {
            if now.saturating_sub(*at) < PROMISE_MS && (f != founder || s.as_slice() != set) {
                return Err(format!("already confirmed founder {f}"));
            }
        }
        if set != my_proposal {
            return Err("this box proposes another founding set".into());
        }
        self.held = Some((founder.to_string(), set.to_vec(), now));
        Ok(())
    }

    /// The set this box is bound to right now, if any.
    pub fn bound(&self, now: u64) -> Option<&[String]> {
        match &self.held {
            Some((_, s, at)) if now.saturating_sub(*at) < PROMISE_MS => Some(s),
            _ => None,
        }
    }
}

fn digest(prefix: &str, key: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prefix.as_bytes());
    h.update(key.as_bytes());
    h.finalize().into()
}

/// The transport's pre-shared key for `--cluster-key K`.
pub fn derive_psk(key: &str) -> [u8; 32] {
    digest("skein/psk/1:", key)
}

/// The join secret for `role` (32 hex digits, as generated secrets are).
pub fn derive_secret(key: &str, role: NodeRole) -> String {
    let prefix = match role {
        NodeRole::Manager => "skein/manager/1:",
        NodeRole::Worker => "skein/worker/1:",
    };
    skein_protocol::token::hex(&digest(prefix, key)[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn box_(peer: &str, expect: u32, proposal: &[&str], cluster: &str) -> Announce {
        Announce {
            peer: peer.into(),
            bootstrap_expect: expect,
            role: NodeRole::Manager,
            proposal: proposal.iter().map(|s| s.to_string()).collect(),
            cluster_id: cluster.into(),
            addrs: vec![format!("{peer}:7946")],
            ..Default::default()
        }
    }

    #[test]
    fn waits_until_enough_boxes() {
        let b = box_("b", 3, &[], "");
        match decide("a", 3, &[&b]) {
            Decision::Wait { why, proposal } => {
                assert!(why.contains("2 of 3"), "{why}");
                assert!(proposal.is_empty());
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn the_lowest_founds_once_all_agree() {
        let (b0, c0) = (box_("b", 3, &[], ""), box_("c", 3, &[], ""));
        assert_eq!(
            decide("a", 3, &[&b0, &c0]),
            Decision::Wait {
                why: "waiting for the founding set to agree".into(),
                proposal: vec!["a".into(), "b".into(), "c".into()]
            }
        );
        let b = box_("b", 3, &["a", "b", "c"], "");
        let c = box_("c", 3, &["a", "b", "c"], "");
        assert_eq!(
            decide("a", 3, &[&b, &c]),
            Decision::Found {
                set: vec!["a".into(), "b".into(), "c".into()]
            }
        );
        // b agrees but does not found.
        let a = box_("a", 3, &["a", "b", "c"], "");
        assert!(matches!(decide("b", 3, &[&a, &c]), Decision::Wait { .. }));
    }

    #[test]
    fn a_fourth_box_does_not_found_and_a_formed_cluster_wins() {
        let a = box_("a", 3, &["a", "b", "c"], "");
        let b = box_("b", 3, &["a", "b", "c"], "");
        let c = box_("c", 3, &["a", "b", "c"], "");
        match decide("d", 3, &[&a, &b, &c]) {
            Decision::Wait { proposal, .. } => assert_eq!(proposal, ["a", "b", "c"]),
            d => panic!("{d:?}"),
        }
        // Once a has founded, b joins as a manager, d as a worker.
        let a = box_("a", 3, &["a", "b", "c"], "c1");
        match decide("b", 3, &[&a, &c]) {
            Decision::Join {
                role,
                via,
                cluster_id,
            } => {
                assert_eq!(role, NodeRole::Manager);
                assert_eq!(via, ["a:7946"]);
                assert_eq!(cluster_id, "c1");
            }
            d => panic!("{d:?}"),
        }
        match decide("d", 3, &[&a, &b, &c]) {
            Decision::Join { role, .. } => assert_eq!(role, NodeRole::Worker),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn boxes_with_another_expectation_are_not_candidates() {
        let b = box_("b", 5, &[], "");
        let c = box_("c", 3, &[], "");
        assert!(matches!(decide("a", 3, &[&b, &c]), Decision::Wait { .. }));
    }

    #[test]
    fn a_promise_binds_to_one_founder() {
        let set = vec!["a".to_string(), "b".into(), "c".into()];
        let other = vec!["a".to_string(), "b".into(), "d".into()];
        let mut p = Promise::default();
        assert!(
            p.confirm("a", &set, &other, false, 0).is_err(),
            "not my proposal"
        );
        assert!(p.confirm("a", &set, &set, false, 0).is_ok());
        assert!(
            p.confirm("a", &set, &set, false, 10).is_ok(),
            "same founder again"
        );
        assert!(p.confirm("x", &other, &other, false, 100).is_err());
        assert_eq!(p.bound(100), Some(set.as_slice()));
        assert!(p
            .confirm("x", &other, &other, false, PROMISE_MS + 10)
            .is_ok());
        assert!(p.confirm("a", &set, &set, true, 0).is_err());
    }

    #[test]
    fn keys_and_secrets_derive_apart() {
        assert_eq!(derive_psk("k"), derive_psk("k"));
        assert_ne!(derive_psk("k"), derive_psk("K"));
        let (m, w) = (
            derive_secret("k", NodeRole::Manager),
            derive_secret("k", NodeRole::Worker),
        );
        assert_ne!(m, w);
        assert_eq!(m.len(), 32);
    }
}
