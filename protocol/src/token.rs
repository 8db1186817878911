//! Join tokens: one copy-pasteable string that lets a node join a cluster in
//! a role. It carries the cluster id, the cluster key (the transport's
//! pre-shared key, so a node without it cannot even connect) and a secret
//! for the role, which managers check and rotate.
//!
//! Format: `SKNTKN-1-<cluster id>-<64 hex: cluster key>-<w|m><secret hex>`.

use crate::NodeRole;
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub cluster_id: String,
    pub cluster_key: [u8; 32],
    pub role: NodeRole,
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key or the secret.
        f.debug_struct("JoinToken")
            .field("cluster_id", &self.cluster_id)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

const PREFIX: &str = "SKNTKN-1-";

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits as 32 bytes (the cluster key's form in tokens and on disk).
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match self.role {
            NodeRole::Manager => 'm',
            NodeRole::Worker => 'w',
        };
        write!(
            f,
            "{PREFIX}{}-{}-{role}{}",
            self.cluster_id,
            hex(&self.cluster_key),
            self.secret
        )
    }
}

impl std::str::FromStr for JoinToken {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid join token: {why} (get one with `skein join-token worker` on a manager)"
            )
        };
        let rest = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad("it does not start with SKNTKN-1-"))?;
        let mut parts = rest.split('-');
        let (Some(cluster_id), Some(key), Some(role_secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("it does not have three parts after the prefix"));
        };
        if cluster_id.is_empty() || !cluster_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the cluster id is not hex"));
        }
        let cluster_key =
            unhex32(key).ok_or_else(|| bad("the cluster key is not 64 hex digits"))?;
        let mut chars = role_secret.chars();
        let role = match chars.next() {
            Some('m') => NodeRole::Manager,
            Some('w') => NodeRole::Worker,
            _ => return Err(bad("the role is neither m nor w")),
        };
        let secret: String = chars.collect();
        if secret.len() < 16 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the secret is too short or not hex"));
        }
        Ok(JoinToken {
            cluster_id: cluster_id.to_string(),
            cluster_key,
            role,
            secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let t = JoinToken {
            cluster_id: "abcd1234".into(),
            cluster_key: [7; 32],
            role: NodeRole::Worker,
            secret: "0123456789abcdef0123".into(),
        };
        let s = t.to_string();
        assert_eq!(s.parse::<JoinToken>(), Ok(t.clone()));
        assert!(!format!("{t:?}").contains("0707"), "Debug hides the key");
        for bad in [
            "",
            "SKNTKN-1-",
            "nope",
            &s.replace("-w", "-x"),
            &s[..s.len() - 10],
        ] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad}");
        }
    }
}
