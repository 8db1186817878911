//! The cluster glue: what turns one agent into a member of many. Owns the
//! wiring between the network transport ([`crate::net`]), Raft
//! ([`crate::raft`]) and the node's other actors:
//! - [`raft_link`]: Raft messages to and from peers (chunked when large),
//!   and a fast election when the connection to the leader drops;
//! - [`forward`]: writes sent to any node reach the leader;
//! - [`inbound`]: routes every request a peer sends to its owner, once
//!   [`authority`] allowed it (a peer may ask only what its node's role may);
//! - [`join`]: a new node asking in, and a manager letting it in;
//! - [`voters`]: a self-formed cluster keeps an odd number of managers.
//!
//! Only managers are Raft members (voters; a joining or promoted manager is
//! a learner until it caught up) and hold the committed state. A worker is
//! not: it holds a session with one manager ([`crate::dispatcher`] serves
//! it, [`crate::worker::session`] is the worker's side) and only its own
//! assignments. Writes go to the leader.

pub mod authority;
pub mod forward;
pub mod inbound;
pub mod join;
pub mod membership;
pub mod raft_link;
pub mod voters;
