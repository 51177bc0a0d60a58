//! The faults and their schedule. Every fault is injected through Docker (or, for a change of
//! the replicated limits, the admin endpoint), held for a random time, healed, and followed by
//! a wait (polling, with a deadline) until every node answers `/readyz` again; the next fault
//! comes 1 to 3 s later. Kinds are drawn in rounds, each round a shuffle of every kind, so a run
//! of N faults covers every kind once N reaches the number of kinds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_testkit::strict::{Held, Release, Stage};
use starling_testkit::StrictClient;

use crate::compose::{say, Cluster, NODES};
use crate::workload::Workload;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    /// `docker kill -s KILL` of a random node, `docker start` later.
    KillRandom,
    /// The same, of the Raft leader.
    KillLeader,
    /// The same, of the node a publisher is connected to.
    KillPublisherNode,
    /// The same, of the node a subscriber is connected to.
    KillSubscriberNode,
    /// The same, of the node holding a QoS 2 flow between PUBREC and PUBREL (publisher side:
    /// PUBREC read, PUBREL not written; subscriber side: PUBREC written, PUBREL not read).
    KillBetweenPubRecAndPubRel,
    /// The same, between PUBREL and PUBCOMP (publisher: PUBREL written, PUBCOMP not read;
    /// subscriber: PUBREL read, PUBCOMP not written).
    KillBetweenPubRelAndPubComp,
    /// The leader taken off the network (`docker network disconnect`), then reconnected.
    IsolateLeader,
    /// A follower taken off the network, then reconnected.
    IsolateFollower,
    /// `docker pause` of a node for longer than the election timeout, then `unpause`.
    PauseNode,
    /// `docker kill -s KILL` of every node at once, then `docker start` of every node.
    RestartAll,
    /// `docker stop` (SIGTERM, then the grace period) of a random node, `docker start` later.
    RestartGraceful,
    /// The same, of the Raft leader (which hands its leadership over as it stops).
    RestartGracefulLeader,
    /// `PUT /cluster/limits` on a random node: `max_inflight` alternately 16 and 32, a
    /// replicated limit changed while messages flow.
    LimitsChange,
}

/// Every kind.
pub(crate) const ALL: [Kind; 13] = [
    Kind::KillRandom,
    Kind::KillLeader,
    Kind::KillPublisherNode,
    Kind::KillSubscriberNode,
    Kind::KillBetweenPubRecAndPubRel,
    Kind::KillBetweenPubRelAndPubComp,
    Kind::IsolateLeader,
    Kind::IsolateFollower,
    Kind::PauseNode,
    Kind::RestartAll,
    Kind::RestartGraceful,
    Kind::RestartGracefulLeader,
    Kind::LimitsChange,
];

impl Kind {
    /// Short name for the summary and the history.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::KillRandom => "kill-random",
            Kind::KillLeader => "kill-leader",
            Kind::KillPublisherNode => "kill-publisher-node",
            Kind::KillSubscriberNode => "kill-subscriber-node",
            Kind::KillBetweenPubRecAndPubRel => "kill-between-pubrec-pubrel",
            Kind::KillBetweenPubRelAndPubComp => "kill-between-pubrel-pubcomp",
            Kind::IsolateLeader => "partition-leader",
            Kind::IsolateFollower => "partition-follower",
            Kind::PauseNode => "pause",
            Kind::RestartAll => "restart-all",
            Kind::RestartGraceful => "restart-graceful",
            Kind::RestartGracefulLeader => "restart-graceful-leader",
            Kind::LimitsChange => "limits-change",
        }
    }
}

/// A fault injected.
#[derive(Clone, Debug)]
pub(crate) struct Injected {
    /// What.
    pub(crate) kind: Kind,
    /// Nodes hit (0-based: `starling-N`).
    pub(crate) nodes: Vec<usize>,
    /// Details (whose node, which QoS 2 stage).
    pub(crate) detail: String,
    /// When it was injected.
    pub(crate) at: Instant,
    /// When it was healed (node started, reconnected, unpaused).
    pub(crate) healed: Instant,
    /// From healing to every node ready.
    pub(crate) recovered: Duration,
    /// The fault could not be injected as meant (a Docker or admin call failed): what failed.
    /// The run goes on and fails at the end.
    pub(crate) failure: Option<String>,
}

pub(crate) use starling_testkit::Rng;

/// Every kind once, in random order.
pub(crate) fn round(rng: &mut Rng) -> Vec<Kind> {
    let mut v = ALL.to_vec();
    for i in (1..v.len()).rev() {
        let j = rng.range(0, i as u64) as usize;
        v.swap(i, j);
    }
    v
}

/// Runs cluster operations (docker, admin HTTP, polling) without stalling the runtime.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

/// How long after healing every node must be ready again.
const RECOVERY: Duration = Duration::from_secs(180);

/// Injects faults into `c` while `w` runs.
pub(crate) struct Chaos<'a> {
    c: &'a Cluster,
    w: &'a Workload,
    rng: Rng,
    start: Instant,
    /// Faults injected.
    pub(crate) log: Vec<Injected>,
    /// Aims at a QoS 2 stage that did not land in time (retried later).
    pub(crate) missed_aims: usize,
    /// The `max_inflight` the next limits change sets (alternately 16 and 32).
    next_inflight: usize,
}

/// The values of `max_inflight` a limits change alternates between: both far above what the
/// workload keeps in flight per subscriber after a failover, so that no queue fills.
const INFLIGHT_VALUES: [usize; 2] = [16, 32];

impl<'a> Chaos<'a> {
    pub(crate) fn new(c: &'a Cluster, w: &'a Workload, rng: Rng, start: Instant) -> Chaos<'a> {
        Chaos {
            c,
            w,
            rng,
            start,
            log: Vec::new(),
            missed_aims: 0,
            next_inflight: 0,
        }
    }

    /// The pause between two faults (the schedule).
    pub(crate) async fn gap(&mut self) {
        let d = self.rng.millis(1000, 3000);
        tokio::time::sleep(d).await;
    }

    /// How long a killed node stays down: mostly 1 to 6 s; one time in eight 11 to 14 s,
    /// beyond the leader's `node_down_secs` (10 s), so that its sessions are taken offline.
    fn down_time(&mut self) -> Duration {
        if self.rng.range(0, 7) == 0 {
            self.rng.millis(11_000, 14_000)
        } else {
            self.rng.millis(1000, 6000)
        }
    }

    fn node_of_client(&self, cl: &StrictClient) -> Option<usize> {
        cl.connected_to().and_then(|a| self.c.node_of(a))
    }

    fn leader(&mut self) -> usize {
        match blocking(|| self.c.leader()) {
            Some(l) => l,
            None => self.rng.range(0, NODES as u64 - 1) as usize,
        }
    }

    /// Injects one fault of `kind`, heals it and waits for the cluster to recover. `None` when
    /// an aimed kill did not find its QoS 2 stage in time (nothing was injected).
    pub(crate) async fn inject(&mut self, kind: Kind) -> Option<Injected> {
        let c = self.c;
        let at;
        let detail;
        let nodes: Vec<usize>;
        let healed;
        let mut failure = None;
        match kind {
            Kind::KillRandom
            | Kind::KillLeader
            | Kind::KillPublisherNode
            | Kind::KillSubscriberNode => {
                let (victim, what) = match kind {
                    Kind::KillLeader => {
                        let l = self.leader();
                        (l, format!("leader node {}", l + 1))
                    }
                    Kind::KillPublisherNode | Kind::KillSubscriberNode => {
                        let clients: Vec<Arc<StrictClient>> = if kind == Kind::KillPublisherNode {
                            self.w.publishers.clone()
                        } else {
                            // Persistent and clean subscribers alike.
                            self.w
                                .subscribers
                                .iter()
                                .chain(&self.w.clean)
                                .map(|(s, _)| s.clone())
                                .collect()
                        };
                        let cl = self.rng.pick(&clients);
                        match self.node_of_client(&cl) {
                            Some(n) => (n, format!("node of {}", cl.client_id())),
                            None => (
                                self.rng.range(0, NODES as u64 - 1) as usize,
                                format!("{} not connected: random node", cl.client_id()),
                            ),
                        }
                    }
                    _ => (
                        self.rng.range(0, NODES as u64 - 1) as usize,
                        "random node".to_string(),
                    ),
                };
                let down = self.down_time();
                at = Instant::now();
                blocking(|| c.kill(victim)).unwrap_or_else(|e| panic!("{e}"));
                tokio::time::sleep(down).await;
                healed = Instant::now();
                blocking(|| c.start_node(victim)).unwrap_or_else(|e| panic!("{e}"));
                detail = format!("{what}; down {:.1}s", down.as_secs_f64());
                nodes = vec![victim];
            }
            Kind::KillBetweenPubRecAndPubRel | Kind::KillBetweenPubRelAndPubComp => {
                let publisher_side = self.rng.range(0, 1) == 0;
                let first = kind == Kind::KillBetweenPubRecAndPubRel;
                let (cl, stage) = if publisher_side {
                    let p = self.rng.pick(&self.w.publishers);
                    (
                        p,
                        if first {
                            Stage::PubRecReceived
                        } else {
                            Stage::PubRelSent
                        },
                    )
                } else {
                    let qos2: Vec<Arc<StrictClient>> = self
                        .w
                        .subscribers
                        .iter()
                        .filter(|(_, q)| *q == starling_codec::QoS::ExactlyOnce)
                        .map(|(s, _)| s.clone())
                        .collect();
                    (
                        self.rng.pick(&qos2),
                        if first {
                            Stage::PubRecSent
                        } else {
                            Stage::PubRelReceived
                        },
                    )
                };
                let held = match aim(&cl, stage).await {
                    Some(h) => h,
                    None => {
                        self.missed_aims += 1;
                        say(&format!(
                            "+{:.1}s {}: {} did not reach {stage:?} in time; retried later",
                            self.start.elapsed().as_secs_f64(),
                            kind.name(),
                            cl.client_id()
                        ));
                        return None;
                    }
                };
                let victim = self
                    .c
                    .node_of(held.node)
                    .expect("the held flow's node is a cluster node");
                let down = self.down_time();
                at = Instant::now();
                let killed = blocking(|| c.kill(victim));
                // The flow's connection died with its node: the client resumes elsewhere
                // without writing what was due.
                cl.release(Release::Reconnect)
                    .unwrap_or_else(|e| panic!("{}: {e}", cl.client_id()));
                killed.unwrap_or_else(|e| panic!("{e}"));
                tokio::time::sleep(down).await;
                healed = Instant::now();
                blocking(|| c.start_node(victim)).unwrap_or_else(|e| panic!("{e}"));
                detail = format!(
                    "{} at {:?} (packet id {}, topic {}); down {:.1}s",
                    cl.client_id(),
                    held.stage,
                    held.packet_id,
                    held.topic,
                    down.as_secs_f64()
                );
                nodes = vec![victim];
            }
            Kind::IsolateLeader | Kind::IsolateFollower => {
                let leader = self.leader();
                let victim = if kind == Kind::IsolateLeader {
                    leader
                } else {
                    let followers: Vec<usize> = (0..NODES).filter(|i| *i != leader).collect();
                    self.rng.pick(&followers)
                };
                let down = self.rng.millis(3000, 8000);
                at = Instant::now();
                blocking(|| c.disconnect(victim)).unwrap_or_else(|e| panic!("{e}"));
                tokio::time::sleep(down).await;
                healed = Instant::now();
                blocking(|| c.connect(victim)).unwrap_or_else(|e| panic!("{e}"));
                detail = format!(
                    "{} isolated {:.1}s (leader was node {})",
                    if victim == leader {
                        "leader"
                    } else {
                        "follower"
                    },
                    down.as_secs_f64(),
                    leader + 1
                );
                nodes = vec![victim];
            }
            Kind::PauseNode => {
                let leader = self.leader();
                let victim = self.rng.range(0, NODES as u64 - 1) as usize;
                // The election timeout is 1 s (10 ticks of 100 ms).
                let down = self.rng.millis(2000, 6000);
                at = Instant::now();
                blocking(|| c.pause(victim)).unwrap_or_else(|e| panic!("{e}"));
                tokio::time::sleep(down).await;
                healed = Instant::now();
                blocking(|| c.unpause(victim)).unwrap_or_else(|e| panic!("{e}"));
                detail = format!(
                    "{} paused {:.1}s",
                    if victim == leader {
                        "leader"
                    } else {
                        "follower"
                    },
                    down.as_secs_f64()
                );
                nodes = vec![victim];
            }
            Kind::RestartAll => {
                let down = self.rng.millis(500, 4000);
                at = Instant::now();
                blocking(|| c.kill_all()).unwrap_or_else(|e| panic!("{e}"));
                tokio::time::sleep(down).await;
                healed = Instant::now();
                blocking(|| c.start_all()).unwrap_or_else(|e| panic!("{e}"));
                detail = format!("all down {:.1}s", down.as_secs_f64());
                nodes = (0..NODES).collect();
            }
            Kind::RestartGraceful | Kind::RestartGracefulLeader => {
                let leader = self.leader();
                let victim = if kind == Kind::RestartGracefulLeader {
                    leader
                } else {
                    self.rng.range(0, NODES as u64 - 1) as usize
                };
                let down = self.down_time();
                at = Instant::now();
                let stopping = blocking(|| c.stop(victim)).unwrap_or_else(|e| panic!("{e}"));
                tokio::time::sleep(down).await;
                healed = Instant::now();
                blocking(|| c.start_node(victim)).unwrap_or_else(|e| panic!("{e}"));
                detail = format!(
                    "{} node {} stopped in {:.2}s (SIGTERM), down {:.1}s more",
                    if victim == leader {
                        "leader"
                    } else {
                        "follower"
                    },
                    victim + 1,
                    stopping.as_secs_f64(),
                    down.as_secs_f64()
                );
                nodes = vec![victim];
            }
            Kind::LimitsChange => {
                let victim = self.rng.range(0, NODES as u64 - 1) as usize;
                let value = INFLIGHT_VALUES[self.next_inflight % INFLIGHT_VALUES.len()];
                self.next_inflight += 1;
                at = Instant::now();
                let outcome = blocking(|| change_limits(c, victim, value));
                healed = Instant::now();
                detail = match &outcome {
                    Ok(in_force) => format!(
                        "max_inflight {value} through node {} in {:.2}s; in force: {in_force}",
                        victim + 1,
                        (healed - at).as_secs_f64()
                    ),
                    Err(_) => format!("max_inflight {value} through node {}", victim + 1),
                };
                failure = outcome.err();
                nodes = vec![victim];
            }
        }
        let recovered = blocking(|| c.wait_all_ready(RECOVERY)).unwrap_or_else(|e| {
            panic!(
                "{} ({detail}): the cluster did not recover: {e}",
                kind.name()
            )
        });
        let f = Injected {
            kind,
            nodes,
            detail,
            at,
            healed,
            recovered,
            failure,
        };
        say(&format!(
            "+{:.1}s fault {}: {} on node {:?} ({}); every node ready {:.1}s after healing{}",
            (f.at - self.start).as_secs_f64(),
            self.log.len() + 1,
            kind.name(),
            f.nodes.iter().map(|n| n + 1).collect::<Vec<_>>(),
            f.detail,
            f.recovered.as_secs_f64(),
            f.failure
                .as_ref()
                .map(|e| format!("; FAILED: {e}"))
                .unwrap_or_default()
        ));
        self.log.push(f.clone());
        Some(f)
    }
}

/// `PUT /cluster/limits {"max_inflight": value}` on node `i`, which answers 200 with the limits
/// in force once the change is committed. `Ok` with that answer if it holds `value`; `Err` says
/// which call failed and how (status and body), e.g. a 404 from a broker without the endpoint.
fn change_limits(c: &Cluster, i: usize, value: usize) -> Result<String, String> {
    let body = format!("{{\"max_inflight\": {value}}}");
    let call = format!(
        "PUT /cluster/limits {body} on node {} ({})",
        i + 1,
        c.admin_addr(i)
    );
    let (status, answer) = c
        .admin_call(i, "PUT", "/cluster/limits", Some(&body))
        .map_err(|e| format!("{call}: {e}"))?;
    let answer = answer.trim().to_string();
    if status != 200 {
        return Err(format!("{call} answered {status}: {answer:?}"));
    }
    let in_force: serde_json::Value = serde_json::from_str(&answer)
        .map_err(|e| format!("{call} answered 200 with no JSON ({e}): {answer:?}"))?;
    if in_force["max_inflight"].as_u64() != Some(value as u64) {
        return Err(format!(
            "{call} answered 200 but max_inflight in force is {}: {answer}",
            in_force["max_inflight"]
        ));
    }
    Ok(answer)
}

/// Arms a pause of `cl` at `stage` of its next QoS 2 flow and waits for it. `None` (and the
/// client running again) if the flow did not get there within 15 s.
async fn aim(cl: &StrictClient, stage: Stage) -> Option<Held> {
    cl.hold(stage, None).ok()?;
    match cl.wait_held(Duration::from_secs(15)).await {
        Ok(h) => Some(h),
        Err(_) => {
            // Disarm; if the pause happened meanwhile, the release (handled after the disarm,
            // in order) ends it.
            let _ = cl.unhold();
            let _ = cl.release(Release::Continue);
            None
        }
    }
}
