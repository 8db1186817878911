//! The worker's session (node side): one session with one manager at a
//! time, over the cluster transport, on one kept stream (a [`Channel`]).
//! Each turn ([`SessionRequest`]) is the node's heartbeat and says which
//! assignments it holds; the answer brings only what changed. Status
//! reports go to the same manager, which batches them into Raft.
//!
//! Invariants:
//! - the assignments are kept in a small local file (`<data-dir>/assignments.bin`,
//!   written whole, fsynced, renamed into place) and handed to the worker at
//!   start, before any manager answers: the node runs its work across its
//!   own reboot with no manager reachable, and only what was assigned to it;
//! - when the session's manager does not answer (a failed or timed-out
//!   turn, a refusal), the next turn goes to the next manager it knows at
//!   once: a worker is back on a session within the turn timeout (hold + 1 s,
//!   plus 3 s when the turn needs a new connection);
//! - the managers it knows come from its join, then from every answer (and
//!   are kept in the same file);
//! - sessions go to managers other than the Raft leader when there are any
//!   (the leader's time is for Raft): a worker whose manager is or becomes
//!   the leader moves to a random other one, at once when it learns the
//!   list, else with a small chance each turn (so a failover does not move
//!   the whole fleet in the same second).

use crate::net::{Channel, Keeper, NetHandle};
use serde::{Deserialize, Serialize};
use skein_protocol::wire::{
    managers_digest, task_digest, Assignments, ManagerInfo, SessionReply, SessionRequest,
    StatusReport, WireMessage, WireReply,
};
use skein_protocol::{Command, NodeId, NodeRole, Task, TaskId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// What a worker keeps on disk between runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    /// The manager's applied index of the last answer.
    pub index: u64,
    pub managers: Vec<ManagerInfo>,
    pub tasks: Vec<Task>,
}

impl Kept {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("assignments.bin")
    }

    /// The kept state, or an empty one (none yet, or unreadable: logged).
    pub fn load(data_dir: &Path) -> Kept {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => skein_protocol::codec::decode(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "kept assignments unreadable: waiting for a manager");
                Kept::default()
            }),
            Err(_) => Kept::default(),
        }
    }

    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let bytes = skein_protocol::codec::encode(self)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        let tmp = data_dir.join("assignments.bin.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, Self::path(data_dir))
    }
}

/// A random start in the list of managers: workers spread their sessions.
/// Which manager to ask next instead of `current` when that one is the
/// leader: a non-leader picked by `r` (random), else `current`.
pub fn off_leader(managers: &[ManagerInfo], current: usize, r: usize) -> usize {
    let n = managers.len();
    if n == 0 || !managers[current % n].leader {
        return current;
    }
    let others: Vec<usize> = (0..n).filter(|i| !managers[*i].leader).collect();
    if others.is_empty() {
        current
    } else {
        others[r % others.len()]
    }
}

/// Which manager to ask after `failed` did not answer: a random one of the
/// others that does not lead, else any other, else `failed` itself (the
/// only one known). Straight to a non-leader: going to the leader first
/// would move the session twice (and cost two handshakes) when a manager
/// holding a thousand sessions dies.
pub fn after_failure(managers: &[ManagerInfo], failed: usize, r: usize) -> usize {
    let n = managers.len();
    if n <= 1 {
        return failed;
    }
    let failed = failed % n;
    let others: Vec<usize> = (0..n).filter(|i| *i != failed).collect();
    let followers: Vec<usize> = others
        .iter()
        .copied()
        .filter(|i| !managers[*i].leader)
        .collect();
    let pool = if followers.is_empty() {
        &others
    } else {
        &followers
    };
    pool[r % pool.len()]
}

/// How much longer a turn that opens a new channel may take than one on a
/// kept channel (see [`SessionClient::run`]).
const CONNECT_ALLOWANCE: Duration = Duration::from_secs(3);

/// The pause after `failures` failed turns in a row with `managers`
/// managers known: none until every manager failed in the round (the next
/// one is asked at once: a failover must not wait), then a random time up
/// to 250 ms, doubled with each round up to 2 s ("full jitter": sessions
/// that fail together come back spread out; before, a fleet that lost its
/// managers came back in the same fixed steps, and at 5,000 sessions each
/// wave of handshakes timed out the next). `r`: a random number.
pub fn backoff(failures: u32, managers: usize, r: u64) -> Option<Duration> {
    let n = managers.max(1) as u32;
    if failures == 0 || !failures.is_multiple_of(n) {
        return None;
    }
    let cap_ms = 250u64 << (failures / n - 1).min(3);
    Some(Duration::from_millis(r % (cap_ms + 1)))
}

/// A worker on the leader's session leaves it with this chance (1 in N) at
/// each turn.
const LEAVE_LEADER_ONE_IN: usize = 8;

fn spread() -> usize {
    (crate::util::random_u64() % 4096) as usize
}

/// What a session tells the rest of the node.
#[derive(Clone)]
pub struct SessionWatch {
    /// A manager answered within the last two heartbeat periods.
    pub online: watch::Receiver<bool>,
    /// The managers this worker knows, ready ones first.
    pub managers: watch::Receiver<Vec<ManagerInfo>>,
    /// This node's role as the cluster has it (from the last answer).
    pub role: watch::Receiver<NodeRole>,
    /// The peer id of the manager that gave the last answer (empty before
    /// the first): whom the session is held with.
    pub serving: watch::Receiver<String>,
}

/// Proposes `cmd` (about this node only: see cluster::authority) through
/// the first manager in `managers` that answers; it forwards to the leader.
/// The request id makes a repeat harmless.
pub async fn propose_via(
    net: &NetHandle,
    managers: &[ManagerInfo],
    origin: u64,
    cmd: Command,
) -> Result<(), String> {
    let cmd = Command::Once {
        request: skein_protocol::command::RequestId {
            origin,
            seq: crate::util::random_u64() >> 1,
        },
        cmd: Box::new(cmd),
    };
    let mut last = "no manager known".to_string();
    // A manager may be changing its role or catching up: go round the
    // managers for a while (the request id makes a repeat harmless).
    let deadline = tokio::time::Instant::now() + PROPOSE_DEADLINE;
    loop {
        for m in managers {
            net.learn(&m.peer_id, &m.addr);
            match net
                .request(&m.peer_id, WireMessage::Propose(Box::new(cmd.clone())))
                .await
            {
                Ok(WireReply::Applied { .. }) => return Ok(()),
                Ok(WireReply::Error(e)) if e.starts_with("refused") => return Err(e),
                Ok(WireReply::Refused { message, .. }) => return Err(message),
                Ok(WireReply::Error(e)) => last = format!("{}: {e}", m.name),
                Ok(other) => last = format!("{}: unexpected answer {other:?}", m.name),
                Err(e) => last = format!("{}: {e}", m.name),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// How long [`propose_via`] keeps trying.
const PROPOSE_DEADLINE: Duration = Duration::from_secs(10);

pub struct SessionClient {
    node_id: NodeId,
    net: NetHandle,
    data_dir: PathBuf,
    kept: Kept,
    tasks: BTreeMap<TaskId, (Task, u64)>,
    current: usize,
    wait_ms: u64,
    sequence: u64,
    assignments: mpsc::Sender<Assignments>,
    reports: mpsc::Receiver<StatusReport>,
    online: watch::Sender<bool>,
    managers_tx: watch::Sender<Vec<ManagerInfo>>,
    role: watch::Sender<NodeRole>,
    serving: watch::Sender<String>,
    last_answer: Option<tokio::time::Instant>,
    /// The manager kept connected for the session.
    kept_peer: Option<String>,
    /// The session's kept channel to that manager (none before the first
    /// turn and after a failed one).
    chan: Option<Channel>,
    /// [`managers_digest`] of `kept.managers` (sent on every turn).
    managers_digest: u64,
    /// Status reports to [`send_reports`] (started by `run`).
    report_tx: mpsc::Sender<(String, String, StatusReport)>,
    report_rx: Option<mpsc::Receiver<(String, String, StatusReport)>>,
}

impl SessionClient {
    /// `managers`: whom to ask first (from the join, or the state); the kept
    /// file's list is added to them.
    pub fn new(
        node_id: NodeId,
        net: NetHandle,
        data_dir: PathBuf,
        managers: Vec<ManagerInfo>,
        assignments: mpsc::Sender<Assignments>,
        reports: mpsc::Receiver<StatusReport>,
    ) -> (SessionClient, SessionWatch) {
        let mut kept = Kept::load(&data_dir);
        for m in managers.into_iter().rev() {
            kept.managers.retain(|k| k.peer_id != m.peer_id);
            kept.managers.insert(0, m);
        }
        let tasks = kept
            .tasks
            .iter()
            .map(|t| (t.id.clone(), (t.clone(), task_digest(t))))
            .collect();
        let (online, online_rx) = watch::channel(false);
        let (managers_tx, managers_rx) = watch::channel(kept.managers.clone());
        let (role, role_rx) = watch::channel(NodeRole::Worker);
        let (serving, serving_rx) = watch::channel(String::new());
        let digest = managers_digest(&kept.managers);
        let (report_tx, report_rx) = mpsc::channel(64);
        let mut client = SessionClient {
            node_id,
            net,
            data_dir,
            kept,
            tasks,
            // Spread the fleet's sessions over the managers.
            current: spread(),
            wait_ms: 1000,
            sequence: 0,
            assignments,
            reports,
            online,
            managers_tx,
            role,
            serving,
            last_answer: None,
            kept_peer: None,
            chan: None,
            managers_digest: digest,
            report_tx,
            report_rx: Some(report_rx),
        };
        client.move_off_leader();
        (
            client,
            SessionWatch {
                online: online_rx,
                managers: managers_rx,
                role: role_rx,
                serving: serving_rx,
            },
        )
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        if let Some(rx) = self.report_rx.take() {
            tokio::spawn(send_reports(self.net.clone(), rx));
        }
        if !self.kept.tasks.is_empty() {
            tracing::info!(
                tasks = self.kept.tasks.len(),
                "running the kept assignments until a manager answers"
            );
            self.push().await;
        }
        let mut failures = 0u32;
        loop {
            let Some(ManagerInfo {
                name: manager,
                peer_id: peer,
                addr,
                ..
            }) = self.pick()
            else {
                tracing::warn!("no manager known to hold a session with: waiting");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => return,
                }
            };
            // The session's manager is the one manager this worker keeps
            // connected: a fleet's connections spread over the managers
            // instead of every worker holding one to each.
            if self.kept_peer.as_deref() != Some(peer.as_str()) {
                if let Some(old) = self.kept_peer.take() {
                    self.net.release(&old, Keeper::Session);
                }
                self.net.keep(&peer, &addr, Duration::ZERO, Keeper::Session);
                self.kept_peer = Some(peer.clone());
            }
            let req = SessionRequest {
                node_id: self.node_id.clone(),
                have: self
                    .tasks
                    .iter()
                    .map(|(id, (_, d))| (id.clone(), *d))
                    .collect(),
                // The first turn with a manager is answered at once: the
                // worker learns its role and the managers right away.
                wait_ms: if failures > 0 || self.last_answer.is_none() {
                    0
                } else {
                    self.wait_ms
                },
                managers: self.managers_digest,
            };
            // The turn goes on the session's kept channel (one stream for
            // the whole session, not one per turn); a failed or timed-out
            // turn drops it, and the next turn opens a new one.
            let mut timeout = Duration::from_millis(self.wait_ms + 1000);
            if self.chan.as_ref().is_none_or(|c| c.peer() != peer) {
                // A new channel may need a connection first: a manager
                // taking over a failed one's sessions does all their
                // handshakes at once. Giving up on it after the usual turn
                // timeout threw that work away and sent the session to the
                // leader, which then did the same handshake again.
                timeout += CONNECT_ALLOWANCE;
            }
            let chan = kept_or_new(&self.net, self.chan.take(), &peer, &addr);
            let turn = tokio::time::timeout(timeout, async move {
                let mut chan = chan?;
                let r = chan.call(&WireMessage::Session(Box::new(req))).await;
                r.map(|reply| (reply, chan))
            });
            tokio::pin!(turn);
            // Offline is noticed when it falls due, not by polling: an idle
            // worker wakes for its turn and nothing else.
            let offline = tokio::time::sleep_until(self.offline_at());
            tokio::pin!(offline);
            let answer = loop {
                tokio::select! {
                    r = &mut turn => break r,
                    Some(report) = self.reports.recv() => self.send_status(&peer, &addr, report),
                    _ = &mut offline, if *self.online.borrow() => self.check_online(),
                    _ = shutdown.changed() => return,
                }
            };
            match answer {
                Ok(Ok((WireReply::Session(reply), chan))) => {
                    self.chan = Some(chan);
                    if failures > 0 {
                        tracing::info!(%manager, "session held");
                    }
                    failures = 0;
                    self.last_answer = Some(tokio::time::Instant::now());
                    self.online.send_replace(true);
                    self.serving.send_if_modified(|s| {
                        let new = *s != peer;
                        if new {
                            s.clone_from(&peer);
                        }
                        new
                    });
                    self.apply(*reply).await;
                }
                other => {
                    let why = match other {
                        Ok(Ok((WireReply::Error(e), _))) => e,
                        Ok(Ok((r, _))) => format!("unexpected answer {r:?}"),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("no answer within {timeout:?}"),
                    };
                    failures += 1;
                    self.check_online();
                    tracing::info!(%manager, reason = %why, "session turn failed: trying the next manager");
                    // After a first failure, a random non-leader other than
                    // this one; after more, round the list (every manager
                    // gets its turn).
                    self.current = if failures == 1 {
                        after_failure(&self.kept.managers, self.current, spread())
                    } else {
                        self.current.wrapping_add(1)
                    };
                    // Every manager failed in a row: wait a random while,
                    // longer each round, so that a fleet that lost its
                    // managers does not come back to them all at once.
                    let n = self.kept.managers.len();
                    if let Some(pause) = backoff(failures, n, crate::util::random_u64()) {
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                }
            }
        }
    }

    /// Offline once no manager answered for two heartbeat periods (an
    /// answer comes at least once a period while a session is held).
    fn check_online(&self) {
        let online = self
            .last_answer
            .is_some_and(|_| tokio::time::Instant::now() < self.offline_at());
        self.online
            .send_if_modified(|o| std::mem::replace(o, online) != online);
    }

    /// When this worker counts as offline if no answer comes before.
    fn offline_at(&self) -> tokio::time::Instant {
        let limit = Duration::from_millis(2 * self.wait_ms);
        self.last_answer
            .map_or_else(tokio::time::Instant::now, |t| t + limit)
    }

    /// When the session's manager is the leader, the next turn goes to a
    /// random other manager (if any).
    fn move_off_leader(&mut self) {
        self.current = off_leader(&self.kept.managers, self.current, spread());
    }

    fn pick(&self) -> Option<ManagerInfo> {
        let n = self.kept.managers.len();
        (n > 0).then(|| self.kept.managers[self.current % n].clone())
    }

    /// Status reports go to the session's manager, without waiting for the
    /// held turn; a lost report is sent again by the worker (it compares
    /// what it observes with the assignments' recorded status).
    fn send_status(&self, peer: &str, addr: &str, report: StatusReport) {
        if let Err(e) = self
            .report_tx
            .try_send((peer.to_string(), addr.to_string(), report))
        {
            tracing::debug!(error = %e, "status report dropped; the worker will report again");
        }
    }

    async fn apply(&mut self, reply: SessionReply) {
        self.wait_ms = reply.wait_ms.clamp(100, 60_000);
        self.role
            .send_if_modified(|r| std::mem::replace(r, reply.role) != reply.role);
        let mut changed = !reply.changed.is_empty() || !reply.removed.is_empty();
        for id in &reply.removed {
            self.tasks.remove(id);
        }
        for t in reply.changed {
            let d = task_digest(&t);
            self.tasks.insert(t.id.clone(), (t, d));
        }
        if !reply.managers.is_empty() && reply.managers != self.kept.managers {
            // Keep asking the same manager while it is in the list (and not
            // the leader).
            let now = self.pick().map(|m| m.peer_id);
            self.kept.managers = reply.managers;
            self.current = now
                .and_then(|p| self.kept.managers.iter().position(|m| m.peer_id == p))
                .unwrap_or_else(spread);
            self.managers_tx.send_replace(self.kept.managers.clone());
            self.managers_digest = managers_digest(&self.kept.managers);
            self.move_off_leader();
            changed = true;
        } else if spread().is_multiple_of(LEAVE_LEADER_ONE_IN) {
            self.move_off_leader();
        }
        // The manager hands this session to one holding fewer.
        if let Some(i) = self
            .kept
            .managers
            .iter()
            .position(|m| !reply.move_to.is_empty() && m.peer_id == reply.move_to && !m.leader)
        {
            tracing::debug!(to = %self.kept.managers[i].name, "session handed over");
            self.current = i;
        }
        // The first answer is pushed even when empty: the worker acts only
        // once it has a set.
        if changed || self.sequence == 0 {
            self.kept.index = reply.index;
            self.kept.tasks = self.tasks.values().map(|(t, _)| t.clone()).collect();
            if let Err(e) = self.kept.save(&self.data_dir) {
                tracing::warn!(error = %e, "cannot keep the assignments on disk");
            }
            self.push().await;
        }
    }

    async fn push(&mut self) {
        self.sequence += 1;
        let _ = self
            .assignments
            .send(Assignments {
                node_id: self.node_id.clone(),
                sequence: self.sequence,
                tasks: self.tasks.values().map(|(t, _)| t.clone()).collect(),
            })
            .await;
    }
}

/// `kept` when it goes to `peer`, else a new channel to it.
fn kept_or_new(
    net: &NetHandle,
    kept: Option<Channel>,
    peer: &str,
    addr: &str,
) -> Result<Channel, crate::net::NetError> {
    match kept {
        Some(c) if c.peer() == peer => Ok(c),
        _ => net.channel(peer, addr),
    }
}

/// How long one status report may take before its channel is dropped.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends a session's status reports, one at a time, on a kept channel of
/// their own to the session's manager (reports queued meanwhile for the
/// same manager go as one). A new request stream per report cost the
/// manager a negotiation in its swarm task for each: thousands at once in
/// a global service's rollout. Ends when the session does.
async fn send_reports(net: NetHandle, mut rx: mpsc::Receiver<(String, String, StatusReport)>) {
    let mut chan: Option<Channel> = None;
    while let Some((peer, addr, mut report)) = rx.recv().await {
        let mut later = None;
        while let Ok(more) = rx.try_recv() {
            if more.0 == peer {
                report.updates.extend(more.2.updates);
            } else {
                later = Some(more);
                break;
            }
        }
        for (peer, addr, report) in std::iter::once((peer, addr, report)).chain(later) {
            let mut c = match kept_or_new(&net, chan.take(), &peer, &addr) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "status report not sent");
                    continue;
                }
            };
            match tokio::time::timeout(REPORT_TIMEOUT, c.call(&WireMessage::Status(report))).await {
                Ok(Ok(WireReply::Ack)) => chan = Some(c),
                Ok(Ok(other)) => {
                    tracing::debug!(answer = ?other, "status report not taken");
                    chan = Some(c);
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "status report not sent"),
                Err(_) => tracing::debug!("status report not answered in time"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, leader: bool) -> ManagerInfo {
        ManagerInfo {
            name: name.into(),
            peer_id: name.into(),
            leader,
            ..Default::default()
        }
    }

    #[test]
    fn sessions_leave_the_leader_for_the_other_managers() {
        let ms = vec![m("a", false), m("b", true), m("c", false)];
        // On the leader: to a or c, spread by the random pick.
        let picks: std::collections::BTreeSet<usize> =
            (0..10).map(|r| off_leader(&ms, 1, r)).collect();
        assert_eq!(picks.into_iter().collect::<Vec<_>>(), vec![0, 2]);
        // Elsewhere: stays (indexes wrap like `pick`).
        assert_eq!(off_leader(&ms, 0, 5), 0);
        assert_eq!(off_leader(&ms, 5, 1), 5);
        // A lone manager that leads keeps its sessions.
        assert_eq!(off_leader(&[m("a", true)], 0, 3), 0);
        assert_eq!(off_leader(&[], 4, 3), 4);
    }

    #[test]
    fn a_round_of_failed_turns_backs_off_randomly_up_to_two_seconds() {
        assert_eq!(backoff(0, 3, 7), None);
        // Not every manager tried yet: the next one at once.
        assert_eq!(backoff(1, 3, 7), None);
        assert_eq!(backoff(2, 3, 7), None);
        assert!(backoff(3, 3, u64::MAX).is_some_and(|d| d <= Duration::from_millis(250)));
        assert_eq!(backoff(6, 3, 400), Some(Duration::from_millis(400)));
        // One manager: every failure is a round.
        assert!(backoff(1, 1, u64::MAX).is_some_and(|d| d <= Duration::from_millis(250)));
        assert!(backoff(1, 0, u64::MAX).is_some());
        for f in 1..60 {
            if let Some(d) = backoff(f, 3, u64::MAX) {
                assert!(d <= Duration::from_secs(2), "{f}: {d:?}");
            }
        }
        // Spread: different draws, different pauses.
        assert_ne!(backoff(12, 3, 1), backoff(12, 3, 2000));
    }

    #[test]
    fn after_a_failure_the_session_goes_to_another_non_leader() {
        let ms = vec![m("a", false), m("b", true), m("c", false), m("d", false)];
        // a failed: c or d (not the leader b, not a again), spread by r.
        let picks: std::collections::BTreeSet<usize> =
            (0..10).map(|r| after_failure(&ms, 0, r)).collect();
        assert_eq!(picks.into_iter().collect::<Vec<_>>(), vec![2, 3]);
        // Only the leader is left besides the failed one: the leader.
        let two = vec![m("a", false), m("b", true)];
        assert_eq!(after_failure(&two, 0, 7), 1);
        // The leader failed: any other (indexes wrap like `pick`).
        assert_eq!(after_failure(&two, 3, 5), 0);
        // A lone manager is asked again.
        assert_eq!(after_failure(&[m("a", false)], 0, 1), 0);
        assert_eq!(after_failure(&[], 2, 1), 2);
    }
}
