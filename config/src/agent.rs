//! The agent's configuration: `skein agent` flags, `SKEIN_*` environment
//! variables, a TOML file and defaults, merged and validated once at start.
//!
//! Owns: [`AgentConfig`] and where each of its values came from. Called by
//! the `skein agent` command before anything starts.
//!
//! Invariants:
//! - precedence is flags > environment > file > defaults, per key; labels
//!   merge per label key (the higher source wins for a key), `join` is taken
//!   whole from the highest source that gives it;
//! - a returned config is valid: socket addresses parse, `listen` is
//!   HOST:PORT (port 0: any free port), `advertise` is HOST:PORT that
//!   another node can dial (a real host, port 1-65535), `token` is a
//!   [`JoinToken`] and comes with `join` (neither one without the other),
//!   names follow [`skein_protocol::validate_name`], labels are
//!   KEY=VALUE, Raft timing is workable (tick_ms > 0, election_ticks >
//!   heartbeat_ticks > 0);
//! - every error names the key, the value and where it came from (flag
//!   `--api`, env `SKEIN_API`, or `FILE:LINE:COL`), and says how to fix it;
//!   the one exception is `token`, a secret: its errors name the key and
//!   where it came from but never its value, and neither does
//!   `AgentConfig`'s `Debug` (nor its `Serialize`, which leaves it out);
//! - the environment is read only through the function passed in, so tests
//!   never depend on the process environment.

use crate::suggest;
use serde::{Deserialize, Serialize};
use skein_protocol::token::JoinToken;
use skein_protocol::validate_name;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use toml::Spanned;

pub const DEFAULT_API: &str = "127.0.0.1:7947";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7946";
pub const DEFAULT_REGION: &str = "default";

/// Which runtime the agent uses for tasks that do not name one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeChoice {
    /// Docker when an engine answers, else the process runtime.
    #[default]
    Auto,
    Docker,
    Process,
}

impl fmt::Display for RuntimeChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeChoice::Auto => "auto",
            RuntimeChoice::Docker => "docker",
            RuntimeChoice::Process => "process",
        })
    }
}

impl std::str::FromStr for RuntimeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(RuntimeChoice::Auto),
            "docker" => Ok(RuntimeChoice::Docker),
            "process" => Ok(RuntimeChoice::Process),
            other => Err(suggest::unknown_value(
                other,
                &["auto", "docker", "process"],
            )),
        }
    }
}

/// Raft timing, in ticks of `tick_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RaftTuning {
    pub tick_ms: u64,
    /// A follower that hears no leader for this many ticks starts an election.
    pub election_ticks: u64,
    /// The leader sends heartbeats every this many ticks.
    pub heartbeat_ticks: u64,
    /// Applied entries between snapshots (log compaction).
    pub snapshot_entries: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_entries: 1000,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    /// The node's name: the hostname unless set.
    pub name: String,
    /// Where the HTTP API listens.
    pub api: SocketAddr,
    /// Where the cluster transport listens: HOST:PORT.
    pub listen: String,
    /// The address other nodes dial to reach this one: HOST:PORT, never an
    /// unspecified host (0.0.0.0, [::]) or port 0. `None`: not given.
    pub advertise: Option<String>,
    pub runtime: RuntimeChoice,
    pub labels: BTreeMap<String, String>,
    pub region: String,
    /// Peers to join: HOST:PORT or multiaddrs (`/ip4/10.0.0.2/tcp/7946`).
    pub join: Vec<String>,
    /// The join token (a [`JoinToken`], checked): given exactly when `join`
    /// is not empty. A secret: `Debug` shows it redacted, `Serialize` skips it.
    #[serde(skip_serializing)]
    pub token: Option<String>,
    pub raft: RaftTuning,
    /// `--bootstrap-expect N`: form a cluster by itself once N boxes with
    /// the same cluster key see each other (0: off).
    pub bootstrap_expect: u32,
    /// `--cluster-key K`: the shared secret of a self-forming cluster (a
    /// secret, never printed).
    pub cluster_key: Option<String>,
    /// Raft voters a self-formed cluster keeps (odd; default: bootstrap_expect).
    pub voters: u32,
    /// mDNS discovery on the LAN (`--no-mdns` turns it off).
    pub mdns: bool,
    /// How often a node reports to the leader.
    pub heartbeat_ms: u64,
    /// `--force-new-cluster`: a manager whose Raft log is gone founds a new
    /// one-manager cluster instead of refusing to start (flag only: never
    /// from a file or the environment, where it would outlive the emergency).
    pub force_new_cluster: bool,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Everything but the token's value, which holds a secret.
        f.debug_struct("AgentConfig")
            .field("data_dir", &self.data_dir)
            .field("name", &self.name)
            .field("api", &self.api)
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("runtime", &self.runtime)
            .field("labels", &self.labels)
            .field("region", &self.region)
            .field("join", &self.join)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field(
                "cluster_key",
                &self.cluster_key.as_ref().map(|_| "<redacted>"),
            )
            .field("bootstrap_expect", &self.bootstrap_expect)
            .field("voters", &self.voters)
            .field("mdns", &self.mdns)
            .field("raft", &self.raft)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("force_new_cluster", &self.force_new_cluster)
            .finish()
    }
}

/// What the command line gave (each `None`/empty: not given).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentOverrides {
    /// `--config FILE`
    pub config: Option<PathBuf>,
    /// `--data-dir DIR`
    pub data_dir: Option<PathBuf>,
    /// `--name NAME`
    pub name: Option<String>,
    /// `--api ADDR`
    pub api: Option<String>,
    /// `--listen HOST:PORT`
    pub listen: Option<String>,
    /// `--advertise HOST:PORT`
    pub advertise: Option<String>,
    /// `--runtime auto|docker|process`
    pub runtime: Option<String>,
    /// `--label K=V`, repeated.
    pub labels: Vec<String>,
    /// `--region NAME`
    pub region: Option<String>,
    /// `--join ADDR`, repeated.
    pub join: Vec<String>,
    /// `--token T`
    pub token: Option<String>,
    /// `--bootstrap-expect N`
    pub bootstrap_expect: Option<u32>,
    /// `--cluster-key K`
    pub cluster_key: Option<String>,
    /// `--voters N`
    pub voters: Option<u32>,
    /// `--no-mdns`
    pub no_mdns: bool,
    /// `--force-new-cluster`
    pub force_new_cluster: bool,
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    Flag(&'static str),
    Env(&'static str),
    File {
        file: String,
        line: usize,
        column: usize,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::File { file, line, column } => write!(f, "{file}:{line}:{column}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {file} (from {origin}): {source}")]
    Read {
        file: String,
        origin: Origin,
        #[source]
        source: std::io::Error,
    },
    /// The TOML file is malformed, has a value of the wrong type, or an
    /// unknown key. `key` is the key (or, for an unknown key, its table).
    #[error("{file}:{line}:{column}: {}{message}", key_prefix(.key))]
    File {
        file: String,
        line: usize,
        column: usize,
        key: Option<String>,
        message: String,
    },
    /// A value that does not work, wherever it came from.
    #[error("{origin}: {key} = {value:?}: {message}")]
    Invalid {
        key: String,
        value: String,
        origin: Origin,
        message: String,
    },
    /// A secret value (`token`) that does not work: like `Invalid`, but the
    /// value is neither kept nor shown.
    #[error("{origin}: {key}: {message}")]
    InvalidSecret {
        key: String,
        origin: Origin,
        message: String,
    },
}

fn key_prefix(key: &Option<String>) -> String {
    match key {
        Some(k) if !k.is_empty() => format!("{k}: "),
        _ => String::new(),
    }
}

impl ConfigError {
    /// The config key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::File { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } | ConfigError::InvalidSecret { key, .. } => Some(key),
        }
    }
}

// ---------------------------------------------------------------------------
// The file.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    api: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    advertise: Option<Spanned<String>>,
    runtime: Option<Spanned<String>>,
    labels: Option<Spanned<BTreeMap<String, String>>>,
    region: Option<Spanned<String>>,
    join: Option<Spanned<Vec<String>>>,
    token: Option<Spanned<String>>,
    bootstrap_expect: Option<Spanned<u32>>,
    cluster_key: Option<Spanned<String>>,
    voters: Option<Spanned<u32>>,
    mdns: Option<Spanned<bool>>,
    raft: Option<RaftFile>,
    heartbeat_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RaftFile {
    tick_ms: Option<Spanned<u64>>,
    election_ticks: Option<Spanned<u64>>,
    heartbeat_ticks: Option<Spanned<u64>>,
    snapshot_entries: Option<Spanned<u64>>,
}

struct LoadedFile {
    name: String,
    text: String,
    cfg: FileConfig,
}

impl LoadedFile {
    fn origin(&self, span: Range<usize>) -> Origin {
        let (line, column) = line_col(&self.text, span.start);
        Origin::File {
            file: self.name.clone(),
            line,
            column,
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The dotted key on the line holding `offset` (`raft.tick_ms`), from the
/// `[table]` header above it.
fn toml_key_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or_default();
    let key = line.split_once('=')?.0.trim().trim_matches('"');
    if key.is_empty() || key.starts_with(['[', '#']) {
        return None;
    }
    Some(match toml_table_before(text, start) {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

/// The `[table]` whose header is the last one before byte `end`.
fn toml_table_before(text: &str, end: usize) -> Option<String> {
    text.get(..end)?.lines().rev().find_map(|l| {
        let t = l.trim();
        let inner = t.strip_prefix('[')?.split(']').next()?;
        Some(inner.trim_matches(['[', ' ']).to_string())
    })
}

fn read_file(path: &std::path::Path, origin: Origin) -> Result<LoadedFile, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: name.clone(),
        origin,
        source,
    })?;
    let cfg = toml::from_str::<FileConfig>(&text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let (line, column) = line_col(&text, offset);
        let reworded = suggest::reword(e.message().trim());
        let key = match &reworded.unknown_key {
            Some(_) => toml_table_before(&text, offset),
            None => toml_key_at(&text, offset),
        };
        ConfigError::File {
            file: name.clone(),
            line,
            column,
            key,
            message: reworded.message,
        }
    })?;
    Ok(LoadedFile { name, text, cfg })
}

// ---------------------------------------------------------------------------
// Merging and validation.

/// Builds the agent's configuration from the flags in `over`, the
/// environment (read through `env`; callers pass `|k| std::env::var(k).ok()`),
/// the TOML file named by `--config` or `SKEIN_CONFIG`, and the defaults.
pub fn load_agent_config(
    over: &AgentOverrides,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AgentConfig, ConfigError> {
    // Empty variables count as unset.
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());

    let file = match (&over.config, env("SKEIN_CONFIG")) {
        (Some(p), _) => Some(read_file(p, Origin::Flag("--config"))?),
        (None, Some(p)) => Some(read_file(
            std::path::Path::new(&p),
            Origin::Env("SKEIN_CONFIG"),
        )?),
        (None, None) => None,
    };
    let fc = file.as_ref().map(|f| &f.cfg);
    let from_file = |v: Option<&Spanned<String>>| -> Option<(String, Origin)> {
        let v = v?;
        let f = file.as_ref()?;
        Some((v.get_ref().clone(), f.origin(v.span())))
    };
    let pick = |flag: Option<&String>,
                flag_name: &'static str,
                var: &'static str,
                file_val: Option<&Spanned<String>>|
     -> Option<(String, Origin)> {
        if let Some(v) = flag {
            return Some((v.clone(), Origin::Flag(flag_name)));
        }
        if let Some(v) = env(var) {
            return Some((v, Origin::Env(var)));
        }
        from_file(file_val)
    };

    // data_dir
    let data_dir = match &over.data_dir {
        Some(p) => (p.clone(), Origin::Flag("--data-dir")),
        None => match pick(
            None,
            "",
            "SKEIN_DATA_DIR",
            fc.and_then(|c| c.data_dir.as_ref()),
        ) {
            Some((v, origin)) => (expand_home(&v, &env, "data_dir", &origin)?, origin),
            None => {
                let dir = default_data_dir(running_as_root(), env("HOME")).map_err(|message| {
                    ConfigError::Invalid {
                        key: "data_dir".into(),
                        value: String::new(),
                        origin: Origin::Default,
                        message,
                    }
                })?;
                (dir, Origin::Default)
            }
        },
    };
    if data_dir.0.as_os_str().is_empty() {
        return Err(invalid(
            "data_dir",
            "",
            data_dir.1,
            "is empty: give a directory, e.g. /var/lib/skein",
        ));
    }

    // name
    let (name, origin) = pick(
        over.name.as_ref(),
        "--name",
        "SKEIN_NAME",
        fc.and_then(|c| c.name.as_ref()),
    )
    .unwrap_or_else(|| (default_name(), Origin::Default));
    let name = name.trim().to_string();
    if validate_name(&name).is_err() {
        let hint = if origin == Origin::Default {
            " (the default is the hostname: set --name, SKEIN_NAME or name in the config file)"
        } else {
            ""
        };
        return Err(invalid(
            "name",
            &name,
            origin,
            &format!(
                "not a valid node name: use letters, digits, '-', '_' and '.', starting with a letter \
                 or digit, at most 63 characters{hint}"
            ),
        ));
    }

    // api
    let (api_s, origin) = pick(
        over.api.as_ref(),
        "--api",
        "SKEIN_API",
        fc.and_then(|c| c.api.as_ref()),
    )
    .unwrap_or_else(|| (DEFAULT_API.to_string(), Origin::Default));
    let api: SocketAddr = api_s.trim().parse().map_err(|_| {
        invalid(
            "api",
            &api_s,
            origin.clone(),
            "not a socket address: write IP:PORT with an IP address, e.g. 127.0.0.1:7947 or [::1]:7947",
        )
    })?;

    // listen
    let (listen, origin) = pick(
        over.listen.as_ref(),
        "--listen",
        "SKEIN_LISTEN",
        fc.and_then(|c| c.listen.as_ref()),
    )
    .unwrap_or_else(|| (DEFAULT_LISTEN.to_string(), Origin::Default));
    let listen = listen.trim().to_string();
    check_host_port(&listen).map_err(|m| {
        invalid(
            "listen",
            &listen,
            origin.clone(),
            &format!("{m}: write HOST:PORT, e.g. 0.0.0.0:7946"),
        )
    })?;

    // advertise
    let advertise = match pick(
        over.advertise.as_ref(),
        "--advertise",
        "SKEIN_ADVERTISE",
        fc.and_then(|c| c.advertise.as_ref()),
    ) {
        Some((v, origin)) => {
            let v = v.trim().to_string();
            check_advertise(&v).map_err(|m| invalid("advertise", &v, origin, &m))?;
            Some(v)
        }
        None => None,
    };

    // runtime
    let (rt, origin) = pick(
        over.runtime.as_ref(),
        "--runtime",
        "SKEIN_RUNTIME",
        fc.and_then(|c| c.runtime.as_ref()),
    )
    .unwrap_or_else(|| ("auto".to_string(), Origin::Default));
    let runtime: RuntimeChoice = rt
        .parse()
        .map_err(|m: String| invalid("runtime", &rt, origin.clone(), &m))?;

    // labels: file, then env, then flags, each overriding per key.
    let mut labels = BTreeMap::new();
    if let (Some(l), Some(f)) = (fc.and_then(|c| c.labels.as_ref()), file.as_ref()) {
        let origin = f.origin(l.span());
        for (k, v) in l.get_ref() {
            check_label_key(k)
                .map_err(|m| invalid("labels", &format!("{k}={v}"), origin.clone(), &m))?;
            labels.insert(k.clone(), v.clone());
        }
    }
    let env_labels = env("SKEIN_LABELS");
    let env_items = env_labels
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| (s, Origin::Env("SKEIN_LABELS")));
    let flag_items = over
        .labels
        .iter()
        .map(|s| (s.as_str(), Origin::Flag("--label")));
    for (item, origin) in env_items.chain(flag_items) {
        let item = item.trim();
        if item.is_empty() && matches!(origin, Origin::Env(_)) {
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            return Err(invalid(
                "labels",
                item,
                origin,
                "a label needs a value: write KEY=VALUE, e.g. zone=east",
            ));
        };
        check_label_key(k.trim()).map_err(|m| invalid("labels", item, origin.clone(), &m))?;
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }

    // region
    let (region, origin) = pick(
        over.region.as_ref(),
        "--region",
        "SKEIN_REGION",
        fc.and_then(|c| c.region.as_ref()),
    )
    .unwrap_or_else(|| (DEFAULT_REGION.to_string(), Origin::Default));
    let region = region.trim().to_string();
    if validate_name(&region).is_err() {
        return Err(invalid(
            "region",
            &region,
            origin,
            "not a valid region name: use letters, digits, '-', '_' and '.', starting with a letter or digit, \
             at most 63 characters",
        ));
    }

    // join: the whole list from the highest source.
    let join: Vec<(String, Origin)> = if !over.join.is_empty() {
        over.join
            .iter()
            .map(|j| (j.trim().to_string(), Origin::Flag("--join")))
            .collect()
    } else if let Some(s) = env("SKEIN_JOIN") {
        s.split(',')
            .map(str::trim)
            .filter(|j| !j.is_empty())
            .map(|j| (j.to_string(), Origin::Env("SKEIN_JOIN")))
            .collect()
    } else if let (Some(j), Some(f)) = (fc.and_then(|c| c.join.as_ref()), file.as_ref()) {
        let origin = f.origin(j.span());
        j.get_ref()
            .iter()
            .map(|s| (s.trim().to_string(), origin.clone()))
            .collect()
    } else {
        Vec::new()
    };
    for (j, origin) in &join {
        check_join(j).map_err(|m| invalid("join", j, origin.clone(), &m))?;
    }

    // token: a secret, so its errors never show the value.
    let token = match pick(
        over.token.as_ref(),
        "--token",
        "SKEIN_TOKEN",
        fc.and_then(|c| c.token.as_ref()),
    ) {
        Some((t, origin)) => {
            let t = t.trim().to_string();
            if let Err(message) = t.parse::<JoinToken>() {
                return Err(invalid_secret("token", origin, &message));
            }
            Some((t, origin))
        }
        None => None,
    };
    // bootstrap: --bootstrap-expect N with --cluster-key K.
    let num_over = |flag: Option<u32>,
                    flag_name: &'static str,
                    var: &'static str,
                    file_val: Option<&Spanned<u32>>|
     -> Result<Option<(u32, Origin)>, ConfigError> {
        if let Some(v) = flag {
            return Ok(Some((v, Origin::Flag(flag_name))));
        }
        if let Some(v) = env(var) {
            let n = v
                .trim()
                .parse::<u32>()
                .map_err(|_| invalid(var, &v, Origin::Env(var), "not a number: e.g. 3"))?;
            return Ok(Some((n, Origin::Env(var))));
        }
        Ok(match (file_val, file.as_ref()) {
            (Some(v), Some(f)) => Some((*v.get_ref(), f.origin(v.span()))),
            _ => None,
        })
    };
    let expect = num_over(
        over.bootstrap_expect,
        "--bootstrap-expect",
        "SKEIN_BOOTSTRAP_EXPECT",
        fc.and_then(|c| c.bootstrap_expect.as_ref()),
    )?;
    let cluster_key = pick(
        over.cluster_key.as_ref(),
        "--cluster-key",
        "SKEIN_CLUSTER_KEY",
        fc.and_then(|c| c.cluster_key.as_ref()),
    );
    let bootstrap_expect = match (&expect, &cluster_key) {
        (Some((n, origin)), _) if *n == 0 || *n > 9 || n % 2 == 0 => {
            return Err(invalid(
                "bootstrap_expect",
                &n.to_string(),
                origin.clone(),
                "must be an odd number of managers from 1 to 9 (an even number of voters adds no fault tolerance): e.g. 3",
            ));
        }
        (Some((_, origin)), None) => {
            return Err(invalid(
                "bootstrap_expect",
                &expect.as_ref().map_or(0, |e| e.0).to_string(),
                origin.clone(),
                "needs a cluster key: add --cluster-key K (the same secret on every box of the cluster)",
            ));
        }
        (None, Some((_, origin))) => {
            return Err(invalid_secret(
                "cluster_key",
                origin.clone(),
                "is given without bootstrap_expect: add --bootstrap-expect 3 (how many managers form the cluster)",
            ));
        }
        (Some((n, _)), Some(_)) => *n,
        (None, None) => 0,
    };
    if let Some((k, origin)) = &cluster_key {
        if k.trim().len() < 8 {
            return Err(invalid_secret(
                "cluster_key",
                origin.clone(),
                "is too short: use at least 8 characters (e.g. the output of `openssl rand -hex 16`)",
            ));
        }
        if token.is_some() {
            return Err(invalid_secret(
                "cluster_key",
                origin.clone(),
                "cannot be combined with a join token: use either --token (join a cluster) or --cluster-key with --bootstrap-expect (form or join one by itself)",
            ));
        }
    }
    let voters = match num_over(
        over.voters,
        "--voters",
        "SKEIN_VOTERS",
        fc.and_then(|c| c.voters.as_ref()),
    )? {
        Some((n, origin)) if n % 2 == 0 || n < bootstrap_expect || n > 9 => {
            return Err(invalid(
                "voters",
                &n.to_string(),
                origin,
                &format!("must be odd, at least bootstrap_expect ({bootstrap_expect}) and at most 9: e.g. 3 or 5"),
            ));
        }
        Some((n, _)) => n,
        None => bootstrap_expect,
    };
    let mdns = if over.no_mdns {
        false
    } else if let Some(v) = env("SKEIN_MDNS") {
        !matches!(v.trim(), "0" | "false" | "no" | "off")
    } else {
        fc.and_then(|c| c.mdns.as_ref())
            .is_none_or(|v| *v.get_ref())
    };
    let cluster_key = cluster_key.map(|(k, _)| k.trim().to_string());
    match (&token, join.first()) {
        (None, Some(_)) if cluster_key.is_some() => {}
        (Some((_, origin)), None) => {
            return Err(invalid_secret(
                "token",
                origin.clone(),
                "token is given but join is empty: add --join HOST:PORT of a manager",
            ));
        }
        (None, Some((_, origin))) => {
            let all: Vec<&str> = join.iter().map(|(j, _)| j.as_str()).collect();
            return Err(invalid(
                "join",
                &all.join(","),
                origin.clone(),
                "join needs a token: get one with `skein join-token worker` on a manager and pass --token \
                 (or, for a self-forming cluster, add --bootstrap-expect N --cluster-key K: join then names seeds)",
            ));
        }
        _ => {}
    }
    let token = token.map(|(t, _)| t);
    let join = join.into_iter().map(|(j, _)| j).collect();

    // raft and heartbeat: file or default.
    let num = |v: Option<&Spanned<u64>>, default: u64| -> (u64, Origin) {
        match (v, file.as_ref()) {
            (Some(v), Some(f)) => (*v.get_ref(), f.origin(v.span())),
            _ => (default, Origin::Default),
        }
    };
    let rf = fc.and_then(|c| c.raft.as_ref());
    let d = RaftTuning::default();
    let tick = num(rf.and_then(|r| r.tick_ms.as_ref()), d.tick_ms);
    let election = num(rf.and_then(|r| r.election_ticks.as_ref()), d.election_ticks);
    let heartbeat = num(
        rf.and_then(|r| r.heartbeat_ticks.as_ref()),
        d.heartbeat_ticks,
    );
    let snapshot = num(
        rf.and_then(|r| r.snapshot_entries.as_ref()),
        d.snapshot_entries,
    );
    let heartbeat_ms = num(fc.and_then(|c| c.heartbeat_ms.as_ref()), 1000);
    if tick.0 == 0 {
        return Err(invalid(
            "raft.tick_ms",
            "0",
            tick.1,
            "must be more than 0: e.g. 100 (milliseconds)",
        ));
    }
    if heartbeat.0 == 0 {
        return Err(invalid(
            "raft.heartbeat_ticks",
            "0",
            heartbeat.1,
            "must be at least 1: the leader sends a heartbeat every heartbeat_ticks ticks",
        ));
    }
    if election.0 <= heartbeat.0 {
        let (key, value, origin) =
            if heartbeat.1 != Origin::Default && election.1 == Origin::Default {
                ("raft.heartbeat_ticks", heartbeat.0, heartbeat.1)
            } else {
                ("raft.election_ticks", election.0, election.1)
            };
        return Err(invalid(
            key,
            &value.to_string(),
            origin,
            &format!(
                "election_ticks ({}) must be greater than heartbeat_ticks ({}): followers must miss several \
                 heartbeats before they start an election; e.g. election_ticks = 10, heartbeat_ticks = 1",
                election.0, heartbeat.0
            ),
        ));
    }
    if snapshot.0 == 0 {
        return Err(invalid(
            "raft.snapshot_entries",
            "0",
            snapshot.1,
            "must be at least 1: the log is compacted behind a snapshot every this many entries, e.g. 1000",
        ));
    }
    if heartbeat_ms.0 == 0 {
        return Err(invalid(
            "heartbeat_ms",
            "0",
            heartbeat_ms.1,
            "must be more than 0: e.g. 1000",
        ));
    }

    Ok(AgentConfig {
        data_dir: data_dir.0,
        name,
        api,
        listen,
        advertise,
        runtime,
        labels,
        region,
        join,
        token,
        raft: RaftTuning {
            tick_ms: tick.0,
            election_ticks: election.0,
            heartbeat_ticks: heartbeat.0,
            snapshot_entries: snapshot.0,
        },
        heartbeat_ms: heartbeat_ms.0,
        bootstrap_expect,
        cluster_key,
        voters,
        mdns,
        force_new_cluster: over.force_new_cluster,
    })
}

fn invalid(key: &str, value: &str, origin: Origin, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        origin,
        message: message.to_string(),
    }
}

/// Like [`invalid`] for a secret: the value is left out.
fn invalid_secret(key: &str, origin: Origin, message: &str) -> ConfigError {
    ConfigError::InvalidSecret {
        key: key.to_string(),
        origin,
        message: message.to_string(),
    }
}

/// `~` and `~/...` in file and environment values (a shell expands flags).
fn expand_home(
    v: &str,
    env: &dyn Fn(&str) -> Option<String>,
    key: &str,
    origin: &Origin,
) -> Result<PathBuf, ConfigError> {
    let v = v.trim();
    let rest = match v.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => return Ok(PathBuf::from(v)),
    };
    match env("HOME") {
        Some(home) => Ok(PathBuf::from(format!("{home}{rest}"))),
        None => Err(invalid(
            key,
            v,
            origin.clone(),
            "starts with ~ but HOME is not set: write the full path",
        )),
    }
}

/// /var/lib/skein for root, else $HOME/.local/share/skein.
fn default_data_dir(is_root: bool, home: Option<String>) -> Result<PathBuf, String> {
    if is_root {
        return Ok(PathBuf::from("/var/lib/skein"));
    }
    match home {
        Some(h) if !h.trim().is_empty() => Ok(PathBuf::from(h).join(".local/share/skein")),
        _ => Err(
            "HOME is not set, so there is no default data dir: give --data-dir or SKEIN_DATA_DIR"
                .into(),
        ),
    }
}

/// Whether the process runs with effective uid 0 (Linux: /proc/self/status).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The hostname, or "skein".
fn default_name() -> String {
    for path in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(s) = std::fs::read_to_string(path) {
            let t = s.trim();
            if !t.is_empty() {
                return t.to_string();
            }
        }
    }
    "skein".to_string()
}

fn check_label_key(k: &str) -> Result<(), String> {
    if k.is_empty() {
        return Err("a label needs a key: write KEY=VALUE, e.g. zone=east".into());
    }
    if k.chars().any(|c| c.is_whitespace() || c == '=' || c == ',') {
        return Err(format!(
            "label key {k:?} has a space, '=' or ',': write KEY=VALUE, e.g. zone=east"
        ));
    }
    Ok(())
}

/// HOST:PORT where HOST is an IPv4 address, a bracketed IPv6 address or a
/// DNS name.
fn check_host_port(s: &str) -> Result<(), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err("has no port".into());
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("{port:?} is not a port number (0-65535)"));
    }
    if let Some(inner) = host.strip_prefix('[') {
        let ok = inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        return if ok {
            Ok(())
        } else {
            Err(format!("{host:?} is not an IPv6 address in brackets"))
        };
    }
    if host.is_empty() {
        return Err("has no host".into());
    }
    if host.contains(':') {
        return Err("an IPv6 address must be in brackets, e.g. [::1]:7946".into());
    }
    let dns_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if host.parse::<std::net::Ipv4Addr>().is_ok() || dns_ok {
        Ok(())
    } else {
        Err(format!("{host:?} is not an IP address or host name"))
    }
}

/// The address other nodes dial: HOST:PORT with a real host (not 0.0.0.0
/// or [::]) and a real port (not 0).
fn check_advertise(s: &str) -> Result<(), String> {
    const EG: &str = "e.g. 10.0.0.7:7946";
    check_host_port(s).map_err(|m| format!("{m}: write HOST:PORT, {EG}"))?;
    let (host, port) = s.rsplit_once(':').unwrap_or_default();
    if port.parse::<u16>() == Ok(0) {
        return Err(format!(
            "port 0 cannot be dialled: advertise the port other nodes can reach, {EG}"
        ));
    }
    let ip = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if ip
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return Err(format!(
            "{host} is not an address, it means \"any\": advertise an address other nodes can reach, {EG}"
        ));
    }
    Ok(())
}

/// A peer to join: HOST:PORT, or a multiaddr such as /ip4/10.0.0.2/tcp/7946.
fn check_join(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty: write HOST:PORT, e.g. 10.0.0.2:7946".into());
    }
    if let Some(rest) = s.strip_prefix('/') {
        if rest.split('/').all(|p| !p.is_empty()) {
            return Ok(());
        }
        return Err("is not a multiaddr: write e.g. /ip4/10.0.0.2/tcp/7946, or HOST:PORT".into());
    }
    check_host_port(s).map_err(|m| format!("{m}: write HOST:PORT, e.g. 10.0.0.2:7946"))
}

#[cfg(test)]
mod tests;
