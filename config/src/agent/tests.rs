use super::*;
use std::collections::HashMap;

/// An environment made of these pairs only (plus HOME, so the default data
/// dir never depends on the machine running the tests).
fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let mut map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    map.entry("HOME".into())
        .or_insert_with(|| "/home/tester".into());
    move |k: &str| map.get(k).cloned()
}

fn load(over: &AgentOverrides, env: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
    load_agent_config(over, &env_of(env))
}

fn ok(over: &AgentOverrides, env: &[(&str, &str)]) -> AgentConfig {
    match load(over, env) {
        Ok(c) => c,
        Err(e) => panic!("expected a config, got: {e}"),
    }
}

fn err(over: &AgentOverrides, env: &[(&str, &str)]) -> String {
    match load(over, env) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

/// A config file in a temp dir; keep the dir alive while using the path.
fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("skein.toml");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

fn with_file(path: &std::path::Path) -> AgentOverrides {
    AgentOverrides {
        config: Some(path.to_path_buf()),
        ..AgentOverrides::default()
    }
}

/// A well-formed join token whose secret is `secret` (hex, 16+ digits).
fn token(secret: &str) -> String {
    skein_protocol::token::JoinToken {
        cluster_id: "c0ffee".into(),
        cluster_key: [0xab; 32],
        role: skein_protocol::NodeRole::Worker,
        secret: secret.into(),
    }
    .to_string()
}

const FILE_SECRET: &str = "f11ef11ef11ef11e";

const FULL: &str = r#"data_dir = "/srv/skein"
name = "edge-07"
api = "0.0.0.0:9000"
listen = "10.0.0.7:7946"
advertise = "edge-07.example.org:7946"
runtime = "process"
region = "eu-west"
join = ["10.0.0.1:7946", "/ip4/10.0.0.2/tcp/7946"]
token = "SKNTKN-1-c0ffee-abababababababababababababababababababababababababababababababab-wf11ef11ef11ef11e"
heartbeat_ms = 2000

[labels]
zone = "east"
rack = "r1"

[raft]
tick_ms = 200
election_ticks = 20
heartbeat_ticks = 2
snapshot_entries = 500
"#;

#[test]
fn defaults_when_nothing_is_given() {
    let c = ok(&AgentOverrides::default(), &[]);
    let want_dir = if running_as_root() {
        PathBuf::from("/var/lib/skein")
    } else {
        PathBuf::from("/home/tester/.local/share/skein")
    };
    assert_eq!(c.data_dir, want_dir);
    assert_eq!(c.name, default_name());
    assert_eq!(c.api, "127.0.0.1:7947".parse::<SocketAddr>().expect("addr"));
    assert_eq!(c.listen, "0.0.0.0:7946");
    assert_eq!(c.advertise, None);
    assert_eq!(c.runtime, RuntimeChoice::Auto);
    assert!(c.labels.is_empty());
    assert_eq!(c.region, "default");
    assert!(c.join.is_empty());
    assert_eq!(c.token, None);
    assert_eq!(c.raft, RaftTuning::default());
    assert_eq!(
        c.raft,
        RaftTuning {
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_entries: 1000
        }
    );
    assert_eq!(c.heartbeat_ms, 1000);
}

#[test]
fn default_data_dir_depends_on_root_and_home() {
    assert_eq!(
        default_data_dir(true, None),
        Ok(PathBuf::from("/var/lib/skein"))
    );
    assert_eq!(
        default_data_dir(false, Some("/home/a".into())),
        Ok(PathBuf::from("/home/a/.local/share/skein"))
    );
    assert!(default_data_dir(false, None).is_err());
    assert!(default_data_dir(false, Some(" ".into())).is_err());
}

#[test]
fn the_file_gives_every_key() {
    let (_dir, path) = file(FULL);
    let c = ok(&with_file(&path), &[]);
    assert_eq!(c.data_dir, PathBuf::from("/srv/skein"));
    assert_eq!(c.name, "edge-07");
    assert_eq!(c.api, "0.0.0.0:9000".parse::<SocketAddr>().expect("addr"));
    assert_eq!(c.listen, "10.0.0.7:7946");
    assert_eq!(c.advertise.as_deref(), Some("edge-07.example.org:7946"));
    assert_eq!(c.runtime, RuntimeChoice::Process);
    assert_eq!(c.region, "eu-west");
    assert_eq!(c.join, ["10.0.0.1:7946", "/ip4/10.0.0.2/tcp/7946"]);
    assert_eq!(c.token, Some(token(FILE_SECRET)));
    assert_eq!(c.heartbeat_ms, 2000);
    assert_eq!(c.labels.get("zone").map(String::as_str), Some("east"));
    assert_eq!(c.labels.get("rack").map(String::as_str), Some("r1"));
    assert_eq!(
        c.raft,
        RaftTuning {
            tick_ms: 200,
            election_ticks: 20,
            heartbeat_ticks: 2,
            snapshot_entries: 500
        }
    );
}

#[test]
fn env_beats_file_and_flags_beat_env() {
    let (_dir, path) = file(FULL);
    let env_token = token("e4e4e4e4e4e4e4e4");
    let flag_token = token("f1a9f1a9f1a9f1a9");
    // The file's token still goes with the environment's join list.
    let c = ok(&with_file(&path), &[("SKEIN_JOIN", "a.local:7946")]);
    assert_eq!(c.join, ["a.local:7946"]);
    assert_eq!(c.token, Some(token(FILE_SECRET)));
    let env = [
        ("SKEIN_TOKEN", env_token.as_str()),
        ("SKEIN_ADVERTISE", "[fd00::7]:8003"),
        ("SKEIN_DATA_DIR", "/env/dir"),
        ("SKEIN_NAME", "from-env"),
        ("SKEIN_API", "127.0.0.1:8001"),
        ("SKEIN_LISTEN", "0.0.0.0:8002"),
        ("SKEIN_RUNTIME", "docker"),
        ("SKEIN_REGION", "env-region"),
        ("SKEIN_JOIN", "a.local:7946, b.local:7946"),
    ];
    let c = ok(&with_file(&path), &env);
    assert_eq!(c.data_dir, PathBuf::from("/env/dir"));
    assert_eq!(c.name, "from-env");
    assert_eq!(c.api.port(), 8001);
    assert_eq!(c.listen, "0.0.0.0:8002");
    assert_eq!(c.advertise.as_deref(), Some("[fd00::7]:8003"));
    assert_eq!(c.runtime, RuntimeChoice::Docker);
    assert_eq!(c.region, "env-region");
    assert_eq!(c.join, ["a.local:7946", "b.local:7946"]);
    assert_eq!(c.token, Some(env_token.clone()));
    // The file still gives what the environment does not.
    assert_eq!(c.raft.tick_ms, 200);

    let over = AgentOverrides {
        config: Some(path.clone()),
        data_dir: Some("/flag/dir".into()),
        name: Some("from-flag".into()),
        api: Some("127.0.0.1:9001".into()),
        listen: Some("[::1]:9002".into()),
        advertise: Some("10.1.2.3:9003".into()),
        runtime: Some("auto".into()),
        labels: vec![],
        region: Some("flag-region".into()),
        join: vec!["c.local:7946".into()],
        token: Some(format!(" {flag_token}\n")),
        ..AgentOverrides::default()
    };
    let c = ok(&over, &env);
    assert_eq!(c.data_dir, PathBuf::from("/flag/dir"));
    assert_eq!(c.name, "from-flag");
    assert_eq!(c.api.port(), 9001);
    assert_eq!(c.listen, "[::1]:9002");
    assert_eq!(c.advertise.as_deref(), Some("10.1.2.3:9003"));
    assert_eq!(c.runtime, RuntimeChoice::Auto);
    assert_eq!(c.region, "flag-region");
    assert_eq!(c.join, ["c.local:7946"]);
    // Trimmed, like every other value.
    assert_eq!(c.token, Some(flag_token));
}

#[test]
fn labels_merge_per_key_with_the_higher_source_winning() {
    let (_dir, path) = file("[labels]\nzone = \"file\"\nrack = \"r1\"\n");
    let over = AgentOverrides {
        config: Some(path.clone()),
        labels: vec!["gpu=yes".into(), "zone=flag".into()],
        ..AgentOverrides::default()
    };
    let c = ok(&over, &[("SKEIN_LABELS", "zone=env, ssd=true")]);
    let want: BTreeMap<String, String> = [
        ("gpu", "yes"),
        ("rack", "r1"),
        ("ssd", "true"),
        ("zone", "flag"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(c.labels, want);
}

#[test]
fn config_file_from_env_and_flag() {
    let (_d1, env_path) = file("name = \"env-file\"\n");
    let (_d2, flag_path) = file("name = \"flag-file\"\n");
    let env_file = env_path.to_string_lossy().to_string();
    let c = ok(&AgentOverrides::default(), &[("SKEIN_CONFIG", &env_file)]);
    assert_eq!(c.name, "env-file");
    let c = ok(&with_file(&flag_path), &[("SKEIN_CONFIG", &env_file)]);
    assert_eq!(c.name, "flag-file");
}

#[test]
fn a_missing_config_file_names_it_and_where_it_came_from() {
    let e = err(&with_file(std::path::Path::new("/no/such/skein.toml")), &[]);
    assert!(
        e.starts_with("cannot read the config file /no/such/skein.toml (from flag --config)"),
        "{e}"
    );
    let e = err(
        &AgentOverrides::default(),
        &[("SKEIN_CONFIG", "/no/such/x.toml")],
    );
    assert!(e.contains("(from env SKEIN_CONFIG)"), "{e}");
}

#[test]
fn empty_environment_variables_count_as_unset() {
    let c = ok(
        &AgentOverrides::default(),
        &[
            ("SKEIN_API", ""),
            ("SKEIN_NAME", "  "),
            ("SKEIN_LABELS", ""),
        ],
    );
    assert_eq!(c.api.port(), 7947);
    assert!(c.labels.is_empty());
}

#[test]
fn home_is_expanded_in_file_and_env_values() {
    let c = ok(
        &AgentOverrides::default(),
        &[("SKEIN_DATA_DIR", "~/skein-data")],
    );
    assert_eq!(c.data_dir, PathBuf::from("/home/tester/skein-data"));
    let (_dir, path) = file("data_dir = \"~\"\n");
    let c = ok(&with_file(&path), &[]);
    assert_eq!(c.data_dir, PathBuf::from("/home/tester"));
}

// --- bad values name the key, where it came from and the fix -----------------

#[test]
fn bad_api_names_its_source() {
    let over = AgentOverrides {
        api: Some("localhost:7947".into()),
        ..AgentOverrides::default()
    };
    let e = err(&over, &[]);
    assert!(
        e.starts_with("flag --api: api = \"localhost:7947\": not a socket address"),
        "{e}"
    );
    assert!(e.contains("127.0.0.1:7947"), "{e}");
    let e = err(&AgentOverrides::default(), &[("SKEIN_API", "nonsense")]);
    assert!(
        e.starts_with("env SKEIN_API: api = \"nonsense\": not a socket address"),
        "{e}"
    );
    let (_dir, path) = file("name = \"n1\"\napi = \"1.2.3.4\"\n");
    let e = err(&with_file(&path), &[]);
    assert_eq!(
        e,
        format!(
            "{}:2:7: api = \"1.2.3.4\": not a socket address: write IP:PORT with an IP address, e.g. 127.0.0.1:7947 or [::1]:7947",
            path.display()
        )
    );
    match load(&with_file(&path), &[]) {
        Err(ConfigError::Invalid { key, origin, .. }) => {
            assert_eq!(key, "api");
            assert!(
                matches!(
                    origin,
                    Origin::File {
                        line: 2,
                        column: 7,
                        ..
                    }
                ),
                "{origin:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn listen_must_be_host_port() {
    for bad in [
        "7946",
        "host",
        ":7946",
        "10.0.0.1:port",
        "10.0.0.1:70000",
        "::1:7946",
        "[zz]:1",
        "bad_host:1",
    ] {
        let over = AgentOverrides {
            listen: Some(bad.into()),
            ..AgentOverrides::default()
        };
        let e = err(&over, &[]);
        assert!(
            e.starts_with(&format!("flag --listen: listen = {bad:?}:")),
            "{e}"
        );
        assert!(e.contains("HOST:PORT"), "{e}");
    }
    for good in [
        "0.0.0.0:7946",
        "node-1.example.org:7946",
        "[::]:7946",
        "localhost:0",
    ] {
        assert_eq!(check_host_port(good), Ok(()), "{good}");
    }
    // Port 0 (any free port) is fine for listen, from every source.
    let over = AgentOverrides {
        listen: Some("127.0.0.1:0".into()),
        ..AgentOverrides::default()
    };
    assert_eq!(ok(&over, &[]).listen, "127.0.0.1:0");
    let c = ok(&AgentOverrides::default(), &[("SKEIN_LISTEN", "[::1]:0")]);
    assert_eq!(c.listen, "[::1]:0");
}

#[test]
fn advertise_must_be_dialable_host_port() {
    for bad in [
        "7946",
        "host",
        ":7946",
        "10.0.0.1:70000",
        "::1:7946",
        "bad_host:1",
    ] {
        let over = AgentOverrides {
            advertise: Some(bad.into()),
            ..AgentOverrides::default()
        };
        let e = err(&over, &[]);
        assert!(
            e.starts_with(&format!("flag --advertise: advertise = {bad:?}:")),
            "{e}"
        );
        assert!(e.contains("HOST:PORT"), "{e}");
    }
    for unspecified in ["0.0.0.0:7946", "[::]:7946", "[0:0:0:0:0:0:0:0]:7946"] {
        let e = err(
            &AgentOverrides::default(),
            &[("SKEIN_ADVERTISE", unspecified)],
        );
        assert!(
            e.starts_with(&format!(
                "env SKEIN_ADVERTISE: advertise = {unspecified:?}:"
            )),
            "{e}"
        );
        assert!(
            e.contains("advertise an address other nodes can reach"),
            "{e}"
        );
    }
    let (_dir, path) = file("advertise = \"10.0.0.7:0\"\n");
    let e = err(&with_file(&path), &[]);
    assert!(
        e.starts_with(&format!(
            "{}:1:13: advertise = \"10.0.0.7:0\": port 0 cannot be dialled",
            path.display()
        )),
        "{e}"
    );
    for good in ["10.0.0.7:7946", "node-1.example.org:1", "[fd00::1]:65535"] {
        assert_eq!(check_advertise(good), Ok(()), "{good}");
    }
    // Empty means unset, as for every variable.
    let c = ok(&AgentOverrides::default(), &[("SKEIN_ADVERTISE", " ")]);
    assert_eq!(c.advertise, None);
}

#[test]
fn token_and_join_come_together() {
    let t = token("0123456789abcdef");
    let over = AgentOverrides {
        token: Some(t.clone()),
        ..AgentOverrides::default()
    };
    let e = err(&over, &[]);
    assert_eq!(
        e,
        "flag --token: token: token is given but join is empty: add --join HOST:PORT of a manager"
    );
    assert!(!e.contains(&t), "{e}");
    let e = err(&AgentOverrides::default(), &[("SKEIN_TOKEN", &t)]);
    assert!(
        e.starts_with("env SKEIN_TOKEN: token: token is given"),
        "{e}"
    );
    assert!(!e.contains(&t), "{e}");

    let e = err(
        &AgentOverrides::default(),
        &[("SKEIN_JOIN", "10.0.0.1:7946, 10.0.0.2:7946")],
    );
    assert_eq!(
        e,
        "env SKEIN_JOIN: join = \"10.0.0.1:7946,10.0.0.2:7946\": join needs a token: get one with \
         `skein join-token worker` on a manager and pass --token \
         (or, for a self-forming cluster, add --bootstrap-expect N --cluster-key K: join then names seeds)"
    );
    let (_dir, path) = file("join = [\"10.0.0.1:7946\"]\n");
    let e = err(&with_file(&path), &[]);
    assert!(
        e.starts_with(&format!(
            "{}:1:8: join = \"10.0.0.1:7946\": join needs a token",
            path.display()
        )),
        "{e}"
    );
    match load(&with_file(&path), &[]) {
        Err(e) => assert_eq!(e.key(), Some("join")),
        Ok(c) => panic!("{c:?}"),
    }

    let over = AgentOverrides {
        join: vec!["10.0.0.1:7946".into()],
        token: Some(t.clone()),
        ..AgentOverrides::default()
    };
    let c = ok(&over, &[]);
    assert_eq!(c.token, Some(t));
}

#[test]
fn a_bad_token_names_its_source_but_never_its_value() {
    let good = token("5ec2e75ec2e75ec2e7");
    // Each is wrong in a different part; none may show up in the error.
    let bads = [
        "hunter2-5ec2e7-not-a-token".to_string(),
        good.replace("-w5ec", "-x5ec"),
        good.replace("abababab", "zzzzzzzz"),
        good[..good.len() - 6].to_string(),
    ];
    for bad in &bads {
        let over = AgentOverrides {
            join: vec!["10.0.0.1:7946".into()],
            token: Some(bad.clone()),
            ..AgentOverrides::default()
        };
        let e = err(&over, &[]);
        assert!(
            e.starts_with("flag --token: token: invalid join token: "),
            "{e}"
        );
        assert!(e.contains("skein join-token worker"), "{e}");
        assert!(!e.contains(bad.as_str()), "the token leaked: {e}");
        assert!(!e.contains("5ec2e7") && !e.contains("hunter2"), "{e}");
        match load(&over, &[]) {
            Err(e) => {
                assert_eq!(e.key(), Some("token"));
                assert!(!format!("{e:?}").contains("5ec2e7"), "{e:?}");
            }
            Ok(c) => panic!("{c:?}"),
        }

        let e = err(
            &AgentOverrides::default(),
            &[("SKEIN_JOIN", "10.0.0.1:7946"), ("SKEIN_TOKEN", bad)],
        );
        assert!(
            e.starts_with("env SKEIN_TOKEN: token: invalid join token: "),
            "{e}"
        );
        assert!(!e.contains("5ec2e7") && !e.contains("hunter2"), "{e}");
    }
    // The shape is checked before the token is paired with join.
    let e = err(&AgentOverrides::default(), &[("SKEIN_TOKEN", &bads[0])]);
    assert!(
        e.starts_with("env SKEIN_TOKEN: token: invalid join token: "),
        "{e}"
    );

    let (_dir, path) = file(&format!(
        "join = [\"10.0.0.1:7946\"]\ntoken = {:?}\n",
        bads[1]
    ));
    let e = err(&with_file(&path), &[]);
    assert!(
        e.starts_with(&format!(
            "{}:2:9: token: invalid join token: the role is neither m nor w",
            path.display()
        )),
        "{e}"
    );
    assert!(!e.contains("5ec2e7"), "{e}");
}

#[test]
fn debug_and_serialize_never_show_the_token() {
    let t = token("5ec2e75ec2e75ec2e7");
    let over = AgentOverrides {
        join: vec!["10.0.0.1:7946".into()],
        token: Some(t.clone()),
        ..AgentOverrides::default()
    };
    let c = ok(&over, &[]);
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("5ec2e7"), "{dbg}");
    assert!(dbg.contains("token: Some(\"<redacted>\")"), "{dbg}");
    let ser = toml::to_string(&c).expect("serialize");
    assert!(!ser.contains("5ec2e7") && !ser.contains("token"), "{ser}");
}

#[test]
fn join_entries_are_checked() {
    let e = err(
        &AgentOverrides::default(),
        &[("SKEIN_JOIN", "10.0.0.1:7946,10.0.0.2")],
    );
    assert!(
        e.starts_with("env SKEIN_JOIN: join = \"10.0.0.2\": has no port"),
        "{e}"
    );
    assert_eq!(check_join("/ip4/1.2.3.4/tcp/7946"), Ok(()));
    assert!(check_join("/ip4//tcp").is_err());
}

#[test]
fn unknown_runtime_names_the_allowed_ones() {
    let e = err(&AgentOverrides::default(), &[("SKEIN_RUNTIME", "dcoker")]);
    assert_eq!(
        e,
        "env SKEIN_RUNTIME: runtime = \"dcoker\": unknown value \"dcoker\" (did you mean \"docker\"?): use auto, docker or process"
    );
    let (_dir, path) = file("runtime = \"podman\"\n");
    let e = err(&with_file(&path), &[]);
    assert!(e.contains(":1:11: runtime = \"podman\""), "{e}");
}

#[test]
fn labels_need_key_and_value() {
    let over = AgentOverrides {
        labels: vec!["zone".into()],
        ..AgentOverrides::default()
    };
    let e = err(&over, &[]);
    assert!(
        e.starts_with("flag --label: labels = \"zone\": a label needs a value: write KEY=VALUE"),
        "{e}"
    );
    let e = err(&AgentOverrides::default(), &[("SKEIN_LABELS", "a=1,=2")]);
    assert!(
        e.starts_with("env SKEIN_LABELS: labels = \"=2\": a label needs a key"),
        "{e}"
    );
    let (_dir, path) = file("[labels]\n\"bad key\" = \"x\"\n");
    let e = err(&with_file(&path), &[]);
    assert!(e.contains("labels = \"bad key=x\""), "{e}");
}

#[test]
fn node_and_region_names_are_validated() {
    let over = AgentOverrides {
        name: Some("-bad".into()),
        ..AgentOverrides::default()
    };
    let e = err(&over, &[]);
    assert!(
        e.starts_with("flag --name: name = \"-bad\": not a valid node name"),
        "{e}"
    );
    let e = err(
        &AgentOverrides::default(),
        &[("SKEIN_NAME", &"x".repeat(64))],
    );
    assert!(e.contains("at most 63"), "{e}");
    let e = err(&AgentOverrides::default(), &[("SKEIN_REGION", "eu west")]);
    assert!(
        e.starts_with("env SKEIN_REGION: region = \"eu west\": not a valid region name"),
        "{e}"
    );
}

#[test]
fn raft_timing_must_be_workable() {
    let (_dir, path) = file("[raft]\nelection_ticks = 1\nheartbeat_ticks = 1\n");
    let e = err(&with_file(&path), &[]);
    assert!(e.contains(":2:18: raft.election_ticks = \"1\": election_ticks (1) must be greater than heartbeat_ticks (1)"), "{e}");
    // The default election_ticks (10) is blamed on the key the file did set.
    let (_dir, path) = file("[raft]\nheartbeat_ticks = 12\n");
    let e = err(&with_file(&path), &[]);
    assert!(e.contains(":2:19: raft.heartbeat_ticks = \"12\""), "{e}");
    let (_dir, path) = file("[raft]\ntick_ms = 0\n");
    let e = err(&with_file(&path), &[]);
    assert!(
        e.contains(":2:11: raft.tick_ms = \"0\": must be more than 0"),
        "{e}"
    );
    let (_dir, path) = file("[raft]\nheartbeat_ticks = 0\n");
    assert!(err(&with_file(&path), &[]).contains("raft.heartbeat_ticks = \"0\""));
    let (_dir, path) = file("[raft]\nsnapshot_entries = 0\n");
    assert!(err(&with_file(&path), &[]).contains("raft.snapshot_entries = \"0\""));
    let (_dir, path) = file("heartbeat_ms = 0\n");
    assert!(err(&with_file(&path), &[]).contains("heartbeat_ms = \"0\""));
}

#[test]
fn unknown_toml_keys_fail_with_their_line() {
    let (_dir, path) = file("name = \"n\"\nlistn = \"127.0.0.1:1\"\n");
    let e = err(&with_file(&path), &[]);
    assert!(
        e.starts_with(&format!(
            "{}:2:1: unknown key \"listn\" (did you mean \"listen\"?)",
            path.display()
        )),
        "{e}"
    );
    let (_dir, path) = file("name = \"n\"\n\n[raft]\ntick_ms = 100\nticks = 5\n");
    let e = err(&with_file(&path), &[]);
    assert!(
        e.starts_with(&format!(
            "{}:5:1: raft: unknown key \"ticks\"",
            path.display()
        )),
        "{e}"
    );
    match load(&with_file(&path), &[]) {
        Err(ConfigError::File { line, key, .. }) => {
            assert_eq!(line, 5);
            assert_eq!(key.as_deref(), Some("raft"));
        }
        other => panic!("{other:?}"),
    }
    let (_dir, path) = file("colour = \"blue\"\n");
    let e = err(&with_file(&path), &[]);
    assert!(
        e.contains("unknown key \"colour\": the keys allowed here are data_dir, name"),
        "{e}"
    );
}

#[test]
fn wrong_toml_types_and_syntax_name_the_key_and_line() {
    let (_dir, path) = file("name = \"n\"\n[raft]\ntick_ms = \"fast\"\n");
    let e = err(&with_file(&path), &[]);
    assert!(
        e.starts_with(&format!(
            "{}:3:11: raft.tick_ms: invalid type",
            path.display()
        )),
        "{e}"
    );
    let (_dir, path) = file("[raft]\nelection_ticks = -1\n");
    let e = err(&with_file(&path), &[]);
    assert!(
        e.contains(":2:18: raft.election_ticks: invalid value"),
        "{e}"
    );
    let (_dir, path) = file("name = \n");
    let e = err(&with_file(&path), &[]);
    assert!(e.starts_with(&format!("{}:1:", path.display())), "{e}");
}

#[test]
fn runtime_choice_round_trips() {
    for r in [
        RuntimeChoice::Auto,
        RuntimeChoice::Docker,
        RuntimeChoice::Process,
    ] {
        assert_eq!(r.to_string().parse::<RuntimeChoice>(), Ok(r));
    }
}

#[test]
fn bootstrap_needs_an_odd_expectation_and_a_key() {
    let over = AgentOverrides {
        bootstrap_expect: Some(3),
        cluster_key: Some("edge-secret-1".into()),
        join: vec!["10.0.0.2:7946".into()],
        ..AgentOverrides::default()
    };
    let c = ok(&over, &[]);
    assert_eq!((c.bootstrap_expect, c.voters, c.mdns), (3, 3, true));
    assert_eq!(
        c.join,
        vec!["10.0.0.2:7946".to_string()],
        "join names seeds, no token needed"
    );
    assert!(
        !format!("{c:?}").contains("edge-secret-1"),
        "the key is never printed"
    );

    let err = load_agent_config(
        &AgentOverrides {
            bootstrap_expect: Some(4),
            cluster_key: Some("edge-secret-1".into()),
            ..AgentOverrides::default()
        },
        &|_| None,
    )
    .expect_err("even");
    assert_eq!(err.key(), Some("bootstrap_expect"));
    assert!(err.to_string().contains("odd"), "{err}");

    let err = load_agent_config(
        &AgentOverrides {
            bootstrap_expect: Some(3),
            ..AgentOverrides::default()
        },
        &|_| None,
    )
    .expect_err("no key");
    assert!(err.to_string().contains("--cluster-key"), "{err}");

    let err = load_agent_config(
        &AgentOverrides {
            cluster_key: Some("edge-secret-1".into()),
            ..AgentOverrides::default()
        },
        &|_| None,
    )
    .expect_err("no expectation");
    assert_eq!(err.key(), Some("cluster_key"));
    assert!(!err.to_string().contains("edge-secret-1"), "{err}");

    let over = AgentOverrides {
        bootstrap_expect: Some(3),
        cluster_key: Some("edge-secret-1".into()),
        voters: Some(5),
        no_mdns: true,
        ..AgentOverrides::default()
    };
    let c = ok(&over, &[]);
    assert_eq!((c.voters, c.mdns), (5, false));
}

#[test]
fn bootstrap_settings_come_from_the_file_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "bootstrap_expect = 3\ncluster_key = \"edge-secret-1\"\nmdns = false\n",
    )
    .expect("write");
    let c = ok(&with_file(&path), &[]);
    assert_eq!((c.bootstrap_expect, c.mdns), (3, false));
    assert_eq!(c.cluster_key.as_deref(), Some("edge-secret-1"));
}
