use super::*;
use crate::orchestrator::tests::node;
use proptest::prelude::*;
use skein_protocol::{
    Availability, NodeStatus, PortConfig, PublishMode, ServiceSpec, TaskState, TaskStatus,
};

fn task(id: &str, svc: &str, spec: ServiceSpec) -> Task {
    Task {
        id: id.into(),
        service_id: svc.into(),
        service_name: svc.into(),
        slot: Some(1),
        node_id: None,
        spec_version: 1,
        spec,
        desired_state: TaskState::Running,
        status: TaskStatus {
            state: TaskState::Pending,
            ..Default::default()
        },
        created_at: 0,
        restarts: vec![],
    }
}

fn host_port_spec(port: u16) -> ServiceSpec {
    let mut s = ServiceSpec::new("web", "httpd");
    s.ports.push(PortConfig {
        target: 80,
        published: Some(port),
        protocol: Protocol::Tcp,
        mode: PublishMode::Host,
    });
    s
}

#[test]
fn constraints_match_labels_role_and_hostname() {
    let mut n = node("a");
    n.labels.insert("zone".into(), "east".into());
    assert!(satisfies(&n, &["node.labels.zone == east".into()]));
    assert!(!satisfies(&n, &["node.labels.zone != east".into()]));
    assert!(!satisfies(&n, &["node.labels.rack == 1".into()]));
    assert!(satisfies(&n, &["node.labels.rack != 1".into()]));
    assert!(satisfies(
        &n,
        &[
            "node.role == manager".into(),
            "node.platform.os == linux".into()
        ]
    ));
    assert!(satisfies(&n, &["node.hostname == host-a".into()]));
    assert!(satisfies(&n, &["node.hostname == name-a".into()]));
    assert!(satisfies(&n, &["node.id == a".into()]));
}

#[test]
fn host_ports_conflict_on_one_node() {
    let mut st = ClusterState::default();
    st.nodes.insert("a".into(), node("a"));
    let t1 = task("t1", "web", host_port_spec(8080));
    let t2 = task("t2", "web", host_port_spec(8080));
    let p = place(&st, &[&t1, &t2]);
    assert_eq!(p.assignments, vec![("t1".to_string(), "a".to_string())]);
    assert_eq!(p.unplaced.len(), 1);
    assert!(
        p.unplaced[0].1.contains("host-mode port already in use"),
        "{}",
        p.unplaced[0].1
    );
}

#[test]
fn spread_preference_balances_label_values() {
    let mut st = ClusterState::default();
    for (id, zone) in [("a", "x"), ("b", "x"), ("c", "y")] {
        let mut n = node(id);
        n.labels.insert("zone".into(), zone.into());
        st.nodes.insert(id.into(), n);
    }
    let mut spec = ServiceSpec::new("web", "httpd");
    spec.placement
        .preferences
        .push(skein_protocol::PlacementPreference {
            spread: "node.labels.zone".into(),
        });
    let tasks: Vec<Task> = (0..4)
        .map(|i| task(&format!("t{i}"), "web", spec.clone()))
        .collect();
    let refs: Vec<&Task> = tasks.iter().collect();
    let p = place(&st, &refs);
    let on_c = p.assignments.iter().filter(|(_, n)| n == "c").count();
    assert_eq!(on_c, 2, "zone y gets half: {:?}", p.assignments);
}

#[test]
fn no_nodes_says_so() {
    let st = ClusterState::default();
    let t = task("t", "web", ServiceSpec::new("web", "x"));
    let p = place(&st, &[&t]);
    assert_eq!(
        p.unplaced[0].1,
        "no suitable node (no nodes in the cluster)"
    );
}

fn arb_node() -> impl Strategy<Value = (bool, u8, bool, bool)> {
    // (ready, availability 0..3, label zone=east, offers process)
    (
        any::<bool>(),
        0u8..3,
        any::<bool>(),
        prop::bool::weighted(0.9),
    )
}

proptest! {
    /// Placement never breaks a rule, whatever the cluster looks like.
    #[test]
    fn placement_respects_every_rule(
        nodes in proptest::collection::vec(arb_node(), 0..6),
        tasks in proptest::collection::vec((0u8..3, prop::option::of(8000u16..8003), any::<bool>()), 1..12),
        max_per_node in 0u64..3,
    ) {
        let mut st = ClusterState::default();
        for (i, (ready, avail, east, process)) in nodes.iter().enumerate() {
            let mut n = node(&format!("n{i}"));
            n.status = if *ready { NodeStatus::Ready } else { NodeStatus::Down };
            n.availability = [Availability::Active, Availability::Pause, Availability::Drain][*avail as usize];
            if *east { n.labels.insert("zone".into(), "east".into()); }
            if !process { n.description.runtimes.clear(); }
            st.nodes.insert(n.id.clone(), n);
        }
        let tasks: Vec<Task> = tasks.iter().enumerate().map(|(i, (svc, port, constrained))| {
            let mut spec = ServiceSpec::new(format!("s{svc}"), "x");
            if let Some(p) = port {
                spec = host_port_spec(*p);
                spec.name = format!("s{svc}");
            }
            if *constrained { spec.placement.constraints.push("node.labels.zone==east".into()); }
            spec.placement.max_replicas_per_node = max_per_node;
            task(&format!("t{i}"), &format!("s{svc}"), spec)
        }).collect();
        let refs: Vec<&Task> = tasks.iter().collect();
        let p = place(&st, &refs);
        prop_assert_eq!(p.assignments.len() + p.unplaced.len(), tasks.len());
        let mut ports: BTreeSet<(String, u16)> = BTreeSet::new();
        let mut per: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (tid, nid) in &p.assignments {
            let t = tasks.iter().find(|t| &t.id == tid).expect("task");
            let n = &st.nodes[nid];
            prop_assert!(n.schedulable());
            prop_assert!(offers_runtime(n, t.spec.runtime));
            prop_assert!(satisfies(n, &t.spec.placement.constraints));
            for (port, _) in t.spec.host_ports() {
                prop_assert!(ports.insert((nid.clone(), port)), "port {} twice on {}", port, nid);
            }
            let c = per.entry((nid.clone(), t.service_id.clone())).or_default();
            *c += 1;
            if max_per_node > 0 { prop_assert!(*c <= max_per_node); }
        }
        // Unplaced only when truly no node fits: a schedulable, matching node
        // with room would have taken it. Checked for tasks without ports or limits.
        for (tid, msg) in &p.unplaced {
            let t = tasks.iter().find(|t| &t.id == tid).expect("task");
            prop_assert!(msg.starts_with("no suitable node"));
            if t.spec.host_ports().next().is_none() && max_per_node == 0 {
                prop_assert!(!st.nodes.values().any(|n| n.schedulable()
                    && offers_runtime(n, t.spec.runtime)
                    && satisfies(n, &t.spec.placement.constraints)));
            }
        }
    }
}

proptest! {
    /// The heap used for runs of alike tasks picks exactly the node a scan
    /// over every node would: the fitting node with the fewest tasks of the
    /// service, then the fewest tasks, then the lowest id.
    #[test]
    fn runs_place_like_a_scan_over_every_node(
        nodes in proptest::collection::vec((arb_node(), 0usize..4), 1..8),
        n_tasks in 1usize..14,
        port in prop::option::of(8000u16..8002),
        max_per_node in 0u64..3,
    ) {
        let mut st = ClusterState::default();
        let mut existing = Vec::new();
        for (i, ((ready, avail, east, process), preload)) in nodes.iter().enumerate() {
            let mut n = node(&format!("n{i}"));
            n.status = if *ready { NodeStatus::Ready } else { NodeStatus::Down };
            n.availability = [Availability::Active, Availability::Pause, Availability::Drain][*avail as usize];
            if *east { n.labels.insert("zone".into(), "east".into()); }
            if !process { n.description.runtimes.clear(); }
            // Tasks of another service already there, so the loads differ.
            for k in 0..*preload {
                let mut t = task(&format!("old{i}-{k}"), "other", ServiceSpec::new("other", "x"));
                t.node_id = Some(n.id.clone());
                t.status.state = TaskState::Running;
                existing.push(t);
            }
            st.nodes.insert(n.id.clone(), n);
        }
        for t in existing { st.tasks.insert(t.id.clone(), t); }
        let mut spec = match port { Some(p) => host_port_spec(p), None => ServiceSpec::new("web", "x") };
        spec.placement.max_replicas_per_node = max_per_node;
        let tasks: Vec<Task> = (0..n_tasks).map(|i| task(&format!("t{i:02}"), "web", spec.clone())).collect();
        let refs: Vec<&Task> = tasks.iter().collect();
        let got = place(&st, &refs);

        // The reference: one task at a time, every node scanned.
        let ids: Vec<&Node> = st.nodes.values().collect();
        // (tasks of the service, tasks in all, host ports in use) per node.
        type Used = (u64, u64, BTreeSet<(u16, Protocol)>);
        let mut load: Vec<Used> = ids.iter().map(|n| {
            let total = st.tasks.values().filter(|t| t.node_id.as_deref() == Some(n.id.as_str())).count() as u64;
            (0, total, BTreeSet::new())
        }).collect();
        let mut want = Vec::new();
        for t in &tasks {
            let best = (0..ids.len())
                .filter(|&i| fits_static(ids[i], t).is_ok())
                .filter(|&i| max_per_node == 0 || load[i].0 < max_per_node)
                .filter(|&i| t.spec.host_ports().all(|p| !load[i].2.contains(&p)))
                .min_by_key(|&i| (load[i].0, load[i].1, i));
            if let Some(i) = best {
                load[i].0 += 1;
                load[i].1 += 1;
                load[i].2.extend(t.spec.host_ports());
                want.push((t.id.clone(), ids[i].id.clone()));
            }
        }
        prop_assert_eq!(&got.assignments, &want);
        prop_assert_eq!(got.assignments.len() + got.unplaced.len(), tasks.len());
    }
}

#[test]
fn uneven_services_are_those_the_node_could_even_out() {
    let mut st = ClusterState::default();
    for id in ["a", "b", "c"] {
        st.nodes.insert(id.into(), node(id));
    }
    let mut east = node("e");
    east.labels.insert("zone".into(), "east".into());
    st.nodes.insert("e".into(), east.clone());
    let service = |name: &str, constraint: Option<&str>| {
        let mut spec = ServiceSpec::new(name, "x");
        if let Some(c) = constraint {
            spec.placement.constraints.push(c.into());
        }
        skein_protocol::Service {
            id: name.into(),
            spec,
            previous_spec: None,
            version: 1,
            update_status: None,
            created_at: 0,
            updated_at: 0,
        }
    };
    for (name, c) in [
        ("web", None),
        ("west", Some("node.labels.zone!=east")),
        ("even", None),
    ] {
        let s = service(name, c);
        st.services.insert(s.id.clone(), s);
    }
    let mut n = 0;
    let mut put = |st: &mut ClusterState, svc: &str, on: &str, k: usize| {
        for _ in 0..k {
            n += 1;
            let mut t = task(&format!("t{n}"), svc, ServiceSpec::new(svc, "x"));
            t.node_id = Some(on.into());
            t.status.state = TaskState::Running;
            st.tasks.insert(t.id.clone(), t);
        }
    };
    // web: 2, 2, 2 and none on e; west: the same but e cannot run it;
    // even: 1 on each of the four.
    for on in ["a", "b", "c"] {
        put(&mut st, "web", on, 2);
        put(&mut st, "west", on, 2);
        put(&mut st, "even", on, 1);
    }
    put(&mut st, "even", "e", 1);
    let names: Vec<&str> = uneven_services(&st, &east)
        .iter()
        .map(|s| s.spec.name.as_str())
        .collect();
    assert_eq!(names, vec!["web"]);
}
