//! The cluster glue: what turns one agent into a member of many. Owns the
//! wiring between the network transport ([`crate::net`]), Raft
//! ([`crate::raft`]) and the node's other actors:
//! - [`raft_link`]: Raft messages to and from peers (chunked when large),
//!   and a fast election when the connection to the leader drops;
//! - [`forward`]: writes sent to any node reach the leader;
//! - [`inbound`]: routes every request a peer sends to its owner, once
//!   [`authority`] allowed it (a peer may ask only what its node's role may);
//! - [`join`]: a new node asking in, and a manager letting it in;
//! - [`heartbeat`]: nodes tell the leader they are alive; the leader marks
//!   silent nodes down (the decision is [`crate::dispatcher::liveness`]);
//! - [`voters`]: a self-formed cluster keeps an odd number of managers.
//!
//! Every node is a Raft member: managers vote, workers are learners. So
//! every node holds the committed state (reads and `skein` commands work
//! against any node, and a worker keeps running its tasks while cut off);
//! writes go to the leader.

pub mod authority;
pub mod forward;
pub mod heartbeat;
pub mod inbound;
pub mod join;
pub mod membership;
pub mod raft_link;
pub mod voters;
