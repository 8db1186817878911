//! The versioned binary codec: `[VERSION][bincode(standard) payload]`.
//! Refuses input larger than [`MAX_FRAME`], with an unknown version byte, or
//! whose payload does not decode exactly (trailing bytes are corruption).

use serde::{de::DeserializeOwned, Serialize};

/// Current format version; bump it when a change is not backward compatible.
pub const VERSION: u8 = 1;
/// Largest frame accepted or produced: 64 MiB. No frame holds a whole state: snapshots
/// are images of per-object records moved in chunks of a few MiB (`skein-node`'s
/// `raft::snapshot` and `cluster::snapshot_link`).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("empty frame")]
    Empty,
    #[error(
        "unsupported codec version {found} (this build speaks {VERSION}): upgrade the older node"
    )]
    Version { found: u8 },
    #[error("frame of {size} bytes is over the {MAX_FRAME} byte limit")]
    TooLarge { size: usize },
    #[error("corrupt frame: {0}")]
    Corrupt(String),
    #[error("cannot encode: {0}")]
    Encode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![VERSION];
    let body = bincode::serde::encode_to_vec(value, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if body.len() + 1 > MAX_FRAME {
        return Err(CodecError::TooLarge {
            size: body.len() + 1,
        });
    }
    out.extend_from_slice(&body);
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if bytes.len() > MAX_FRAME {
        return Err(CodecError::TooLarge { size: bytes.len() });
    }
    if version != VERSION {
        return Err(CodecError::Version { found: version });
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Corrupt(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Corrupt(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{StatusReport, WireMessage};
    use crate::*;
    use proptest::prelude::*;

    fn sample_task(slot: u64) -> Task {
        let mut spec = ServiceSpec::new("web", "nginx:1.25");
        spec.command = vec!["-g".into(), "daemon off;".into()];
        spec.env.insert("A".into(), "1".into());
        spec.ports.push(PortConfig {
            target: 80,
            published: Some(8080),
            protocol: Protocol::Tcp,
            mode: PublishMode::Host,
        });
        spec.update_config.max_failure_ratio = 0.25;
        Task {
            id: format!("t{slot}"),
            service_id: "s1".into(),
            service_name: "web".into(),
            slot: Some(slot),
            node_id: Some("n1".into()),
            spec_version: 3,
            spec,
            desired_state: TaskState::Running,
            status: TaskStatus {
                state: TaskState::Running,
                exit_code: Some(-1),
                ..Default::default()
            },
            created_at: 1_700_000_000_000,
            restarts: vec![1, 2],
        }
    }

    #[test]
    fn round_trips_commands() {
        let cmd = Command::Batch(vec![
            Command::CreateTasks(vec![sample_task(1), sample_task(2)]),
            Command::SetDesiredState(vec![("t1".into(), TaskState::Shutdown)]),
            Command::RemoveService {
                id: "s1".into(),
                at: 5,
            },
        ]);
        let bytes = encode(&cmd).expect("encode");
        assert_eq!(bytes[0], VERSION);
        assert_eq!(decode::<Command>(&bytes), Ok(cmd));
    }

    #[test]
    fn refuses_bad_frames() {
        assert_eq!(decode::<Command>(&[]), Err(CodecError::Empty));
        let mut bytes = encode(&Command::RemoveNode { id: "n".into() }).expect("encode");
        bytes[0] = 9;
        assert_eq!(
            decode::<Command>(&bytes),
            Err(CodecError::Version { found: 9 })
        );
        bytes[0] = VERSION;
        bytes.push(0);
        assert!(matches!(
            decode::<Command>(&bytes),
            Err(CodecError::Corrupt(_))
        ));
        // A variant index far out of range.
        assert!(matches!(
            decode::<Command>(&[VERSION, 200, 1]),
            Err(CodecError::Corrupt(_))
        ));
        // A length prefix claiming more than the limit must not allocate it.
        assert!(decode::<WireMessage>(&[VERSION, 0, 252, 255, 255, 255, 255]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Command>(&bytes);
            let _ = decode::<WireMessage>(&bytes);
        }

        #[test]
        fn status_reports_round_trip(code in any::<i32>(), err in ".{0,40}", n in 0u64..50) {
            let msg = WireMessage::Status(StatusReport {
                node_id: "n1".into(),
                updates: vec![(format!("t{n}"), TaskStatus {
                    state: TaskState::Failed,
                    exit_code: Some(code),
                    error: err,
                    timestamp: n,
                    ..Default::default()
                })],
            });
            let bytes = encode(&msg).expect("encode");
            prop_assert_eq!(decode::<WireMessage>(&bytes).expect("decode"), msg);
        }

        #[test]
        fn truncation_is_an_error(cut in 1usize..40) {
            let bytes = encode(&Command::CreateTasks(vec![sample_task(1)])).expect("encode");
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(decode::<Command>(&bytes[..bytes.len() - cut]).is_err());
        }
    }
}
