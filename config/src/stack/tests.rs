use super::*;
use skein_protocol::{OnDisconnect, ResourceAmounts, Resources};

fn parse(text: &str) -> Stack {
    match parse_stack(text, "stack.yml", "s") {
        Ok(s) => s,
        Err(e) => panic!("expected the stack to parse, got: {e}"),
    }
}

fn fail(text: &str) -> StackError {
    match parse_stack(text, "stack.yml", "s") {
        Ok(s) => panic!("expected an error, got {} services", s.services.len()),
        Err(e) => e,
    }
}

fn service<'a>(stack: &'a Stack, name: &str) -> &'a ServiceSpec {
    stack
        .services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

fn line_of(e: &StackError) -> Option<usize> {
    e.position().and_then(|p| p.line)
}

fn warned(stack: &Stack, needle: &str) -> bool {
    stack.warnings.iter().any(|w| w.contains(needle))
}

// --- errors name the file, the line and the key ---------------------------

#[test]
fn misspelled_key_fails_naming_it_its_line_and_the_fix() {
    let text = "\
version: \"3.8\"
services:
  web:
    image: nginx
    deploy:
      replicas: 2
      update_config:
        delay: 10s
        paralelism: 2
";
    let e = parse_stack(text, "edge-stack.yml", "edge").expect_err("typo");
    assert_eq!(
        e.to_string(),
        "edge-stack.yml:9:9: services.web.deploy.update_config: unknown key \"paralelism\" (did you mean \"parallelism\"?)"
    );
    assert_eq!(e.path(), Some("services.web.deploy.update_config"));
}

#[test]
fn misspelled_service_key_suggests_the_right_one() {
    let e = fail("services:\n  web:\n    imgae: nginx\n");
    assert_eq!(
        e.to_string(),
        "stack.yml:3:5: services.web: unknown key \"imgae\" (did you mean \"image\"?)"
    );
    let e = fail("services:\n  web:\n    image: nginx\n    colour: blue\n");
    assert_eq!(line_of(&e), Some(4));
    assert!(e.to_string().contains("unknown key \"colour\""), "{e}");
    assert!(e.to_string().contains("x-"), "{e}");
}

#[test]
fn misspelled_top_level_key_is_located() {
    let e = fail("version: '3'\nservics:\n  web:\n    image: nginx\n");
    assert_eq!(
        e.to_string(),
        "stack.yml:2:1: unknown key \"servics\" (did you mean \"services\"?)"
    );
}

#[test]
fn misspelled_key_in_a_flow_mapping_and_a_long_port() {
    let e = fail("services:\n  web:\n    image: nginx\n    deploy: {replicas: 2, replicsa: 3}\n");
    assert_eq!(line_of(&e), Some(4));
    assert!(e.to_string().contains("did you mean \"replicas\""), "{e}");
    let e = fail(
        "services:\n  web:\n    image: nginx\n    ports:\n      - target: 80\n        mdoe: host\n",
    );
    assert_eq!(
        e.to_string(),
        "stack.yml:6:9: services.web.ports[0]: unknown key \"mdoe\" (did you mean \"mode\"?)"
    );
}

#[test]
fn extension_keys_are_ignored_silently() {
    let s = parse(
        "x-common: {a: 1}\nx-anything: [1, 2]\nservices:\n  web:\n    image: nginx\n    x-team: infra\n",
    );
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    assert_eq!(s.services.len(), 1);
}

#[test]
fn wrong_types_name_the_key_and_line() {
    let e = fail("services:\n  web:\n    image: [nginx]\n");
    assert_eq!(e.path(), Some("services.web.image"));
    assert_eq!(line_of(&e), Some(3));
    assert!(e.to_string().contains("invalid type"), "{e}");
    let e = fail("services:\n  web:\n    image: nginx\n    deploy:\n      replicas: two\n");
    assert_eq!(e.path(), Some("services.web.deploy.replicas"));
    assert_eq!(line_of(&e), Some(5));
}

#[test]
fn yaml_syntax_errors_have_a_line() {
    let e = fail("services:\n  web:\n    image: nginx\n   bad: [\n");
    assert!(e.to_string().starts_with("stack.yml:"), "{e}");
    assert!(e.to_string().contains("invalid YAML"), "{e}");
    assert!(line_of(&e).is_some());
}

#[test]
fn empty_files_and_empty_services_are_errors() {
    assert!(fail("").to_string().contains("no services"));
    assert!(fail("# nothing\n").to_string().contains("no services"));
    assert!(fail("version: '3'\nservices: {}\n")
        .to_string()
        .contains("no services"));
    let e = fail("services:\n  web:\n");
    assert_eq!(e.path(), Some("services.web"));
    assert!(e.to_string().contains("empty"), "{e}");
}

#[test]
fn a_service_without_image_is_an_error() {
    let e = fail("services:\n  web:\n    command: sleep 10\n");
    assert_eq!(
        e.to_string(),
        "stack.yml:2:3: services.web: missing key \"image\": give the image (on the process runtime, the program to run)"
    );
}

#[test]
fn invalid_stack_name_is_refused() {
    let e =
        parse_stack("services:\n  web:\n    image: x\n", "f.yml", "bad name").expect_err("name");
    assert!(matches!(e, StackError::StackName { .. }));
    assert!(e.to_string().contains("bad name"), "{e}");
}

#[test]
fn invalid_service_name_is_located() {
    let e = fail("services:\n  web:\n    image: x\n  \"we b\":\n    image: y\n");
    assert_eq!(e.path(), Some("services.we b"));
    assert_eq!(line_of(&e), Some(4));
}

#[test]
fn duplicate_service_is_an_error_at_the_second_one() {
    let e = fail("services:\n  web:\n    image: x\n  web:\n    image: y\n");
    assert_eq!(
        e.to_string(),
        "stack.yml:4:3: invalid YAML: services: duplicate entry with key \"web\""
    );
}

#[test]
fn a_misspelled_x_skein_is_warned_about() {
    let s = parse("x-skien:\n  runtime: process\nservices:\n  web:\n    image: a\n    x-skin: {runtime: docker}\n");
    assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
    assert!(s.warnings[0].starts_with(
        "stack.yml:1:1: x-skien: \"x-skien\" is ignored as an extension key: did you mean \"x-skein\"?"
    ));
    assert!(s.warnings[1].starts_with("stack.yml:6:5: services.web.x-skin:"));
    assert_eq!(s.services[0].runtime, None);
}

#[test]
fn load_stack_names_a_missing_file() {
    let e = load_stack(Path::new("/no/such/stack.yml"), "s").expect_err("missing");
    assert!(matches!(e, StackError::Read { .. }));
    assert!(
        e.to_string().starts_with("/no/such/stack.yml: cannot read"),
        "{e}"
    );
}

#[test]
fn load_stack_reads_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.yml");
    std::fs::write(
        &path,
        "services:\n  web:\n    image: nginx\n    deploy: {replicas: 0}\n",
    )
    .expect("write");
    let s = load_stack(&path, "s").expect("load");
    assert_eq!(s.services[0].replicas, Some(0));
    std::fs::write(
        &path,
        "services:\n  web:\n    image: nginx\n    deploy: {replicas: -1}\n",
    )
    .expect("write");
    let e = load_stack(&path, "s").expect_err("negative");
    assert!(
        e.to_string().starts_with(&format!("{}:4:", path.display())),
        "{e}"
    );
}

// --- defaults and names ------------------------------------------------------

#[test]
fn defaults_equal_swarms_when_deploy_is_absent() {
    let s = parse("services:\n  web:\n    image: nginx\n");
    let mut want = ServiceSpec::new("s_web", "nginx");
    want.labels.insert(STACK_LABEL.to_string(), "s".to_string());
    assert_eq!(s.services, vec![want]);
    let spec = &s.services[0];
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.update_config.parallelism, 1);
    assert_eq!(spec.update_config.monitor, Dur::from_secs(5));
    assert_eq!(spec.update_config.failure_action, FailureAction::Pause);
    assert_eq!(spec.update_config.order, UpdateOrder::StopFirst);
    assert_eq!(spec.rollback_config.monitor, Dur::ZERO);
    assert_eq!(spec.restart_policy.condition, RestartCondition::Any);
    assert_eq!(spec.restart_policy.delay, Dur::from_secs(5));
    assert_eq!(spec.stop_grace_period, Dur::from_secs(10));
    assert!(s.warnings.is_empty());
}

#[test]
fn services_are_prefixed_labelled_and_sorted() {
    let s = parse_stack(
        "services:\n  zeta:\n    image: z\n  alpha:\n    image: a\n",
        "f.yml",
        "edge",
    )
    .expect("parse");
    let names: Vec<&str> = s.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["edge_alpha", "edge_zeta"]);
    for spec in &s.services {
        assert_eq!(
            spec.labels.get(STACK_LABEL).map(String::as_str),
            Some("edge")
        );
    }
}

#[test]
fn partial_update_and_rollback_configs_keep_their_own_defaults() {
    let s = parse(
        "services:\n  web:\n    image: nginx\n    deploy:\n      update_config: {delay: 10s}\n      rollback_config: {parallelism: 0}\n",
    );
    let spec = &s.services[0];
    assert_eq!(spec.update_config.delay, Dur::from_secs(10));
    assert_eq!(spec.update_config.monitor, Dur::from_secs(5));
    assert_eq!(spec.rollback_config.parallelism, 0);
    assert_eq!(spec.rollback_config.monitor, Dur::ZERO);
}

// --- deploy ------------------------------------------------------------------

#[test]
fn full_deploy_section_maps_to_the_spec() {
    let s = parse(
        r#"
services:
  api:
    image: registry.local/api:2
    deploy:
      mode: replicated
      replicas: 3
      placement:
        constraints: ["node.role == worker", "node.labels.zone != west"]
        preferences:
          - spread: node.labels.zone
        max_replicas_per_node: 2
      update_config:
        parallelism: 2
        delay: 10s
        failure_action: rollback
        monitor: 1m30s
        max_failure_ratio: 0.25
        order: start-first
      rollback_config:
        parallelism: 0
        failure_action: continue
      restart_policy:
        condition: on-failure
        delay: 2s
        max_attempts: 4
        window: 2m
      resources:
        limits: {cpus: "0.5", memory: 512M, pids: 100}
        reservations: {cpus: 0.25, memory: 1G}
      labels:
        com.example.team: core
      endpoint_mode: vip
"#,
    );
    let spec = &s.services[0];
    assert_eq!(spec.mode, ServiceMode::Replicated);
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(
        spec.placement.constraints,
        ["node.role == worker", "node.labels.zone != west"]
    );
    assert_eq!(spec.placement.preferences[0].spread, "node.labels.zone");
    assert_eq!(spec.placement.max_replicas_per_node, 2);
    assert_eq!(
        spec.update_config,
        UpdateConfig {
            parallelism: 2,
            delay: Dur::from_secs(10),
            failure_action: FailureAction::Rollback,
            monitor: Dur::from_secs(90),
            max_failure_ratio: 0.25,
            order: UpdateOrder::StartFirst,
        }
    );
    assert_eq!(spec.rollback_config.parallelism, 0);
    assert_eq!(spec.rollback_config.failure_action, FailureAction::Continue);
    assert_eq!(spec.rollback_config.monitor, Dur::ZERO);
    assert_eq!(spec.restart_policy.condition, RestartCondition::OnFailure);
    assert_eq!(spec.restart_policy.delay, Dur::from_secs(2));
    assert_eq!(spec.restart_policy.max_attempts, 4);
    assert_eq!(spec.restart_policy.window, Dur::from_secs(120));
    assert_eq!(
        spec.resources,
        Resources {
            limits: ResourceAmounts {
                cpus: Some(0.5),
                memory: Some(512 << 20),
                pids: Some(100)
            },
            reservations: ResourceAmounts {
                cpus: Some(0.25),
                memory: Some(1 << 30),
                pids: None
            },
        }
    );
    assert_eq!(
        spec.labels.get("com.example.team").map(String::as_str),
        Some("core")
    );
    assert_eq!(spec.labels.get(STACK_LABEL).map(String::as_str), Some("s"));
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

#[test]
fn global_mode_has_no_replicas() {
    let s = parse("services:\n  agent:\n    image: a\n    deploy:\n      mode: global\n");
    assert_eq!(s.services[0].mode, ServiceMode::Global);
    assert_eq!(s.services[0].replicas, None);
}

#[test]
fn global_with_replicas_is_an_error() {
    let e = fail(
        "services:\n  agent:\n    image: a\n    deploy:\n      mode: global\n      replicas: 3\n",
    );
    assert_eq!(e.path(), Some("services.agent.deploy.replicas"));
    assert_eq!(line_of(&e), Some(6));
    assert!(e.to_string().contains("global"), "{e}");
}

#[test]
fn negative_replicas_is_an_error() {
    let e = fail("services:\n  web:\n    image: a\n    deploy:\n      replicas: -1\n");
    assert_eq!(
        e.to_string(),
        "stack.yml:5:7: services.web.deploy.replicas: -1 is negative: give 0 or more replicas"
    );
}

#[test]
fn too_many_replicas_fails_validation_with_the_compose_key() {
    let e = fail("services:\n  web:\n    image: a\n    deploy:\n      replicas: 20000\n");
    assert_eq!(e.path(), Some("services.web.deploy.replicas"));
    assert_eq!(line_of(&e), Some(5));
}

#[test]
fn unknown_enum_values_name_the_allowed_ones() {
    let e = fail("services:\n  web:\n    image: a\n    deploy:\n      mode: everywhere\n");
    assert_eq!(
        e.to_string(),
        "stack.yml:5:13: services.web.deploy.mode: unknown value \"everywhere\": use replicated or global"
    );
    let e = fail(
        "services:\n  web:\n    image: a\n    deploy:\n      update_config:\n        order: start_first\n",
    );
    assert!(
        e.to_string().contains("did you mean \"start-first\""),
        "{e}"
    );
    assert!(e.to_string().contains("stop-first or start-first"), "{e}");
    let e = fail(
        "services:\n  web:\n    image: a\n    deploy:\n      update_config:\n        failure_action: explode\n",
    );
    assert!(
        e.to_string().contains("use pause, continue or rollback"),
        "{e}"
    );
    let e = fail(
        "services:\n  web:\n    image: a\n    deploy:\n      restart_policy:\n        condition: always\n",
    );
    assert!(e.to_string().contains("none, on-failure or any"), "{e}");
    assert_eq!(
        e.path(),
        Some("services.web.deploy.restart_policy.condition")
    );
}

#[test]
fn max_failure_ratio_must_be_a_fraction() {
    let e = fail(
        "services:\n  web:\n    image: a\n    deploy:\n      rollback_config:\n        max_failure_ratio: 1.5\n",
    );
    assert_eq!(
        e.path(),
        Some("services.web.deploy.rollback_config.max_failure_ratio")
    );
    assert_eq!(line_of(&e), Some(6));
    assert!(e.to_string().contains("between 0 and 1"), "{e}");
}

#[test]
fn bad_durations_are_errors() {
    let e = fail(
        "services:\n  web:\n    image: a\n    deploy:\n      update_config:\n        delay: 10\n",
    );
    assert_eq!(e.path(), Some("services.web.deploy.update_config.delay"));
    assert_eq!(line_of(&e), Some(6));
    assert!(e.to_string().contains("\"10s\""), "{e}");
    let e = fail("services:\n  web:\n    image: a\n    stop_grace_period: 5 minutes\n");
    assert_eq!(e.path(), Some("services.web.stop_grace_period"));
    assert!(e.to_string().contains("invalid duration"), "{e}");
    let s = parse("services:\n  web:\n    image: a\n    stop_grace_period: 1m30s\n    stop_signal: SIGINT\n    working_dir: /srv\n");
    assert_eq!(s.services[0].stop_grace_period, Dur::from_secs(90));
    assert_eq!(s.services[0].stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(s.services[0].working_dir.as_deref(), Some("/srv"));
}

#[test]
fn memory_sizes_and_cpus() {
    assert_eq!(parse_memory("512M"), Ok(512 << 20));
    assert_eq!(parse_memory("512m"), Ok(512 << 20));
    assert_eq!(parse_memory("512mb"), Ok(512 << 20));
    assert_eq!(parse_memory("1G"), Ok(1 << 30));
    assert_eq!(parse_memory("1GiB"), Ok(1 << 30));
    assert_eq!(parse_memory("1.5g"), Ok(3 << 29));
    assert_eq!(parse_memory("100k"), Ok(102_400));
    assert_eq!(parse_memory("2048"), Ok(2048));
    assert_eq!(parse_memory("2048b"), Ok(2048));
    for bad in ["", "lots", "12x", "1bb", "M", "-1M", "1ib"] {
        assert!(parse_memory(bad).is_err(), "{bad:?}");
    }
    let e = fail("services:\n  web:\n    image: a\n    deploy:\n      resources:\n        limits:\n          memory: lots\n");
    assert_eq!(
        e.path(),
        Some("services.web.deploy.resources.limits.memory")
    );
    assert_eq!(line_of(&e), Some(7));
    let e = fail("services:\n  web:\n    image: a\n    deploy:\n      resources:\n        limits:\n          cpus: half\n");
    assert_eq!(e.path(), Some("services.web.deploy.resources.limits.cpus"));
    let e = fail("services:\n  web:\n    image: a\n    deploy:\n      resources:\n        limits:\n          cpus: -1\n");
    assert!(e.to_string().contains("not a number of CPUs"), "{e}");
    let s = parse("services:\n  web:\n    image: a\n    deploy:\n      resources:\n        limits: {memory: 1048576, cpus: 2}\n");
    assert_eq!(s.services[0].resources.limits.memory, Some(1 << 20));
    assert_eq!(s.services[0].resources.limits.cpus, Some(2.0));
}

#[test]
fn bad_placement_constraint_is_located_at_its_item() {
    let e = fail(
        "services:\n  web:\n    image: a\n    deploy:\n      placement:\n        constraints:\n          - node.role == manager\n          - node.colour == red\n",
    );
    assert_eq!(
        e.path(),
        Some("services.web.deploy.placement.constraints[1]")
    );
    assert_eq!(line_of(&e), Some(8));
    let e = fail(
        "services:\n  web:\n    image: a\n    deploy:\n      placement:\n        preferences:\n          - spread: zone\n",
    );
    assert_eq!(
        e.path(),
        Some("services.web.deploy.placement.preferences[0].spread")
    );
    assert_eq!(line_of(&e), Some(7));
}

#[test]
fn dnsrr_endpoint_mode_is_a_warning() {
    let s = parse("services:\n  web:\n    image: a\n    deploy:\n      endpoint_mode: dnsrr\n");
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(s.warnings[0].starts_with("stack.yml:5:7: services.web.deploy.endpoint_mode: dnsrr"));
}

// --- service keys ------------------------------------------------------------

#[test]
fn environment_as_list_or_map() {
    let list = parse(
        "services:\n  web:\n    image: a\n    environment:\n      - MODE=prod\n      - URL=http://x/?a=b\n      - EMPTY=\n",
    );
    let map = parse(
        "services:\n  web:\n    image: a\n    environment:\n      MODE: prod\n      URL: \"http://x/?a=b\"\n      EMPTY: \"\"\n",
    );
    assert_eq!(list.services[0].env, map.services[0].env);
    let env = &list.services[0].env;
    assert_eq!(env.get("MODE").map(String::as_str), Some("prod"));
    assert_eq!(env.get("URL").map(String::as_str), Some("http://x/?a=b"));
    assert_eq!(env.get("EMPTY").map(String::as_str), Some(""));
    assert!(list.warnings.is_empty() && map.warnings.is_empty());
}

#[test]
fn environment_map_values_may_be_numbers_bools_or_null() {
    let s = parse(
        "services:\n  web:\n    image: a\n    environment:\n      PORT: 8080\n      DEBUG: true\n      RATIO: 0.5\n      FROM_SHELL:\n",
    );
    let env = &s.services[0].env;
    assert_eq!(env.get("PORT").map(String::as_str), Some("8080"));
    assert_eq!(env.get("DEBUG").map(String::as_str), Some("true"));
    assert_eq!(env.get("RATIO").map(String::as_str), Some("0.5"));
    assert!(!env.contains_key("FROM_SHELL"));
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(s.warnings[0].starts_with(
        "stack.yml:8:7: services.web.environment.FROM_SHELL: FROM_SHELL has no value"
    ));
    // The list form `- NAME` means the same.
    let s = parse("services:\n  web:\n    image: a\n    environment:\n      - FROM_SHELL\n");
    assert!(s.services[0].env.is_empty());
    assert!(warned(&s, "FROM_SHELL has no value"));
    let e = fail("services:\n  web:\n    image: a\n    environment:\n      - =x\n");
    assert_eq!(e.path(), Some("services.web.environment"));
    let e = fail("services:\n  web:\n    image: a\n    environment:\n      A: [1]\n");
    assert_eq!(e.path(), Some("services.web.environment.A"));
}

#[test]
fn labels_as_list_or_map_go_on_containers_deploy_labels_on_the_service() {
    let s = parse(
        "services:\n  web:\n    image: a\n    labels:\n      - com.example.a=1\n      - com.example.flag\n    deploy:\n      labels: [tier=front]\n",
    );
    let spec = &s.services[0];
    assert_eq!(
        spec.container_labels
            .get("com.example.a")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        spec.container_labels
            .get("com.example.flag")
            .map(String::as_str),
        Some("")
    );
    assert_eq!(spec.labels.get("tier").map(String::as_str), Some("front"));
    assert_eq!(spec.labels.get(STACK_LABEL).map(String::as_str), Some("s"));
    let m = parse("services:\n  web:\n    image: a\n    labels:\n      com.example.a: 1\n      com.example.flag: \"\"\n");
    assert_eq!(m.services[0].container_labels, spec.container_labels);
}

#[test]
fn command_and_entrypoint_as_string_or_list() {
    let s = parse(
        "services:\n  web:\n    image: sh\n    entrypoint: /bin/sh -c\n    command: 'echo \"hello world\" ''a  b'' \\$HOME'\n",
    );
    let spec = &s.services[0];
    assert_eq!(spec.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(spec.command, ["echo", "hello world", "a  b", "$HOME"]);
    let s = parse("services:\n  web:\n    image: sleep\n    command: [\"3600\"]\n");
    assert_eq!(s.services[0].command, ["3600"]);
    let s = parse("services:\n  web:\n    image: sleep\n    command: [3600]\n");
    assert_eq!(s.services[0].command, ["3600"]);
    let e = fail("services:\n  web:\n    image: sh\n    command: echo \"oops\n");
    assert_eq!(e.path(), Some("services.web.command"));
    assert_eq!(line_of(&e), Some(4));
    assert!(e.to_string().contains("not closed"), "{e}");
}

#[test]
fn shell_split_honours_quotes() {
    let ok = |s: &str| shell_split(s).expect("split");
    assert_eq!(ok("a b  c"), ["a", "b", "c"]);
    assert_eq!(ok("sh -c 'echo $x; ls'"), ["sh", "-c", "echo $x; ls"]);
    assert_eq!(ok(r#"say "a \"q\" b" c\ d"#), ["say", "a \"q\" b", "c d"]);
    assert_eq!(ok(r#"a"b"'c'"#), ["abc"]);
    assert_eq!(ok("''"), [""]);
    assert!(ok("   ").is_empty());
    assert!(shell_split("'open").is_err());
    assert!(shell_split("\"open").is_err());
    assert!(shell_split("trailing\\").is_err());
}

#[test]
fn healthcheck_forms() {
    let s = parse(
        "services:\n  web:\n    image: a\n    healthcheck:\n      test: curl -f http://localhost/\n      interval: 5s\n      timeout: 2s\n      retries: 5\n      start_period: 30s\n",
    );
    assert_eq!(
        s.services[0].healthcheck,
        Some(HealthCheck {
            test: vec!["CMD-SHELL".into(), "curl -f http://localhost/".into()],
            interval: Dur::from_secs(5),
            timeout: Dur::from_secs(2),
            retries: 5,
            start_period: Dur::from_secs(30),
        })
    );
    let s = parse(
        "services:\n  web:\n    image: a\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n",
    );
    let hc = s.services[0].healthcheck.clone().expect("healthcheck");
    assert_eq!(hc.test, ["CMD", "true"]);
    assert_eq!(hc.interval, Dur::from_secs(30));
    assert_eq!(hc.retries, 3);
    let s = parse("services:\n  web:\n    image: a\n    healthcheck:\n      disable: true\n");
    assert_eq!(
        s.services[0].healthcheck.as_ref().map(|h| h.test.clone()),
        Some(vec!["NONE".to_string()])
    );
    let e = fail("services:\n  web:\n    image: a\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      disable: true\n");
    assert_eq!(e.path(), Some("services.web.healthcheck.disable"));
    let e = fail("services:\n  web:\n    image: a\n    healthcheck:\n      test: [\"true\"]\n");
    assert_eq!(e.path(), Some("services.web.healthcheck.test"));
    assert_eq!(line_of(&e), Some(5));
    let e = fail("services:\n  web:\n    image: a\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 0s\n");
    assert_eq!(e.path(), Some("services.web.healthcheck.interval"));
    assert_eq!(line_of(&e), Some(6));
    let e = fail("services:\n  web:\n    image: a\n    healthcheck:\n      interval: 5s\n");
    assert!(e.to_string().contains("missing key \"test\""), "{e}");
}

// --- ports -------------------------------------------------------------------

#[test]
fn short_port_syntax() {
    let s = parse(
        "services:\n  web:\n    image: a\n    ports:\n      - \"8080:80\"\n      - \"5353:53/udp\"\n      - 9000:9000\n      - \"81\"\n      - 82\n",
    );
    let ports = &s.services[0].ports;
    let host = |published: Option<u16>, target: u16, protocol: Protocol| PortConfig {
        target,
        published,
        protocol,
        mode: PublishMode::Host,
    };
    assert_eq!(
        ports,
        &vec![
            host(Some(8080), 80, Protocol::Tcp),
            host(Some(5353), 53, Protocol::Udp),
            host(Some(9000), 9000, Protocol::Tcp),
            host(None, 81, Protocol::Tcp),
            host(None, 82, Protocol::Tcp),
        ]
    );
    // Short syntax is ingress mode: each port gets a warning saying it is host mode now.
    assert_eq!(s.warnings.len(), 5, "{:?}", s.warnings);
    assert!(s.warnings[0].starts_with("stack.yml:5:7: services.web.ports[0]: port 8080/tcp"));
    assert!(s.warnings[0].contains("host mode"));
    assert!(s.warnings[1].contains("port 5353/udp"));
    assert!(s.warnings[3].contains("no published port"));
}

#[test]
fn short_port_syntax_refusals() {
    let e = fail("services:\n  web:\n    image: a\n    ports:\n      - \"80:80\"\n      - \"127.0.0.1:8080:80\"\n");
    assert_eq!(e.path(), Some("services.web.ports[1]"));
    assert_eq!(line_of(&e), Some(6));
    assert!(e.to_string().contains("host IP"), "{e}");
    assert!(e.to_string().contains("not supported"), "{e}");
    let e = fail("services:\n  web:\n    image: a\n    ports:\n      - \"8000-8010:8000-8010\"\n");
    assert!(e.to_string().contains("range"), "{e}");
    let e = fail("services:\n  web:\n    image: a\n    ports:\n      - \"80/sctp\"\n");
    assert!(e.to_string().contains("tcp or udp"), "{e}");
    let e = fail("services:\n  web:\n    image: a\n    ports:\n      - \"70000:80\"\n");
    assert!(e.to_string().contains("not a port number"), "{e}");
    let e = fail("services:\n  web:\n    image: a\n    ports:\n      - \"0:80\"\n");
    assert_eq!(e.path(), Some("services.web.ports[0].published"));
    assert_eq!(line_of(&e), Some(5));
}

#[test]
fn long_port_syntax() {
    let s = parse(
        "services:\n  web:\n    image: a\n    ports:\n      - target: 80\n        published: 8080\n        mode: host\n      - target: 53\n        published: \"5353\"\n        protocol: udp\n        mode: host\n",
    );
    assert_eq!(
        s.services[0].ports,
        vec![
            PortConfig {
                target: 80,
                published: Some(8080),
                protocol: Protocol::Tcp,
                mode: PublishMode::Host
            },
            PortConfig {
                target: 53,
                published: Some(5353),
                protocol: Protocol::Udp,
                mode: PublishMode::Host
            },
        ]
    );
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    // Long syntax defaults to ingress, which becomes host with a warning naming service and port.
    let s = parse("services:\n  web:\n    image: a\n    ports:\n      - target: 80\n        published: 8080\n");
    assert_eq!(s.services[0].ports[0].mode, PublishMode::Host);
    assert_eq!(s.warnings.len(), 1);
    assert!(
        s.warnings[0].contains("services.web.ports[0]: port 8080/tcp uses ingress mode"),
        "{:?}",
        s.warnings
    );
    let s = parse("services:\n  web:\n    image: a\n    ports:\n      - {target: 80, published: 8080, mode: ingress}\n");
    assert_eq!(s.services[0].ports[0].mode, PublishMode::Host);
    assert!(warned(&s, "ingress"));
    let e = fail("services:\n  web:\n    image: a\n    ports:\n      - target: 80\n        published: 8080\n        host_ip: 127.0.0.1\n");
    assert_eq!(e.path(), Some("services.web.ports[0].host_ip"));
    assert_eq!(line_of(&e), Some(7));
    let e = fail("services:\n  web:\n    image: a\n    ports:\n      - published: 8080\n");
    assert!(e.to_string().contains("missing key \"target\""), "{e}");
    let e = fail(
        "services:\n  web:\n    image: a\n    ports:\n      - target: 80\n        mode: mesh\n",
    );
    assert!(e.to_string().contains("use ingress or host"), "{e}");
}

#[test]
fn duplicate_host_port_across_services_is_an_error() {
    let e = fail(
        "services:\n  a:\n    image: x\n    ports:\n      - target: 80\n        published: 8080\n        mode: host\n  b:\n    image: y\n    ports:\n      - \"9090:90\"\n      - \"8080:81\"\n",
    );
    assert_eq!(e.path(), Some("services.b.ports[1]"));
    assert_eq!(line_of(&e), Some(12));
    let msg = e.to_string();
    assert!(msg.contains("8080/tcp"), "{msg}");
    assert!(msg.contains("\"a\""), "{msg}");
    // Same number, other protocol: fine.
    let s = parse("services:\n  a:\n    image: x\n    ports: [\"53:53/udp\"]\n  b:\n    image: y\n    ports: [\"53:53\"]\n");
    assert_eq!(s.services.len(), 2);
    // Twice in one service: the spec's own validation, mapped to the compose key.
    let e =
        fail("services:\n  a:\n    image: x\n    ports:\n      - \"80:80\"\n      - \"80:81\"\n");
    assert_eq!(e.path(), Some("services.a.ports[1].published"));
    assert_eq!(line_of(&e), Some(6));
}

// --- runtime -----------------------------------------------------------------

#[test]
fn runtime_from_service_then_top_level_then_none() {
    let text = "x-skein:\n  runtime: process\nservices:\n  a:\n    image: sh\n  b:\n    image: nginx\n    x-skein: {runtime: docker}\n";
    let s = parse(text);
    assert_eq!(service(&s, "s_a").runtime, Some(RuntimeKind::Process));
    assert_eq!(service(&s, "s_b").runtime, Some(RuntimeKind::Docker));
    let s = parse("services:\n  a:\n    image: sh\n");
    assert_eq!(s.services[0].runtime, None);
    let e = fail("x-skein:\n  runtime: podman\nservices:\n  a:\n    image: sh\n");
    assert_eq!(e.path(), Some("x-skein.runtime"));
    assert_eq!(line_of(&e), Some(2));
    assert!(e.to_string().contains("use docker or process"), "{e}");
    let e = fail("x-skein:\n  runtim: process\nservices:\n  a:\n    image: sh\n");
    assert!(e.to_string().contains("did you mean \"runtime\""), "{e}");
}

#[test]
fn on_disconnect_is_keep_unless_a_service_says_stop_after() {
    let s = parse(
        "services:\n  a:\n    image: sh\n  b:\n    image: sh\n    x-skein: {on_disconnect: stop-after=30s}\n",
    );
    assert_eq!(service(&s, "s_a").on_disconnect, OnDisconnect::Keep);
    assert_eq!(
        service(&s, "s_b").on_disconnect,
        OnDisconnect::StopAfter(skein_protocol::Dur::from_secs(30))
    );
    let e = fail("services:\n  a:\n    image: sh\n    x-skein: {on_disconnect: stop}\n");
    assert_eq!(e.path(), Some("services.a.x-skein.on_disconnect"));
    assert!(e.to_string().contains("stop-after=DURATION"), "{e}");
    let e = fail("x-skein: {on_disconnect: keep}\nservices:\n  a:\n    image: sh\n");
    assert!(e.to_string().contains("on a service"), "{e}");
}

// --- volumes: mounts and named volumes ----------------------------------------

fn parse_in(text: &str) -> Stack {
    match parse_stack_in(text, "app/stack.yml", Path::new("/srv/app"), "s") {
        Ok(s) => s,
        Err(e) => panic!("expected the stack to parse, got: {e}"),
    }
}

fn fail_in(text: &str) -> StackError {
    match parse_stack_in(text, "app/stack.yml", Path::new("/srv/app"), "s") {
        Ok(s) => panic!("expected an error, got {} services", s.services.len()),
        Err(e) => e,
    }
}

fn mount(kind: MountKind, source: Option<&str>, target: &str, read_only: bool) -> Mount {
    Mount {
        kind,
        source: source.map(String::from),
        target: target.to_string(),
        read_only,
    }
}

#[test]
fn short_volume_syntax() {
    let s = parse_in(
        "\
services:
  web:
    image: nginx
    volumes:
      - /etc/app:/etc/app:ro
      - ./html:/usr/share/nginx/html
      - ../shared/./conf:/conf:rw
      - data:/var/lib/data
      - cache:/cache:ro
      - /scratch
volumes:
  data:
  cache: {}
",
    );
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    let web = service(&s, "s_web");
    assert_eq!(
        web.mounts,
        [
            mount(MountKind::Bind, Some("/etc/app"), "/etc/app", true),
            mount(
                MountKind::Bind,
                Some("/srv/app/html"),
                "/usr/share/nginx/html",
                false
            ),
            mount(MountKind::Bind, Some("/srv/shared/conf"), "/conf", false),
            mount(MountKind::Volume, Some("s_data"), "/var/lib/data", false),
            mount(MountKind::Volume, Some("s_cache"), "/cache", true),
            mount(MountKind::Volume, None, "/scratch", false),
        ]
    );
    assert!(web.validate().is_ok());
}

#[test]
fn home_in_a_bind_path_is_expanded() {
    let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) else {
        return;
    };
    let s = parse_in("services:\n  web:\n    image: a\n    volumes: [\"~/data:/data\"]\n");
    let want = normalize(&Path::new(&home).join("data"));
    assert_eq!(
        s.services[0].mounts[0].source.as_deref(),
        want.to_str(),
        "{:?}",
        s.services[0].mounts
    );
    let e = fail_in("services:\n  web:\n    image: a\n    volumes: [\"~bob/data:/data\"]\n");
    assert!(e.to_string().contains("only ~/ is expanded"), "{e}");
}

#[test]
fn relative_bind_paths_start_at_the_stack_files_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("deploy");
    std::fs::create_dir(&sub).expect("mkdir");
    let path = sub.join("stack.yml");
    std::fs::write(
        &path,
        "services:\n  web:\n    image: a\n    volumes:\n      - ./site:/site:ro\n      - type: bind\n        source: ../logs\n        target: /logs\n",
    )
    .expect("write");
    let s = load_stack(&path, "s").expect("load");
    let base = std::path::absolute(dir.path()).expect("absolute");
    let m = &s.services[0].mounts;
    assert_eq!(
        m[0].source.as_deref(),
        base.join("deploy/site").to_str(),
        "{m:?}"
    );
    assert!(m[0].read_only);
    assert_eq!(m[1].source.as_deref(), base.join("logs").to_str(), "{m:?}");
    // parse_stack: the directory of `file` (here: none, so the current one).
    let s = parse("services:\n  web:\n    image: a\n    volumes: [\"./x:/x\"]\n");
    let cwd = std::env::current_dir().expect("cwd");
    assert_eq!(
        s.services[0].mounts[0].source.as_deref(),
        cwd.join("x").to_str()
    );
}

#[test]
fn long_volume_syntax() {
    let s = parse_in(
        "\
services:
  db:
    image: postgres
    volumes:
      - type: volume
        source: db-data
        target: /var/lib/postgresql/data
        volume:
          nocopy: false
      - type: bind
        source: ./init
        target: /docker-entrypoint-initdb.d
        read_only: true
        bind:
          create_host_path: false
      - type: tmpfs
        target: /run
      - type: volume
        target: /anon
      - {type: bind, source: /etc/localtime, target: /etc/localtime, read_only: true}
volumes:
  db-data:
    driver: local
",
    );
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    assert_eq!(
        s.services[0].mounts,
        [
            mount(
                MountKind::Volume,
                Some("s_db-data"),
                "/var/lib/postgresql/data",
                false
            ),
            mount(
                MountKind::Bind,
                Some("/srv/app/init"),
                "/docker-entrypoint-initdb.d",
                true
            ),
            mount(MountKind::Tmpfs, None, "/run", false),
            mount(MountKind::Volume, None, "/anon", false),
            mount(
                MountKind::Bind,
                Some("/etc/localtime"),
                "/etc/localtime",
                true
            ),
        ]
    );
}

#[test]
fn options_skein_cannot_carry_are_warned_about_by_name() {
    let s = parse_in(
        "\
services:
  web:
    image: a
    volumes:
      - type: tmpfs
        target: /run
        tmpfs:
          size: 64M
          mode: 1777
      - type: volume
        source: data
        target: /data
        volume:
          nocopy: true
      - type: bind
        source: /srv
        target: /srv
        bind:
          create_host_path: true
        consistency: cached
      - data:/other:nocopy
volumes:
  data:
",
    );
    let want = [
        "app/stack.yml:8:11: services.web.volumes[0].tmpfs.size: ignored: skein cannot limit a tmpfs yet",
        "app/stack.yml:9:11: services.web.volumes[0].tmpfs.mode: ignored",
        "app/stack.yml:14:11: services.web.volumes[1].volume.nocopy: nocopy is ignored",
        "app/stack.yml:19:11: services.web.volumes[2].bind.create_host_path: ignored, as docker stack deploy ignores it",
        "app/stack.yml:20:9: services.web.volumes[2].consistency: ignored",
        "app/stack.yml:21:7: services.web.volumes[3]: nocopy is ignored",
    ];
    assert_eq!(s.warnings.len(), want.len(), "{:#?}", s.warnings);
    for (got, want) in s.warnings.iter().zip(want) {
        assert!(got.starts_with(want), "{got:?} should start with {want:?}");
    }
    assert_eq!(s.services[0].mounts.len(), 4);
}

#[test]
fn long_volume_syntax_errors_are_located() {
    let base = "services:\n  web:\n    image: a\n    volumes:\n      - type: bind\n        source: /x\n        target: /y\n";
    let e = fail_in(&base.replace("        target", "        read_olny: true\n        target"));
    assert_eq!(
        e.to_string(),
        "app/stack.yml:7:9: services.web.volumes[0]: unknown key \"read_olny\" (did you mean \"read_only\"?)"
    );
    let e = fail_in(&base.replace("type: bind", "type: bnid"));
    assert_eq!(
        e.to_string(),
        "app/stack.yml:5:9: services.web.volumes[0].type: unknown value \"bnid\" (did you mean \"bind\"?): use bind, volume or tmpfs"
    );
    let e = fail_in(&base.replace("type: bind", "type: npipe"));
    assert!(
        e.to_string()
            .contains("skein does not support npipe mounts yet"),
        "{e}"
    );
    let e = fail_in(&base.replace("type: bind\n        source: /x", "source: /x"));
    assert_eq!(e.path(), Some("services.web.volumes[0]"));
    assert_eq!(line_of(&e), Some(5));
    assert!(e.to_string().contains("missing key \"type\""), "{e}");
    let e = fail_in(&base.replace("        target: /y\n", ""));
    assert!(e.to_string().contains("missing key \"target\""), "{e}");
    let e = fail_in(&base.replace("target: /y", "target: y"));
    assert_eq!(e.path(), Some("services.web.volumes[0].target"));
    assert_eq!(line_of(&e), Some(7));
    let e = fail_in(&base.replace("        source: /x\n", ""));
    assert!(e.to_string().contains("a bind mount needs `source`"), "{e}");
    let e = fail_in(&base.replace("type: bind", "type: tmpfs"));
    assert_eq!(e.path(), Some("services.web.volumes[0].source"));
    assert!(e.to_string().contains("a tmpfs has no source"), "{e}");
    let e = fail_in(&format!("{base}        volume: {{nocopy: true}}\n"));
    assert_eq!(e.path(), Some("services.web.volumes[0].volume"));
    assert_eq!(line_of(&e), Some(8));
    assert!(e.to_string().contains("apply to type: volume only"), "{e}");
    let e = fail_in(&format!("{base}        bind: {{propagation: rshared}}\n"));
    assert_eq!(e.path(), Some("services.web.volumes[0].bind.propagation"));
    assert!(
        e.to_string()
            .contains("skein does not support `propagation` yet"),
        "{e}"
    );
    let e = fail_in(&format!("{base}        bind: {{create_host_pth: true}}\n"));
    assert!(
        e.to_string().contains("did you mean \"create_host_path\""),
        "{e}"
    );
    let e = fail_in(&format!("{base}        tmpfs: {{size: lots}}\n").replace("bind", "tmpfs"));
    assert!(e.to_string().contains("invalid memory size"), "{e}");
}

#[test]
fn short_volume_syntax_errors() {
    let e = |v: &str| {
        fail_in(&format!(
            "services:\n  web:\n    image: a\n    volumes:\n      - {v:?}\n"
        ))
    };
    for (v, want) in [
        (
            "data",
            "target \"data\" must be an absolute path inside the task",
        ),
        ("./a:b", "target \"b\" must be an absolute path"),
        ("/a:/b:ro:x", "too many ':'"),
        (":/b", "has an empty source"),
        ("/a:/", "cannot mount over /"),
        ("/a:/b:z", "SELinux relabelling (z)"),
        ("/a:/b:rshared", "mount propagation (rshared)"),
        ("/a:/b:ro,rw", "both ro and rw"),
        (
            "/a:/b:r0",
            "unknown mode \"r0\" (did you mean \"ro\"?): use ro or rw",
        ),
        ("/a:/b:nocopy", "nocopy applies to volumes"),
    ] {
        let err = e(v);
        assert_eq!(err.path(), Some("services.web.volumes[0]"), "{v}: {err}");
        assert_eq!(line_of(&err), Some(5), "{v}: {err}");
        assert!(err.to_string().contains(want), "{v}: {err}");
    }
}

#[test]
fn an_undeclared_named_volume_is_an_error_at_its_line() {
    let e = fail_in("services:\n  web:\n    image: a\n    volumes:\n      - cache:/cache\n");
    assert_eq!(
        e.to_string(),
        "app/stack.yml:5:7: services.web.volumes[0]: volume \"cache\" is not declared: add `cache:` \
         under the top-level `volumes:` (with `external: true` if the volume exists already), or \
         write a host path such as ./cache to bind-mount a directory"
    );
    let e = fail_in(
        "services:\n  web:\n    image: a\n    volumes:\n      - type: volume\n        source: db-dat\n        target: /d\nvolumes:\n  db-data:\n",
    );
    assert_eq!(
        e.to_string(),
        "app/stack.yml:6:9: services.web.volumes[0].source: volume \"db-dat\" is not declared \
         under the top-level `volumes:` (did you mean \"db-data\"?)"
    );
}

#[test]
fn named_volumes_get_the_stack_prefix_unless_external_or_named() {
    let text = "\
services:
  web:
    image: a
    volumes:
      - plain:/a
      - shared:/b
      - legacy:/c
      - named:/d
      - extnamed:/e
volumes:
  plain:
  shared:
    external: true
  legacy:
    external:
      name: old-volume
  named:
    name: exact-name
  extnamed:
    external: true
    name: their-volume
    x-note: extension keys are ignored
";
    let s = parse_stack_in(text, "stack.yml", Path::new("/srv"), "shop").expect("parse");
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    let sources: Vec<Option<&str>> = s.services[0]
        .mounts
        .iter()
        .map(|m| m.source.as_deref())
        .collect();
    assert_eq!(
        sources,
        [
            Some("shop_plain"),
            Some("shared"),
            Some("old-volume"),
            Some("exact-name"),
            Some("their-volume"),
        ]
    );
}

#[test]
fn volume_declarations_skein_cannot_honour_are_refused_by_name() {
    let svc = "services:\n  web:\n    image: a\n";
    let e = fail(&format!("{svc}volumes:\n  data:\n    driver: nfs\n"));
    assert_eq!(
        e.to_string(),
        "stack.yml:6:5: volumes.data.driver: skein does not support volume driver \"nfs\" yet: \
         only the engine's local driver; remove `driver`"
    );
    let e = fail(&format!(
        "{svc}volumes:\n  data:\n    driver: local\n    driver_opts:\n      type: nfs\n"
    ));
    assert_eq!(e.path(), Some("volumes.data.driver_opts"));
    assert_eq!(line_of(&e), Some(7));
    assert!(
        e.to_string()
            .contains("skein does not support `driver_opts` yet"),
        "{e}"
    );
    let e = fail(&format!("{svc}volumes:\n  data:\n    externl: true\n"));
    assert_eq!(
        e.to_string(),
        "stack.yml:6:5: volumes.data: unknown key \"externl\" (did you mean \"external\"?)"
    );
    let e = fail(&format!(
        "{svc}volumes:\n  data:\n    external: true\n    driver: local\n"
    ));
    assert_eq!(e.path(), Some("volumes.data.driver"));
    let e = fail(&format!(
        "{svc}volumes:\n  data:\n    external: {{name: a}}\n    name: b\n"
    ));
    assert!(e.to_string().contains("the name is given twice"), "{e}");
    let e = fail(&format!("{svc}volumes:\n  -bad:\n    external: true\n"));
    assert_eq!(e.path(), Some("volumes.-bad"));
    assert!(e.to_string().contains("volume name \"-bad\""), "{e}");
    let e = fail(&format!("{svc}volumes:\n  data:\n    external: maybe\n"));
    assert_eq!(e.path(), Some("volumes.data.external"));
    let s = parse(&format!(
        "{svc}volumes:\n  data:\n    labels: {{team: infra}}\n"
    ));
    assert!(
        warned(&s, "volumes.data.labels: ignored"),
        "{:?}",
        s.warnings
    );
}

#[test]
fn only_unused_volumes_are_warned_about() {
    let s = parse(
        "services:\n  web:\n    image: a\n    volumes: [used:/u]\nvolumes:\n  spare:\n  used:\n  other:\n",
    );
    assert_eq!(
        s.warnings,
        ["stack.yml:5:1: volumes: spare, other declared but used by no service; ignored"]
    );
}

#[test]
fn two_mounts_on_one_target_is_an_error() {
    let e = fail_in(
        "services:\n  web:\n    image: a\n    volumes:\n      - /a:/data\n      - type: tmpfs\n        target: /data/\n",
    );
    assert_eq!(e.path(), Some("services.web.volumes[1]"));
    assert_eq!(line_of(&e), Some(6));
    assert!(
        e.to_string()
            .contains("/data is already mounted by services.web.volumes[0]"),
        "{e}"
    );
}

#[test]
fn volumes_on_the_process_runtime_are_warned_about() {
    let s = parse_in(
        "x-skein: {runtime: process}\nservices:\n  web:\n    image: a\n    volumes: [\"/a:/b\"]\n",
    );
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(
        s.warnings[0]
            .starts_with("app/stack.yml:5:5: services.web.volumes: ignored on the process runtime"),
        "{:?}",
        s.warnings
    );
}

#[test]
fn normalize_is_lexical() {
    assert_eq!(normalize(Path::new("/a/./b/../c")), Path::new("/a/c"));
    assert_eq!(normalize(Path::new("/../x")), Path::new("/x"));
    assert_eq!(normalize(Path::new("a/../../b")), Path::new("../b"));
}

// --- what skein does not implement: refused or warned about, by name -----------

#[test]
fn unsupported_service_keys_are_refused_by_name() {
    for (key, value) in [
        ("volumes_from", "[other]"),
        ("tmpfs", "/run"),
        ("secrets", "[db_password]"),
        ("configs", "[nginx_conf]"),
        ("env_file", ".env"),
        ("build", "."),
        ("devices", "[\"/dev/ttyUSB0\"]"),
        ("cap_add", "[NET_ADMIN]"),
        ("privileged", "true"),
        ("user", "1000"),
    ] {
        let text = format!("services:\n  web:\n    image: a\n    {key}: {value}\n");
        let e = fail(&text);
        assert_eq!(
            e.path().map(String::from),
            Some(format!("services.web.{key}")),
            "{key}"
        );
        assert_eq!(line_of(&e), Some(4), "{key}");
        assert!(
            e.to_string()
                .contains(&format!("skein does not support `{key}` yet")),
            "{e}"
        );
    }
    let e = fail("services:\n  web:\n    image: a\n    mem_limit: 1g\n");
    assert!(
        e.to_string().contains("deploy.resources.limits.memory"),
        "{e}"
    );
    let e = fail("services:\n  web:\n    image: a\n    deploy:\n      resources:\n        reservations:\n          devices: []\n");
    assert_eq!(
        e.path(),
        Some("services.web.deploy.resources.reservations.devices")
    );
}

#[test]
fn ignored_service_keys_are_warned_about_by_name() {
    let s = parse(
        "services:\n  web:\n    image: a\n    container_name: web1\n    restart: always\n    hostname: h\n    logging: {driver: json-file}\n    tty: true\n    stdin_open: true\n    init: true\n",
    );
    assert_eq!(s.warnings.len(), 7, "{:?}", s.warnings);
    assert!(s.warnings[0].starts_with("stack.yml:4:5: services.web.container_name: ignored"));
    assert!(s.warnings[1].contains("services.web.restart: ignored: use deploy.restart_policy"));
    for key in ["hostname", "logging", "tty", "stdin_open", "init"] {
        assert!(warned(&s, &format!("services.web.{key}: ignored")), "{key}");
    }
}

#[test]
fn realistic_stack_parses_with_the_right_warnings() {
    let text = r#"version: "3.8"

x-defaults: &defaults
  restart_policy:
    condition: on-failure

services:
  db:
    image: postgres:16
    environment:
      POSTGRES_DB: app
      POSTGRES_PASSWORD: example
    networks: [back]
    deploy:
      placement:
        constraints: [node.labels.disk == ssd]

  api:
    image: registry.local/api:1.4
    command: ["serve", "--port", "8000"]
    depends_on:
      - db
    environment:
      - DATABASE_URL=postgres://db/app
    ports:
      - "8000:8000"
    networks:
      - front
      - back
    deploy:
      replicas: 2
      update_config:
        parallelism: 1
        delay: 10s
        order: start-first

  proxy:
    image: nginx:1.27
    ports:
      - target: 80
        published: 80
        mode: host
    networks:
      front: {}
    deploy:
      mode: global

networks:
  front:
  back:
    driver: overlay

volumes:
  db-data:
"#;
    let s = parse_stack(text, "prod.yml", "shop").expect("parse");
    let names: Vec<&str> = s.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["shop_api", "shop_db", "shop_proxy"]);
    let w = &s.warnings;
    let want = [
        "prod.yml:13:5: services.db.networks: ignored",
        "prod.yml:21:5: services.api.depends_on: ignored",
        "prod.yml:26:7: services.api.ports[0]: port 8000/tcp",
        "prod.yml:27:5: services.api.networks: ignored",
        "prod.yml:31:7: services.api.deploy.replicas: 2 replicas publish host port 8000/tcp",
        "prod.yml:43:5: services.proxy.networks: ignored",
        "prod.yml:48:1: networks: ignored network(s) front, back",
        "prod.yml:53:1: volumes: db-data declared but used by no service",
    ];
    assert_eq!(w.len(), want.len(), "{w:#?}");
    for (got, want) in w.iter().zip(want) {
        assert!(got.starts_with(want), "{got:?} should start with {want:?}");
    }
    assert!(w[0].ends_with(
        "services.db.networks: ignored: networks are not implemented across nodes yet: the services \
         of a stack reach each other by service name only on the same node (Docker runtime); the \
         process runtime uses the host network"
    ));
    assert!(w[6].ends_with(
        "networks: ignored network(s) front, back: networks are not implemented across nodes yet: \
         the services of a stack reach each other by service name only on the same node (Docker \
         runtime); the process runtime uses the host network"
    ));
    assert_eq!(
        w[7],
        "prod.yml:53:1: volumes: db-data declared but used by no service; ignored"
    );
    let api = service(&s, "shop_api");
    assert_eq!(api.ports[0].mode, PublishMode::Host);
    assert_eq!(api.replicas, Some(2));
    assert_eq!(service(&s, "shop_proxy").replicas, None);
}

#[test]
fn top_level_secrets_and_configs_unused_are_warnings_and_name_is_ignored() {
    let s = parse(
        "name: myproject\nservices:\n  web:\n    image: a\nsecrets:\n  token:\n    file: ./token\nconfigs:\n  conf:\n    file: ./c\n",
    );
    assert_eq!(s.warnings.len(), 3, "{:?}", s.warnings);
    assert!(s.warnings[0].starts_with("stack.yml:1:1: name: ignored"));
    assert!(
        s.warnings[1].starts_with("stack.yml:5:1: secrets: token declared but used by no service")
    );
    assert!(s.warnings[2].starts_with("stack.yml:8:1: configs: conf declared"));
}

#[test]
fn dollar_signs_are_warned_about_once() {
    let s = parse("# costs $5\nservices:\n  web:\n    image: sh\n    command: echo ${HOME} $$USER\n    environment: [A=$B]\n");
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(
        s.warnings[0].starts_with("stack.yml:5:19: `$` is passed as written"),
        "{:?}",
        s.warnings
    );
    assert_eq!(s.services[0].command, ["echo", "${HOME}", "$$USER"]);
}

#[test]
fn yaml_merge_keys_are_applied() {
    let text = "\
x-deploy: &deploy
  replicas: 3
  update_config:
    delay: 5s
services:
  web:
    image: nginx
    deploy:
      <<: *deploy
      replicas: 2
  worker:
    image: w
    deploy: *deploy
";
    let s = parse(text);
    assert_eq!(service(&s, "s_web").replicas, Some(2));
    assert_eq!(service(&s, "s_web").update_config.delay, Dur::from_secs(5));
    assert_eq!(service(&s, "s_worker").replicas, Some(3));
    // Errors in a file with merges are still located by key path.
    let bad = text.replace("delay: 5s", "delay: soon");
    let e = fail(&bad);
    assert!(
        e.path()
            .is_some_and(|p| p.ends_with("deploy.update_config.delay")),
        "{e}"
    );
    assert!(line_of(&e).is_some(), "{e}");
    let bad = text.replace(
        "      replicas: 2\n",
        "      replicas: 2\n      replicsa: 1\n",
    );
    let e = fail(&bad);
    assert_eq!(e.path(), Some("services.web.deploy"));
    assert_eq!(line_of(&e), Some(11));
}

// --- the key index -----------------------------------------------------------

#[test]
fn key_index_follows_indentation_sequences_and_scalars() {
    let text = "\
# comment
services:
  web:
    command: |
      not: a key
      still: text
    ports:
    - \"80:80\"
    - target: 81
      published: 8081
    labels: {a: 1,
      b: 2}
    image: 'quoted: value'
    \"quoted key\": 1
  db:
    environment:
      - A=1
      -   B=2
";
    let idx = KeyIndex::build(text);
    let at = |p: &str| idx.find(p);
    assert_eq!(at("services"), Some((2, 1)));
    assert_eq!(at("services.web.command"), Some((4, 5)));
    assert_eq!(at("services.web.not"), None);
    assert_eq!(at("services.web.ports"), Some((7, 5)));
    assert_eq!(at("services.web.ports[0]"), Some((8, 5)));
    assert_eq!(at("services.web.ports[1]"), Some((9, 5)));
    assert_eq!(at("services.web.ports[1].target"), Some((9, 7)));
    assert_eq!(at("services.web.ports[1].published"), Some((10, 7)));
    assert_eq!(at("services.web.labels"), Some((11, 5)));
    assert_eq!(at("services.web.b"), None);
    assert_eq!(at("services.web.image"), Some((13, 5)));
    assert_eq!(at("services.web.quoted key"), Some((14, 5)));
    assert_eq!(at("services.db.environment[1]"), Some((18, 7)));
    assert_eq!(idx.locate("services.web.labels.a"), Some((11, 5)));
    assert_eq!(idx.locate("services.db.environment[1].x"), Some((18, 7)));
    assert_eq!(idx.locate("nowhere.at.all"), None);
}

// --- the sample stack --------------------------------------------------------

#[test]
fn the_example_edge_stack_parses_cleanly() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/edge-stack.yml");
    let s = load_stack(&path, "edge").expect("examples/edge-stack.yml parses");
    assert!(s.warnings.is_empty(), "{:#?}", s.warnings);
    let names: Vec<&str> = s.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["edge_heartbeat", "edge_web", "edge_worker"]);
    for spec in &s.services {
        assert_eq!(spec.runtime, Some(RuntimeKind::Process), "{}", spec.name);
        assert!(spec.validate().is_ok());
    }
    let hb = service(&s, "edge_heartbeat");
    assert_eq!(hb.mode, ServiceMode::Global);
    assert_eq!(hb.replicas, None);
    assert_eq!(hb.image, "sh");
    let worker = service(&s, "edge_worker");
    assert_eq!(worker.replicas, Some(2));
    assert_eq!(worker.update_config.order, UpdateOrder::StartFirst);
    let web = service(&s, "edge_web");
    assert_eq!(web.image, "python3");
    assert_eq!(
        web.command,
        ["-m", "http.server", "8080", "--bind", "127.0.0.1"]
    );
    assert_eq!(
        web.host_ports().collect::<Vec<_>>(),
        [(8080, Protocol::Tcp)]
    );
    assert!(web.healthcheck.is_some());
    assert_eq!(web.restart_policy.condition, RestartCondition::Any);
}

#[test]
fn a_stack_of_more_than_a_thousand_services_is_refused() {
    let mut text = String::from("services:\n");
    for i in 0..=MAX_STACK_SERVICES {
        text.push_str(&format!("  s{i}:\n    image: sh\n"));
    }
    let e = fail(&text).to_string();
    assert!(e.contains("1001 services"), "{e}");
    assert!(e.contains("split it"), "{e}");
}

#[test]
fn binding_the_host_root_is_refused() {
    for vol in ["/:/host", "/srv/..:/host:ro", "/..//:/host"] {
        let e = fail(&format!(
            "services:\n  web:\n    image: sh\n    volumes: [\"{vol}\"]\n"
        ))
        .to_string();
        assert!(e.contains("root filesystem"), "{vol}: {e}");
    }
}

#[test]
fn an_alias_bomb_is_refused_quickly() {
    let mut bomb = String::from("x-a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n");
    for (i, c) in ('b'..='i').enumerate() {
        let prev = (b'a' + i as u8) as char;
        bomb.push_str(&format!(
            "x-{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    bomb.push_str("services:\n  web:\n    image: sh\n    command: *i\n");
    let started = std::time::Instant::now();
    let e = fail(&bomb).to_string();
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{e}");
    assert!(e.starts_with("stack.yml"), "{e}");
}

#[test]
fn deep_nesting_is_refused() {
    let text = format!(
        "services:\n  web:\n    image: sh\n    labels: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let started = std::time::Instant::now();
    let e = fail(&text).to_string();
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{e}");
    assert!(
        e.starts_with("stack.yml:4: invalid YAML: brackets nested more than 128"),
        "{e}"
    );
}

#[test]
fn deep_block_nesting_is_refused_quickly() {
    // `- - - ... x`: 10,000 nested sequences on one line.
    let text = format!(
        "services:\n  web:\n    image: sh\n    labels:\n      {}x\n",
        "- ".repeat(10_000)
    );
    let started = std::time::Instant::now();
    let e = fail(&text).to_string();
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{e}");
    assert!(e.contains("recursion limit"), "{e}");
}

#[test]
fn flow_depth_counts_brackets_outside_quotes_and_comments() {
    assert_eq!(flow_too_deep("a: [[[]]]", 3), None);
    assert_eq!(flow_too_deep("a: [[[[]]]]", 3), Some(1));
    assert_eq!(
        flow_too_deep("a: '[[[['\nb: \"[[[[\"\nc: x # [[[[", 3),
        None
    );
    assert_eq!(flow_too_deep("a: it's\nb: [[[[", 3), Some(2));
    assert_eq!(flow_too_deep("a: 'it''s [[[['", 3), None);
    // Nested 128 deep is fine for the parser; one more is refused.
    let ok = format!(
        "services:\n  web:\n    image: sh\n    labels: {}{}\n",
        "[".repeat(120),
        "]".repeat(120)
    );
    assert!(!fail(&ok).to_string().contains("nested more than"));
}
