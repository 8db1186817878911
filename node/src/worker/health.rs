//! Health checks with compose semantics, for tasks whose runtime does not
//! check health itself (the process runtime). Pure: [`Tracker`] takes probe
//! results and times and says whether the task is starting, healthy or
//! unhealthy; the worker runs the probes ([`probe`]) and acts on the verdict.
//!
//! Semantics (Docker's): the first probe runs `interval` after the task
//! started, then every `interval`; a probe fails when its command exits
//! non-zero or outlives `timeout`; `retries` consecutive failures make the
//! task unhealthy, except that failures inside `start_period` do not count
//! (a success there makes it healthy at once). Healthy and unhealthy are
//! sticky only in the sense that the next probes can change them.

use skein_protocol::task::Health;
use skein_protocol::HealthCheck;
use std::time::Duration;

/// The check to run, or None for no check (absent or `["NONE"]`).
pub fn effective(hc: Option<&HealthCheck>) -> Option<&HealthCheck> {
    hc.filter(|h| h.test.first().map(String::as_str) != Some("NONE"))
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tracker {
    interval_ms: u64,
    start_period_ms: u64,
    retries: u32,
    started_at: u64,
    next_probe_at: u64,
    failures: u32,
    status: Health,
    /// Output of the last failing probe, for the task's error.
    pub last_failure: String,
}

impl Tracker {
    pub fn new(hc: &HealthCheck, started_at: u64) -> Tracker {
        let interval_ms = hc.interval.as_millis().max(1);
        Tracker {
            interval_ms,
            start_period_ms: hc.start_period.as_millis(),
            retries: hc.retries.max(1),
            started_at,
            next_probe_at: started_at + interval_ms,
            failures: 0,
            status: Health::Starting,
            last_failure: String::new(),
        }
    }

    pub fn status(&self) -> Health {
        self.status
    }

    /// Whether a probe should start now.
    pub fn due(&self, now: u64) -> bool {
        now >= self.next_probe_at
    }

    pub fn next_probe_at(&self) -> u64 {
        self.next_probe_at
    }

    /// Records a probe that started at `began` and finished at `now`.
    pub fn record(&mut self, ok: bool, output: &str, began: u64, now: u64) -> Health {
        self.next_probe_at = now + self.interval_ms;
        if ok {
            self.failures = 0;
            self.status = Health::Healthy;
            return self.status;
        }
        self.last_failure = output.trim().chars().take(200).collect();
        let in_start_period = began < self.started_at + self.start_period_ms;
        if in_start_period && self.status == Health::Starting {
            return self.status;
        }
        self.failures += 1;
        if self.failures >= self.retries {
            self.status = Health::Unhealthy;
        }
        self.status
    }
}

/// What a probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub ok: bool,
    pub output: String,
}

/// Runs one probe of `hc` with the task's environment: `CMD` execs the
/// program, `CMD-SHELL` runs `sh -c`; killed after the timeout.
pub async fn probe(
    hc: &HealthCheck,
    env: &std::collections::BTreeMap<String, String>,
    dir: Option<&str>,
) -> ProbeResult {
    let argv: Vec<String> = match hc.test.first().map(String::as_str) {
        Some("CMD") => hc.test[1..].to_vec(),
        Some("CMD-SHELL") => vec!["sh".into(), "-c".into(), hc.test[1..].join(" ")],
        _ => {
            return ProbeResult {
                ok: true,
                output: String::new(),
            }
        }
    };
    let Some((prog, args)) = argv.split_first() else {
        return ProbeResult {
            ok: false,
            output: "empty health check command".into(),
        };
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .envs(env)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let timeout = Duration::from_millis(hc.timeout.as_millis().max(1));
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let ok = out.status.success();
            if !ok && text.trim().is_empty() {
                text = match out.status.code() {
                    Some(c) => format!("exit code {c}"),
                    None => "killed by a signal".into(),
                };
            }
            ProbeResult { ok, output: text }
        }
        Ok(Err(e)) => ProbeResult {
            ok: false,
            output: format!("cannot run {prog:?}: {e}"),
        },
        Err(_) => ProbeResult {
            ok: false,
            output: format!("timed out after {}", hc.timeout),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_protocol::Dur;

    fn hc(retries: u32, start_period: u64) -> HealthCheck {
        HealthCheck {
            test: vec!["CMD-SHELL".into(), "true".into()],
            interval: Dur::from_secs(1),
            timeout: Dur::from_secs(1),
            retries,
            start_period: Dur::from_millis(start_period),
        }
    }

    #[test]
    fn first_probe_waits_one_interval() {
        let t = Tracker::new(&hc(3, 0), 10_000);
        assert!(!t.due(10_500));
        assert!(t.due(11_000));
    }

    #[test]
    fn retries_consecutive_failures_make_it_unhealthy() {
        let mut t = Tracker::new(&hc(2, 0), 0);
        assert_eq!(t.record(false, "no", 1000, 1000), Health::Starting);
        assert_eq!(t.record(true, "", 2000, 2000), Health::Healthy);
        assert_eq!(t.record(false, "no", 3000, 3000), Health::Healthy);
        assert_eq!(t.record(false, "down", 4000, 4000), Health::Unhealthy);
        assert_eq!(t.last_failure, "down");
        assert_eq!(t.next_probe_at(), 5000);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let mut t = Tracker::new(&hc(1, 5000), 0);
        for at in [1000, 2000, 3000, 4000] {
            assert_eq!(t.record(false, "booting", at, at), Health::Starting);
        }
        assert_eq!(t.record(false, "still", 6000, 6000), Health::Unhealthy);
        let mut t = Tracker::new(&hc(1, 5000), 0);
        assert_eq!(t.record(true, "", 1000, 1000), Health::Healthy);
    }

    #[test]
    fn none_means_no_check() {
        let mut h = hc(1, 0);
        assert!(effective(Some(&h)).is_some());
        h.test = vec!["NONE".into()];
        assert!(effective(Some(&h)).is_none());
        assert!(effective(None).is_none());
    }

    #[tokio::test]
    async fn probes_run_commands_with_a_timeout() {
        let env = Default::default();
        let ok = probe(&hc(1, 0), &env, None).await;
        assert!(ok.ok);
        let mut h = hc(1, 0);
        h.test = vec![
            "CMD".into(),
            "sh".into(),
            "-c".into(),
            "echo sick; exit 1".into(),
        ];
        let bad = probe(&h, &env, None).await;
        assert!(!bad.ok);
        assert_eq!(bad.output.trim(), "sick");
        h.test = vec!["CMD-SHELL".into(), "sleep 5".into()];
        h.timeout = Dur::from_millis(100);
        let slow = probe(&h, &env, None).await;
        assert!(!slow.ok);
        assert!(slow.output.contains("timed out"), "{}", slow.output);
        h.test = vec!["CMD".into(), "/no/such/probe".into()];
        assert!(!probe(&h, &env, None).await.ok);
    }
}
