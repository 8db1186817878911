//! Bytes on the wire of the membership messages, from the real codec: what
//! the gossip simulation (`examples/gossip_sim.rs`) charges per message, so
//! its bandwidth figures follow the encoder instead of constants.
//!
//! Owns: representative messages (a 52-character peer id, a 16-digit node
//! id, one address, one label) encoded with [`skein_protocol::codec`], plus
//! the transport's framing around them. Invariant: every size here is an
//! encoded length plus a fixed, documented overhead; nothing is a guess
//! about the payload.

use skein_protocol::gossip::{
    Announce, GossipBatch, GossipReply, GossipRequest, MemberState, MemberUpdate,
};
use skein_protocol::wire::{WireMessage, WireReply};
use skein_protocol::{NodeResources, NodeRole, RuntimeKind};

/// A request or reply frame: the codec's length prefix is in the encoding;
/// around it a yamux frame header (12), the noise frame's length and tag
/// (2 + 16) and the stream's opening (yamux SYN header and the
/// multistream-select exchange of the protocol name, ~40) amortised over
/// the request and its reply (~20 each).
pub const RPC_FRAMING: u64 = 12 + 18 + 20;

/// What gossipsub adds to a published message: the protobuf envelope with
/// the author's peer id (2 + 38), sequence number (2 + 8), topic (2 +
/// its length), signature (2 + 64) and the data's tag and length (3), the
/// RPC wrapper (3), then the stream's framing (yamux 12, noise 18).
pub fn gossipsub_envelope() -> u64 {
    (2 + 38) + (2 + 8) + (2 + crate::net::GOSSIP_TOPIC.len() as u64) + (2 + 64) + 3 + 3 + 12 + 18
}

/// Sizes per message, in bytes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireSizes {
    /// A probe or its ack: a batch carrying one member update.
    pub probe: u64,
    /// An indirect probe request or its answer.
    pub indirect: u64,
    /// A gossip message carrying one member update (signed, per mesh link).
    pub gossip: u64,
    /// A member's announce on the gossip topic (signed, per mesh link).
    pub announce: u64,
}

fn len<T: serde::Serialize>(v: &T) -> u64 {
    skein_protocol::codec::encode(v).map_or(0, |b| b.len() as u64)
}

fn peer(i: u32) -> String {
    // The text form of an ed25519 libp2p peer id: 52 characters.
    format!("12D3KooW{:0>44}", i)
}

/// One member's update, as probes and gossip carry them.
pub fn sample_update() -> MemberUpdate {
    MemberUpdate {
        peer: peer(2),
        incarnation: 3,
        state: MemberState::Suspect,
    }
}

/// One member's announce as an edge box sends it.
pub fn sample_announce() -> Announce {
    Announce {
        peer: peer(1),
        incarnation: 1,
        node_id: "5e81794406f989ca".into(),
        name: "edge-0001".into(),
        role: NodeRole::Worker,
        region: "default".into(),
        addrs: vec!["10.20.30.40:7946".into()],
        labels: [("site".to_string(), "shop-17".to_string())].into(),
        resources: NodeResources {
            nano_cpus: 4_000_000_000,
            memory_bytes: 8 << 30,
        },
        runtimes: vec![RuntimeKind::Process],
        cluster_id: "5754f90814e77c75".into(),
        bootstrap_expect: 0,
        proposal: Vec::new(),
    }
}

/// The sizes, from the codec.
pub fn wire_sizes() -> WireSizes {
    let one = |announces: Vec<Announce>, updates: Vec<MemberUpdate>| GossipBatch {
        from: peer(1),
        announces,
        updates,
    };
    let probe = len(&WireMessage::Gossip(Box::new(GossipRequest::Probe(one(
        Vec::new(),
        vec![sample_update()],
    )))));
    let ack = len(&WireReply::Gossip(Box::new(GossipReply::Ack(one(
        Vec::new(),
        vec![sample_update()],
    )))));
    let ask = len(&WireMessage::Gossip(Box::new(GossipRequest::ProbeFor {
        target: peer(3),
        timeout_ms: 500,
    })));
    let answer = len(&WireReply::Gossip(Box::new(GossipReply::Probed {
        reachable: true,
    })));
    let gossip = len(&one(Vec::new(), vec![sample_update()]));
    let announce = len(&one(vec![sample_announce()], Vec::new()));
    WireSizes {
        probe: probe.max(ack) + RPC_FRAMING,
        indirect: ask.max(answer) + RPC_FRAMING,
        gossip: gossip + gossipsub_envelope(),
        announce: announce + gossipsub_envelope(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sizes_are_the_encoders_lengths_plus_framing() {
        let s = wire_sizes();
        // Each is the real encoding of its message plus the fixed framing:
        // a change of the wire types moves these figures with it.
        let update = len(&sample_update());
        assert!(s.probe > update + RPC_FRAMING, "{s:?}");
        assert!(s.gossip > update + gossipsub_envelope(), "{s:?}");
        assert!(
            s.announce >= len(&sample_announce()) + gossipsub_envelope(),
            "{s:?}"
        );
        // Sanity against the transport: an announce is a few hundred bytes
        // (the protocol's own promise), a probe far less.
        assert!(s.announce < 1_000 && s.probe < s.announce, "{s:?}");
    }
}
