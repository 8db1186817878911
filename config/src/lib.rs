//! skein-config: what a user writes to configure skein, read and checked once.
//!
//! - [`agent`]: the agent's settings from flags, `SKEIN_*` environment
//!   variables, a TOML file and defaults, in that order of precedence.
//! - [`stack`]: the compose file `skein stack deploy` takes, turned into
//!   [`skein_protocol::ServiceSpec`]s.
//!
//! No I/O beyond reading the files named; no async. Every error a user can
//! cause names where it came from (file, line and key, flag or variable) and
//! how to fix it.

pub mod agent;
pub mod stack;
mod suggest;

pub use agent::{
    load_agent_config, AgentConfig, AgentOverrides, ConfigError, Origin, RaftTuning, RuntimeChoice,
};
pub use stack::{load_stack, parse_stack, parse_stack_in, Position, Stack, StackError};
