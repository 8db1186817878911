//! Hostile bytes at every parser a stranger or a careless file can reach:
//! the versioned wire codec (Raft commands, node-to-node messages and
//! replies, membership gossip), join tokens, the stack (compose) parser and
//! the JSON bodies of the HTTP API. Each gets arbitrary input and mutations
//! of a valid input (bytes flipped, inserted, deleted, duplicated, cut, and
//! for text, syntax tokens spliced in); every one must come back as a value
//! or an error, never a panic, and quickly (a deadline per input catches a
//! parser that blows up on a small input, e.g. an alias bomb).
//!
//! Cases per property: `SKEIN_FUZZ_CASES` (default 200, under a second,
//! which keeps CI fast). A long run, e.g. before a release (50,000: about 3
//! minutes in a debug build, recorded in `scripts/bench/hostile-inputs.md`):
//!
//! ```sh
//! SKEIN_FUZZ_CASES=50000 cargo test -p skein-tests --test fuzz
//! ```
//!
//! A failure prints the shrunk input; proptest's seed persistence is off so
//! no files appear in the tree.

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde::de::DeserializeOwned;
use skein_protocol::api::{
    NodeUpdateRequest, ScaleRequest, ServiceUpdateRequest, StackDeployRequest, StackRollbackRequest,
};
use skein_protocol::codec::{self, CodecError};
use skein_protocol::gossip::{
    Announce, GossipBatch, GossipReply, GossipRequest, MemberState, MemberUpdate,
};
use skein_protocol::token::JoinToken;
use skein_protocol::wire::{
    Assignments, JoinRequest, RaftChunk, SessionRequest, StatusReport, WireMessage, WireReply,
};
use skein_protocol::{Command, Mount, MountKind, NodeRole, ServiceSpec, TaskState, TaskStatus};
use std::time::{Duration, Instant};

/// Cases per property (`SKEIN_FUZZ_CASES`, default 200).
fn cases() -> u32 {
    std::env::var("SKEIN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(200)
}

fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        // Mutations are cheap; a long run should spend its time on cases.
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

/// No single small input may take longer than this to refuse (generous for
/// a debug build on a loaded machine; an alias bomb takes minutes or never
/// ends).
const PER_INPUT: Duration = Duration::from_secs(5);

fn timed<T>(what: &str, input_len: usize, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    let took = t.elapsed();
    assert!(
        took < PER_INPUT,
        "{what}: an input of {input_len} bytes took {took:?}"
    );
    out
}

/// One edit of a byte string: what, where (taken modulo the length), a byte.
type Edit = (u8, usize, u8);

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    proptest::collection::vec((0u8..8, any::<usize>(), any::<u8>()), 1..12)
}

/// Applies `edits` to `seed`: flip, set, insert, delete a run, duplicate a
/// run, cut, swap two bytes, splice in a length-prefix-looking run of 0xff.
fn mutate(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for &(kind, pos, byte) in edits {
        let at = if v.is_empty() { 0 } else { pos % v.len() };
        match kind {
            0 if !v.is_empty() => v[at] ^= 1 << (byte % 8),
            1 if !v.is_empty() => v[at] = byte,
            2 => v.insert(at.min(v.len()), byte),
            3 if !v.is_empty() => {
                let end = (at + 1 + byte as usize % 16).min(v.len());
                v.drain(at..end);
            }
            4 if !v.is_empty() => {
                let end = (at + 1 + byte as usize % 64).min(v.len());
                let run: Vec<u8> = v[at..end].to_vec();
                let to = (at + byte as usize) % (v.len() + 1);
                v.splice(to..to, run);
            }
            5 => v.truncate(at),
            6 if v.len() > 1 => {
                let other = (at + 1 + byte as usize) % v.len();
                v.swap(at, other);
            }
            _ => {
                let run = [0xff, 0xff, 0xff, 0xff, 0x0f];
                let at = at.min(v.len());
                v.splice(at..at, run[..1 + byte as usize % 5].iter().copied());
            }
        }
    }
    v
}

// ---------------------------------------------------------------- codec --

fn spec() -> ServiceSpec {
    let mut s = ServiceSpec::new("web", "nginx:1.25");
    s.command = vec!["-g".into(), "daemon off;".into()];
    s.env.insert("A".into(), "1".into());
    s.labels.insert("tier".into(), "edge".into());
    s.mounts.push(Mount {
        kind: MountKind::Bind,
        source: Some("/srv/data".into()),
        target: "/data".into(),
        read_only: true,
    });
    s
}

fn node() -> skein_protocol::Node {
    skein_protocol::Node {
        id: "0123456789abcdef".into(),
        name: "edge-01".into(),
        role: NodeRole::Worker,
        availability: skein_protocol::Availability::Active,
        status: skein_protocol::NodeStatus::Ready,
        status_message: String::new(),
        addr: "10.0.0.1:7946".into(),
        api_addr: "127.0.0.1:7947".into(),
        peer_id: "12D3KooWpeer".into(),
        raft_id: 42,
        region: "eu".into(),
        labels: [("zone".to_string(), "a".to_string())].into(),
        description: Default::default(),
        manager_status: None,
        created_at: 1,
        updated_at: 2,
        last_seen: 3,
        session: String::new(),
    }
}

fn announce() -> Announce {
    Announce {
        peer: "12D3KooWpeer".into(),
        incarnation: 7,
        node_id: "0123456789abcdef".into(),
        name: "edge-01".into(),
        role: NodeRole::Worker,
        region: "eu".into(),
        addrs: vec!["10.0.0.1:7946".into()],
        cluster_id: "c0ffee".into(),
        ..Announce::default()
    }
}

fn batch() -> GossipBatch {
    GossipBatch {
        from: "12D3KooWpeer".into(),
        announces: vec![announce(), announce()],
        updates: vec![MemberUpdate {
            peer: "12D3KooWother".into(),
            incarnation: 3,
            state: MemberState::Suspect,
        }],
    }
}

/// Valid frames of every kind the transport carries.
fn frames() -> Vec<Vec<u8>> {
    let status = TaskStatus {
        state: TaskState::Failed,
        exit_code: Some(3),
        error: "exit 3".into(),
        ..TaskStatus::default()
    };
    let msgs = [
        WireMessage::Raft(vec![1, 2, 3, 4, 5, 6, 7, 8]),
        WireMessage::Assignments(Assignments {
            node_id: "n1".into(),
            sequence: 9,
            tasks: vec![],
        }),
        WireMessage::Status(StatusReport {
            node_id: "n1".into(),
            updates: vec![("t1".into(), status)],
        }),
        WireMessage::Propose(Box::new(Command::RemoveService {
            id: "s1".into(),
            at: 5,
        })),
        WireMessage::Join(Box::new(JoinRequest {
            token: "SKNTKN-1-abcd-00-w00".into(),
            node: node(),
            peer_id: "12D3KooWpeer".into(),
            raft_id: 42,
        })),
        WireMessage::RaftChunk(RaftChunk {
            id: 1,
            index: 0,
            total: 2,
            bytes: vec![9; 40],
        }),
        WireMessage::Gossip(Box::new(GossipRequest::Probe(batch()))),
        WireMessage::Session(Box::new(SessionRequest {
            node_id: "n1".into(),
            have: vec![("t1".into(), 77)],
            wait_ms: 500,
            managers: 0,
        })),
    ];
    let mut out: Vec<Vec<u8>> = msgs
        .iter()
        .map(|m| codec::encode(m).expect("encode"))
        .collect();
    let replies = [
        WireReply::Ack,
        WireReply::Error("no".into()),
        WireReply::Gossip(Box::new(GossipReply::Sync(batch()))),
    ];
    out.extend(replies.iter().map(|r| codec::encode(r).expect("encode")));
    out.push(codec::encode(&batch()).expect("encode"));
    out.push(
        codec::encode(&Command::Batch(vec![
            Command::RemoveNode { id: "n".into() },
            Command::RemoveService {
                id: "s".into(),
                at: 1,
            },
        ]))
        .expect("encode"),
    );
    out
}

/// Decodes `bytes` as every frame type; a value that decodes must encode
/// again (no half-valid value slips through).
fn decode_all(bytes: &[u8]) {
    fn one<T: serde::Serialize + DeserializeOwned>(bytes: &[u8]) {
        if let Ok(v) = codec::decode::<T>(bytes) {
            codec::encode(&v).expect("a decoded value encodes again");
        }
    }
    timed("codec", bytes.len(), || {
        one::<WireMessage>(bytes);
        one::<WireReply>(bytes);
        one::<Command>(bytes);
        one::<GossipBatch>(bytes);
        one::<GossipRequest>(bytes);
        one::<GossipReply>(bytes);
    });
}

#[test]
fn codec_refuses_oversized_and_lying_frames() {
    // A length prefix claiming ~4 GiB must be refused, not allocated.
    for claim in [
        vec![codec::VERSION, 3, 252, 255, 255, 255, 255],
        vec![
            codec::VERSION,
            0,
            253,
            255,
            255,
            255,
            255,
            255,
            255,
            255,
            127,
        ],
    ] {
        assert!(matches!(
            codec::decode::<WireMessage>(&claim),
            Err(CodecError::Corrupt(_))
        ));
    }
    let big = vec![codec::VERSION; codec::MAX_FRAME + 1];
    assert!(matches!(
        codec::decode::<WireMessage>(&big),
        Err(CodecError::TooLarge { .. })
    ));
}

// ---------------------------------------------------------------- token --

fn token() -> String {
    JoinToken {
        cluster_id: "abcd1234".into(),
        cluster_key: [7; 32],
        role: NodeRole::Manager,
        secret: "0123456789abcdef0123456789abcdef".into(),
    }
    .to_string()
}

fn parse_token(s: &str) {
    if let Ok(t) = s.parse::<JoinToken>() {
        // What parses prints back to something that parses to the same.
        assert_eq!(t.to_string().parse::<JoinToken>(), Ok(t));
    }
}

// ---------------------------------------------------------------- stack --

const EDGE_STACK: &str = include_str!("../../examples/edge-stack.yml");

const ANCHORS: &str = r#"version: "3.8"
x-common: &common
  image: sh
  command: ["-c", "sleep 1000"]
  deploy:
    replicas: 2
    restart_policy: {condition: on-failure, delay: 2s}
services:
  a:
    <<: *common
    ports: ["8080:80"]
    volumes: ["./data:/data:ro", "cache:/cache"]
  b:
    <<: *common
    environment: [X=1, Y=2]
    healthcheck: {test: ["CMD", "true"], interval: 5s}
volumes:
  cache: {}
"#;

/// YAML syntax a mutation splices in: anchors and aliases, merges, flow
/// collections, block scalars, tags, tabs, document markers.
const YAML_TOKENS: &[&str] = &[
    "&a ",
    "*a",
    "<<: *a",
    "[",
    "]",
    "{",
    "}",
    ": ",
    "- ",
    "\n  ",
    "\t",
    "|",
    ">-",
    "!!str ",
    "!!binary ",
    "---\n",
    "...\n",
    "? ",
    "\"",
    "'",
    "#",
    "%YAML 1.2\n",
    "~",
    "-1",
    "1e999",
    "18446744073709551616",
    "0x",
    ":\n",
    "\u{0}",
    "\u{feff}",
    "replicas: ",
    "deploy:\n  ",
];

fn mutate_yaml(seed: &str, byte_edits: &[Edit], splices: &[(usize, usize)]) -> String {
    let mut s = String::from_utf8_lossy(&mutate(seed.as_bytes(), byte_edits)).into_owned();
    for &(pos, tok) in splices {
        let mut at = if s.is_empty() { 0 } else { pos % s.len() };
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.insert_str(at, YAML_TOKENS[tok % YAML_TOKENS.len()]);
    }
    s
}

fn parse_stack(text: &str) {
    timed("stack parser", text.len(), || {
        if let Ok(stack) = skein_config::stack::parse_stack_in(
            text,
            "fuzz.yml",
            std::path::Path::new("/srv/stack"),
            "fz",
        ) {
            // The module's promise: every spec it returns is valid.
            for s in &stack.services {
                assert_eq!(s.validate(), Ok(()), "{s:?}");
            }
        }
    });
}

// ------------------------------------------------------------ API bodies --

/// Valid JSON bodies of the API's writes.
fn bodies() -> Vec<Vec<u8>> {
    let to = |v: &dyn erased::Json| v.json();
    vec![
        to(&spec()),
        to(&ScaleRequest { replicas: 3 }),
        to(&ServiceUpdateRequest {
            version: 2,
            spec: spec(),
        }),
        to(&StackDeployRequest {
            name: "edge".into(),
            services: vec![spec(), spec()],
            prune: true,
        }),
        to(&StackRollbackRequest { to: Some(1) }),
        to(&NodeUpdateRequest {
            availability: Some(skein_protocol::Availability::Drain),
            transfer_leadership: true,
            rebalance: false,
        }),
    ]
}

mod erased {
    pub trait Json {
        fn json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("to json")
        }
    }
}

/// Reads `bytes` as every API body, as the API's handlers do (serde_json,
/// then the spec's validation, which may see any value that deserialized).
fn read_bodies(bytes: &[u8]) {
    timed("API body", bytes.len(), || {
        if let Ok(s) = serde_json::from_slice::<ServiceSpec>(bytes) {
            let _ = s.validate();
        }
        let _ = serde_json::from_slice::<ScaleRequest>(bytes);
        if let Ok(u) = serde_json::from_slice::<ServiceUpdateRequest>(bytes) {
            let _ = u.spec.validate();
        }
        if let Ok(d) = serde_json::from_slice::<StackDeployRequest>(bytes) {
            let _ = skein_protocol::validate_name(&d.name);
            for s in &d.services {
                let _ = s.validate();
            }
        }
        let _ = serde_json::from_slice::<StackRollbackRequest>(bytes);
        let _ = serde_json::from_slice::<NodeUpdateRequest>(bytes);
    });
}

/// JSON syntax a mutation splices in: the shared list and a key.
fn json_token(i: usize) -> &'static str {
    let base = skein_tests::JSON_TOKENS;
    base.get(i % (base.len() + 1))
        .copied()
        .unwrap_or("\"replicas\":")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn codec_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&bytes);
        let mut framed = vec![codec::VERSION];
        framed.extend_from_slice(&bytes);
        decode_all(&framed);
    }

    #[test]
    fn codec_mutated_frames(which in any::<usize>(), e in edits()) {
        let frames = frames();
        let seed = &frames[which % frames.len()];
        decode_all(&mutate(seed, &e));
    }

    #[test]
    fn token_arbitrary_text(s in ".{0,200}") {
        parse_token(&s);
    }

    #[test]
    fn token_mutated(e in edits()) {
        let t = token();
        parse_token(&String::from_utf8_lossy(&mutate(t.as_bytes(), &e)));
    }

    #[test]
    fn stack_arbitrary_text(s in "(.|\n){0,400}") {
        parse_stack(&s);
    }

    #[test]
    fn stack_mutated_files(
        which in any::<bool>(),
        e in proptest::collection::vec((0u8..8, any::<usize>(), any::<u8>()), 0..8),
        splices in proptest::collection::vec((any::<usize>(), any::<usize>()), 0..8),
    ) {
        let seed = if which { EDGE_STACK } else { ANCHORS };
        parse_stack(&mutate_yaml(seed, &e, &splices));
    }

    #[test]
    fn api_bodies_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        read_bodies(&bytes);
    }

    #[test]
    fn api_bodies_mutated(
        which in any::<usize>(),
        e in proptest::collection::vec((0u8..8, any::<usize>(), any::<u8>()), 0..8),
        splices in proptest::collection::vec((any::<usize>(), any::<usize>()), 0..6),
    ) {
        let bodies = bodies();
        let mut b = mutate(&bodies[which % bodies.len()], &e);
        for &(pos, tok) in &splices {
            let at = if b.is_empty() { 0 } else { pos % b.len() };
            let t = json_token(tok).as_bytes();
            b.splice(at..at, t.iter().copied());
        }
        read_bodies(&b);
    }
}

/// Inputs that have undone parsers elsewhere, each refused with an error
/// that says what is wrong, in bounded time.
#[test]
fn named_hostile_texts_are_refused() {
    // Billion laughs: 9 levels of 9 aliases (~387 million nodes expanded).
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (i, c) in ('b'..='i').enumerate() {
        let prev = (b'a' + i as u8) as char;
        bomb.push_str(&format!(
            "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    bomb.push_str("services:\n  web:\n    image: sh\n    command: *i\n");
    let nested_yaml = format!(
        "services:\n  web:\n    image: sh\n    labels: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let dashes = format!(
        "services:\n  web:\n    image: sh\n    labels:\n      {}x\n",
        "- ".repeat(20_000)
    );
    for (what, text) in [
        ("alias bomb", bomb),
        ("deep nesting", nested_yaml),
        ("deep block nesting", dashes),
    ] {
        let r = timed(what, text.len(), || {
            skein_config::stack::parse_stack(&text, "hostile.yml", "fz")
        });
        let err = r.expect_err(what).to_string();
        assert!(err.contains("hostile.yml"), "{what}: {err}");
        eprintln!("{what}: {err}");
    }
    // Deep JSON: serde_json's recursion limit answers.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(serde_json::from_str::<StackDeployRequest>(&deep).is_err());
}
