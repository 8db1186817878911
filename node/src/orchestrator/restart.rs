//! Restart policy: whether and when a finished task's slot gets a new task.
//! Pure: takes the finished task, the policy and `now`, returns a decision.
//! Semantics follow Swarm: condition `any` restarts every exit, `on-failure`
//! only non-zero exits (and failures to start), `none` never; `max_attempts`
//! counts restarts inside `window` (0: ever); the new task starts `delay`
//! after the old one finished.

use skein_protocol::{Millis, RestartCondition, RestartPolicy, Task, TaskState};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Create the replacement now; `restarts` is its restart history.
    Now { restarts: Vec<Millis> },
    /// Not before this time.
    At(Millis),
    /// The policy says this slot stays empty.
    Never,
}

/// `finished` is the last task of a slot, in a terminal state it reached by
/// itself (not shut down by the orchestrator).
pub fn decide(finished: &Task, policy: &RestartPolicy, now: Millis) -> RestartDecision {
    let failed = match finished.status.state {
        TaskState::Complete => finished.status.exit_code.unwrap_or(0) != 0,
        _ => true,
    };
    let wanted = match policy.condition {
        RestartCondition::None => false,
        RestartCondition::OnFailure => failed,
        RestartCondition::Any => true,
    };
    if !wanted {
        return RestartDecision::Never;
    }
    let window = policy.window.as_millis();
    let recent: Vec<Millis> = finished
        .restarts
        .iter()
        .copied()
        .filter(|&t| window == 0 || now.saturating_sub(t) < window)
        .collect();
    if policy.max_attempts > 0 && recent.len() as u64 >= policy.max_attempts {
        return RestartDecision::Never;
    }
    let ended = finished
        .status
        .finished_at
        .unwrap_or(finished.status.timestamp);
    let due = ended.saturating_add(policy.delay.as_millis());
    if now < due {
        return RestartDecision::At(due);
    }
    let mut restarts = recent;
    restarts.push(now);
    RestartDecision::Now { restarts }
}

/// For `service ps`: why the slot of `finished` (its newest task) has no
/// new task, or when it will. None when a replacement is due now.
pub fn explain(finished: &Task, policy: &RestartPolicy, now: Millis) -> Option<String> {
    match decide(finished, policy, now) {
        RestartDecision::Now { .. } => None,
        RestartDecision::At(at) => Some(format!(
            "restarting in {}",
            skein_protocol::Dur::from_secs(at.saturating_sub(now).div_ceil(1000))
        )),
        RestartDecision::Never => Some(match policy.condition {
            RestartCondition::None => "not restarted: restart condition is none".to_string(),
            RestartCondition::OnFailure if finished.status.state == TaskState::Complete => {
                "not restarted: it completed and the restart condition is on-failure".to_string()
            }
            _ => format!(
                "not restarted: restart_policy.max_attempts ({}) reached{}",
                policy.max_attempts,
                if policy.window.is_zero() {
                    String::new()
                } else {
                    format!(" within the {} window", policy.window)
                }
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_protocol::{Dur, ServiceSpec, TaskStatus};

    fn ended(state: TaskState, code: i32, at: Millis, restarts: Vec<Millis>) -> Task {
        Task {
            id: "t".into(),
            service_id: "s".into(),
            service_name: "web".into(),
            slot: Some(1),
            node_id: None,
            spec_version: 1,
            spec: ServiceSpec::new("web", "sleep"),
            desired_state: TaskState::Running,
            status: TaskStatus {
                state,
                exit_code: Some(code),
                finished_at: Some(at),
                timestamp: at,
                ..Default::default()
            },
            created_at: 0,
            restarts,
        }
    }

    fn policy(condition: RestartCondition, max: u64, window: u64) -> RestartPolicy {
        RestartPolicy {
            condition,
            delay: Dur::from_secs(5),
            max_attempts: max,
            window: Dur::from_millis(window),
        }
    }

    #[test]
    fn any_restarts_after_the_delay() {
        let t = ended(TaskState::Complete, 0, 1000, vec![]);
        let p = policy(RestartCondition::Any, 0, 0);
        assert_eq!(decide(&t, &p, 2000), RestartDecision::At(6000));
        assert_eq!(
            decide(&t, &p, 6000),
            RestartDecision::Now {
                restarts: vec![6000]
            }
        );
    }

    #[test]
    fn on_failure_skips_clean_exits() {
        let p = policy(RestartCondition::OnFailure, 0, 0);
        assert_eq!(
            decide(&ended(TaskState::Complete, 0, 0, vec![]), &p, 10_000),
            RestartDecision::Never
        );
        assert!(matches!(
            decide(&ended(TaskState::Failed, 1, 0, vec![]), &p, 10_000),
            RestartDecision::Now { .. }
        ));
    }

    #[test]
    fn none_never_restarts() {
        let p = policy(RestartCondition::None, 0, 0);
        assert_eq!(
            decide(&ended(TaskState::Failed, 1, 0, vec![]), &p, 10_000),
            RestartDecision::Never
        );
    }

    #[test]
    fn max_attempts_counts_inside_the_window() {
        let p = policy(RestartCondition::Any, 2, 0);
        let t = ended(TaskState::Failed, 1, 100_000, vec![10, 20]);
        assert_eq!(decide(&t, &p, 200_000), RestartDecision::Never);
        let p = policy(RestartCondition::Any, 2, 60_000);
        // Both earlier restarts are outside the 60 s window: allowed again.
        assert_eq!(
            decide(&t, &p, 200_000),
            RestartDecision::Now {
                restarts: vec![200_000]
            }
        );
    }
}
