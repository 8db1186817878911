//! skein-node: the agent daemon and the CLI behind the `skein` binary.
//! Each module owns one part of the agent; see its `//!` header.

pub mod agent;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod dispatcher;
pub mod fleet_sim;
pub mod membership;
pub mod net;
pub mod orchestrator;
pub mod raft;
pub mod runtime;
pub mod store;
pub mod taskset;
pub mod util;
pub mod worker;
