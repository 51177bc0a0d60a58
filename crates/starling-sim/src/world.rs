//! The world: nodes, clients, the network and the faults of one run, and the loop that takes the
//! next event and hands it to whoever it is for.
//!
//! A run has a fault phase (clients work while faults come one after another: crashes, crashes
//! in the middle of a QoS 2 flow, graceful restarts, partitions, flaky networks, membership
//! changes, changes of the replicated limits) and a quiet phase (everything healed and started,
//! clients finish what they hold). Then the checker judges the history and the nodes' final
//! state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use starling_broker::config::BrokerConfig;
use starling_broker::messages::SessionSettings;
use starling_cluster::raft::MemberChange;
use starling_codec::QoS;
use starling_state::pb;
use tokio::sync::oneshot;

use crate::check;
use crate::client::{
    ClientIdx, ClientOut, ClientSpec, PublishSpec, SimClient, NEVER_EXPIRES_IN_A_RUN_SECS,
};
use crate::conn::ConnInput;
use crate::disk::SimDisk;
use crate::history::{Ev, MsgId};
use crate::net::{NetMsg, Network};
use crate::node::{
    Actor, ClusterSettings, Coverage, Fatal, Local, RaftInput, SimNode, StoreInput, Timer,
};
use crate::sched::{Chan, ClientInput, Event, Micros, Sched, WorldEvent};

/// What a run is made of.
#[derive(Clone, Debug)]
pub struct Options {
    /// The seed: every choice of the run derives from it.
    pub seed: u64,
    /// Length of the fault phase, ms of simulated time.
    pub fault_ms: u64,
    /// Length of the quiet phase, ms.
    pub quiet_ms: u64,
    /// Fewest faults a run injects (the fault phase goes on until there were this many).
    pub min_faults: u64,
    /// Fewest messages the clients publish in a run.
    pub min_messages: u64,
    /// Stop after this many events (a run that loops).
    pub max_steps: u64,
    /// Compare the indices derived from the state with a rebuild (after restores, recoveries,
    /// every few hundred entries and at the end). Off, only the history and the final state
    /// judge the run (a bug must then show as a lost or duplicated message, a stuck node...).
    pub derived_checks: bool,
    /// The report carries the whole history (else only what the violations involve).
    pub full_history: bool,
}

impl Options {
    /// The defaults for `seed`.
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            fault_ms: 40_000,
            quiet_ms: 30_000,
            min_faults: 6,
            min_messages: 150,
            max_steps: 20_000_000,
            derived_checks: true,
            full_history: false,
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Violations (empty: the run passed).
    pub violations: Vec<String>,
    /// What the run exercised.
    pub coverage: Coverage,
    /// Faults injected, in order.
    pub faults: Vec<String>,
    /// Messages published.
    pub messages: u64,
    /// Client operations (publishes, subscriptions, connections).
    pub operations: u64,
    /// Events processed.
    pub steps: u64,
    /// Simulated time, ms.
    pub sim_ms: u64,
    /// The readable history of what the violations involve (empty when none).
    pub history: String,
}

impl Report {
    /// True when no violation was found.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// A node's slot: its disk outlives its processes.
struct Slot {
    /// The running process, if any.
    node: Option<SimNode>,
    /// Incarnation of the last process started.
    inc: u64,
    /// This node's configuration (its local values may differ from the others').
    config: Arc<BrokerConfig>,
    /// A voter (or being added).
    member: bool,
    /// A graceful shutdown in progress.
    stopping: Option<Stopping>,
    /// Its disk was wiped: it starts empty and waits to be added.
    joining: bool,
}

/// Where a graceful shutdown is.
#[derive(Clone, Copy, Debug)]
enum Stopping {
    /// Handing leadership over (until the deadline).
    Transfer(Micros),
    /// Clients closed; waiting until the store is quiet (until the deadline).
    Drain(Micros),
    /// Snapshot saved; letting the writes finish.
    Finish(u8),
}

/// The faults a run draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Crash,
    CrashLeader,
    CrashMidQos2,
    CrashAll,
    Graceful,
    Isolate,
    IsolateMidSnapshot,
    Flaky,
    Membership,
    Limits,
}

/// Every fault kind.
const FAULTS: [Fault; 10] = [
    Fault::Crash,
    Fault::CrashLeader,
    Fault::CrashMidQos2,
    Fault::CrashAll,
    Fault::Graceful,
    Fault::Isolate,
    Fault::IsolateMidSnapshot,
    Fault::Flaky,
    Fault::Membership,
    Fault::Limits,
];

/// A membership change being followed: the change, its proposer's answer, when it began.
type PendingChange = (MemberChange, oneshot::Receiver<Result<(), String>>, Micros);

/// One run.
pub struct World {
    s: Sched,
    opts: Options,
    cluster: ClusterSettings,
    slots: BTreeMap<u64, Slot>,
    clients: Vec<SimClient>,
    /// Client connection (client, gen) → (node, process, connection id).
    links: BTreeMap<(ClientIdx, u64), (u64, u64, u64)>,
    faults: Vec<String>,
    quiet: bool,
    ended: bool,
    /// Digest of a replica at an applied index, as the first node to reach it had it.
    digests: BTreeMap<u64, (u64, u64)>,
    /// Applied entries per node since its last derived-index check.
    since_check: BTreeMap<u64, u64>,
    /// Isolate the receiver of the next snapshot transfer that starts (armed by a fault).
    isolate_next_transfer: bool,
    /// The fault kinds this run draws from (a random subset: some runs crash nodes, others only
    /// cut the network, and so on).
    kinds: Vec<Fault>,
    /// A membership change in progress: the reply to wait for.
    member_change: Option<PendingChange>,
}

const TICK_MS: u64 = 100;

impl World {
    /// A world for `opts`.
    pub fn new(opts: Options) -> World {
        let mut s = Sched::new(opts.seed, Network::default());
        s.derived_checks = opts.derived_checks;
        let cluster = ClusterSettings {
            all: vec![1, 2, 3, 4],
            founders: vec![1, 2, 3],
            tick: Duration::from_millis(TICK_MS),
            election_ticks: 10,
            node_down_after: Duration::from_secs(4),
            chunk_bytes: 2048,
            max_entry_bytes: 256 * 1024,
        };
        let mut slots = BTreeMap::new();
        for id in &cluster.all {
            // Local settings differ between nodes: replicated limits must not depend on them.
            let config = BrokerConfig {
                max_queued_messages: s.rng.range(2, 12) as usize,
                max_inflight: s.rng.range(1, 6) as usize,
                max_queued_bytes: s.rng.range(200, 4000) as usize,
                snapshot_entries: s.rng.range(15, 150),
                commit_timeout_secs: 5,
                ..BrokerConfig::default()
            };
            s.disks.insert(*id, SimDisk::new());
            slots.insert(
                *id,
                Slot {
                    node: None,
                    inc: 0,
                    config: Arc::new(config),
                    member: cluster.founders.contains(id),
                    stopping: None,
                    joining: !cluster.founders.contains(id),
                },
            );
        }
        let mut kinds: Vec<Fault> = FAULTS
            .iter()
            .copied()
            .filter(|_| s.rng.chance(600))
            .collect();
        while kinds.len() < 2 {
            let k = s.rng.pick(&FAULTS);
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        let clients = workload(&mut s);
        s.names = clients.iter().map(|c| c.spec.name.clone()).collect();
        World {
            s,
            opts,
            cluster,
            slots,
            clients,
            links: BTreeMap::new(),
            faults: Vec::new(),
            quiet: false,
            ended: false,
            digests: BTreeMap::new(),
            since_check: BTreeMap::new(),
            isolate_next_transfer: false,
            kinds,
            member_change: None,
        }
    }

    /// Runs to the end and judges it.
    pub fn run(mut self) -> Report {
        for id in self.cluster.founders.clone() {
            self.start_node(id);
        }
        for c in 0..self.clients.len() {
            let d = self.s.rng.range(100_000, 2_000_000);
            self.s.after(
                d,
                Event::Client {
                    client: c,
                    input: ClientInput::Turn,
                },
            );
        }
        let first = self.s.rng.range(2_000_000, 5_000_000);
        self.s.after(first, Event::World(WorldEvent::Fault));
        self.s
            .after(self.opts.fault_ms * 1000, Event::World(WorldEvent::Quiet));
        while !self.ended {
            if self.s.steps >= self.opts.max_steps {
                self.s
                    .history
                    .violation(self.s.ms(), format!("no end after {} events", self.s.steps));
                break;
            }
            let Some(ev) = self.s.pop() else { break };
            self.handle(ev);
            if !self.s.transfers_started.is_empty() {
                let started = std::mem::take(&mut self.s.transfers_started);
                if self.isolate_next_transfer && !self.quiet {
                    if let Some((from, to)) = started.first().copied() {
                        self.isolate_next_transfer = false;
                        self.isolate(to, &format!("receiver of node {from}'s snapshot"));
                    }
                }
            }
            if self.member_change.is_some() {
                // A removed node is stopped as soon as its removal applies (it would keep
                // serving clients without ever hearing of the cluster again).
                self.advance_membership();
            }
        }
        self.finish()
    }

    fn handle(&mut self, ev: Event) {
        let node = match &ev {
            Event::Local { node, .. } | Event::Timer { node, .. } | Event::Disk { node, .. } => {
                *node
            }
            Event::Net { to, .. } => *to,
            _ => 0,
        };
        let _span = tracing::info_span!("sim", t = self.s.now / 1000, node).entered();
        match ev {
            Event::Local { node, inc, to, msg } => self.local(node, inc, to, msg),
            Event::Timer { node, inc, timer } => self.timer(node, inc, timer),
            Event::Net { from, to, msg } => self.net(from, to, msg),
            Event::Disk { node, inc } => self.disk(node, inc),
            Event::Client { client, input } => self.client(client, input),
            Event::World(w) => self.world(w),
        }
    }

    fn node_mut(&mut self, id: u64, inc: u64) -> Option<&mut SimNode> {
        node_in(&mut self.slots, id, inc)
    }

    fn local(&mut self, id: u64, inc: u64, to: Actor, msg: Local) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let Some(node) = slot.node.as_mut().filter(|n| n.inc == inc) else {
            return;
        };
        let s = &mut self.s;
        let r = match (to, msg) {
            (Actor::Store, Local::Store(input)) => {
                let committed = matches!(
                    input,
                    StoreInput::Log(starling_broker::LogEvent::Committed(_))
                );
                let before = node.store.state().applied_index();
                let r = node.store_input(input, s);
                if committed && r.is_ok() {
                    let after = node.store.state().applied_index();
                    let n = self.since_check.entry(id).or_default();
                    *n += after.saturating_sub(before);
                    let check = *n >= 300;
                    if check {
                        *n = 0;
                    }
                    check_digest(&mut self.digests, node, s, after);
                    if check && s.derived_checks {
                        node.check_derived(s);
                    }
                }
                r
            }
            (Actor::Raft, Local::Raft(input)) => node.raft_input(input, s),
            (Actor::Router(i), Local::Router(input)) => {
                node.router_input(i, input, s);
                Ok(())
            }
            (Actor::Conn(c), Local::Conn(input)) => {
                node.conn_input(c, Some(input), s);
                Ok(())
            }
            (Actor::Conn(c), Local::Wake) => {
                node.conn_input(c, None, s);
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(Fatal(why)) = r {
            self.s
                .history
                .violation(self.s.ms(), format!("node {id} stopped: {why}"));
            self.crash(id, "fatal error");
        }
    }

    fn timer(&mut self, id: u64, inc: u64, timer: Timer) {
        let tick = TICK_MS * 1000;
        let Some(node) = node_in(&mut self.slots, id, inc) else {
            return;
        };
        let s = &mut self.s;
        let r = match timer {
            Timer::RaftTick | Timer::RaftReady => node.raft_timer(timer, s, tick),
            Timer::StoreTick | Timer::StoreExpire | Timer::StoreFlush | Timer::Takeover(_) => {
                node.store_timer(timer, s)
            }
            Timer::Transfer(to) => {
                node.transfer_timer(to, s);
                Ok(())
            }
            Timer::ConnTimeout(conn, wait) => {
                node.conn_timeout(conn, wait, s);
                Ok(())
            }
            Timer::KeepAlive(conn) => {
                node.keep_alive(conn, s);
                Ok(())
            }
            Timer::RouterHeld(shard) => {
                node.router_held(shard, s);
                Ok(())
            }
        };
        if let Err(Fatal(why)) = r {
            self.s
                .history
                .violation(self.s.ms(), format!("node {id} stopped: {why}"));
            self.crash(id, "fatal error");
        }
    }

    fn net(&mut self, from: u64, to: u64, msg: NetMsg) {
        // A partition also loses what was on the wire.
        if !self.s.net.reachable(from, to) {
            return;
        }
        let Some(node) = self.slots.get_mut(&to).and_then(|s| s.node.as_mut()) else {
            return;
        };
        let s = &mut self.s;
        let r = match msg {
            NetMsg::Raft(m) => node.raft_input(RaftInput::Step(m), s),
            NetMsg::Chunk(c) => node.chunk(from, c, s),
            NetMsg::ChunkAck(a) => {
                node.chunk_ack(from, &a, s);
                Ok(())
            }
            NetMsg::Forward(messages) => {
                node.forwarded(from, messages, s);
                Ok(())
            }
        };
        if let Err(Fatal(why)) = r {
            self.s
                .history
                .violation(self.s.ms(), format!("node {to} stopped: {why}"));
            self.crash(to, "fatal error");
        }
    }

    fn disk(&mut self, id: u64, inc: u64) {
        if self.node_mut(id, inc).is_none() {
            return;
        }
        let done = self.s.disks.get_mut(&id).and_then(SimDisk::complete);
        match done {
            Some(Ok(seq)) => {
                let Some(node) = node_in(&mut self.slots, id, inc) else {
                    return;
                };
                let s = &mut self.s;
                if let Err(Fatal(why)) = node.raft_input(RaftInput::Persisted(seq), s) {
                    self.s
                        .history
                        .violation(self.s.ms(), format!("node {id} stopped: {why}"));
                    self.crash(id, "fatal error");
                }
            }
            Some(Err(e)) => {
                self.s
                    .history
                    .violation(self.s.ms(), format!("node {id}: storage write failed: {e}"));
                self.crash(id, "storage failure");
            }
            None => {}
        }
    }

    // ---- clients ----

    fn client(&mut self, c: ClientIdx, input: ClientInput) {
        let now = self.s.ms();
        let outs = match input {
            ClientInput::Packet(gen, p) => {
                self.clients[c].on_packet(gen, p, now, &mut self.s.history)
            }
            ClientInput::Lost(gen) => {
                self.links.remove(&(c, gen));
                self.clients[c].connection_lost(gen, now, &mut self.s.history);
                Vec::new()
            }
            ClientInput::OpenFailed(gen) => {
                self.clients[c].open_failed(gen, now, &mut self.s.history);
                Vec::new()
            }
            ClientInput::Turn => {
                let d = self.s.rng.range(30_000, 400_000);
                self.s.after(
                    d,
                    Event::Client {
                        client: c,
                        input: ClientInput::Turn,
                    },
                );
                let client = &mut self.clients[c];
                client.step(now, &mut self.s.rng, &mut self.s.history)
            }
        };
        for o in outs {
            self.client_out(c, o);
        }
    }

    fn client_out(&mut self, c: ClientIdx, o: ClientOut) {
        let gen = self.clients[c].gen();
        match o {
            ClientOut::Open { gen } => {
                let id = self.s.rng.pick(&self.cluster.all);
                let up = self.slots[&id].node.as_ref().is_some_and(|n| n.serving)
                    && self.slots[&id].stopping.is_none()
                    && self.s.net.client_reachable(id);
                if up {
                    let Some(node) = self.slots.get_mut(&id).and_then(|s| s.node.as_mut()) else {
                        return;
                    };
                    let conn = node.accept(c, gen, self.clients[c].spec.session);
                    let inc = node.inc;
                    self.links.insert((c, gen), (id, inc, conn));
                    self.s.history.push(
                        self.s.ms(),
                        Ev::Opened {
                            client: c,
                            gen,
                            node: id,
                        },
                    );
                } else {
                    let d = self.s.rng.range(200, 2_000);
                    self.s.after(
                        d,
                        Event::Client {
                            client: c,
                            input: ClientInput::OpenFailed(gen),
                        },
                    );
                }
            }
            ClientOut::Send(p) => {
                if let Some((node, inc, conn)) = self.links.get(&(c, gen)).copied() {
                    let d = self.s.rng.range(50, 400);
                    self.s.ordered(
                        Chan::ToBroker(c, gen),
                        d,
                        Event::Local {
                            node,
                            inc,
                            to: Actor::Conn(conn),
                            msg: Local::Conn(ConnInput::Packet(p)),
                        },
                    );
                }
            }
            ClientOut::Close => {
                if let Some((node, inc, conn)) = self.links.remove(&(c, gen)) {
                    let d = self.s.rng.range(50, 400);
                    self.s.ordered(
                        Chan::ToBroker(c, gen),
                        d,
                        Event::Local {
                            node,
                            inc,
                            to: Actor::Conn(conn),
                            msg: Local::Conn(ConnInput::Eof),
                        },
                    );
                }
            }
            ClientOut::Abandon => {
                self.links.remove(&(c, gen));
            }
        }
    }

    // ---- nodes ----

    fn start_node(&mut self, id: u64) {
        let slot = self.slots.get_mut(&id).expect("a node");
        if slot.node.is_some() {
            return;
        }
        slot.inc += 1;
        slot.stopping = None;
        let inc = slot.inc;
        let config = slot.config.clone();
        let bootstrap = !slot.joining;
        let disk = self.s.disks.remove(&id).expect("a disk");
        let r = SimNode::start(
            id,
            inc,
            &disk,
            &self.cluster,
            config,
            bootstrap,
            &mut self.s,
        );
        self.s.disks.insert(id, disk);
        match r {
            Ok(node) => {
                self.s
                    .history
                    .node(self.s.ms(), id, format!("started (process {inc})"));
                self.slots.get_mut(&id).expect("a node").node = Some(node);
            }
            Err(e) => {
                self.s.history.violation(self.s.ms(), e);
            }
        }
    }

    /// kill -9: the process and what it had not made durable are gone.
    fn crash(&mut self, id: u64, why: &str) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let Some(node) = slot.node.take() else { return };
        slot.stopping = None;
        let lost = self.s.disks.get_mut(&id).map_or(0, SimDisk::crash);
        self.s.coverage.crashes += 1;
        self.s.history.node(
            self.s.ms(),
            id,
            format!("crashed ({why}; {lost} writes not yet durable lost)"),
        );
        // Devices connected to it may go down with it and never come back: the cluster must
        // then take their sessions offline and publish their wills on its own.
        let victims: Vec<ClientIdx> = self
            .links
            .iter()
            .filter(|(_, (n, inc, _))| *n == id && *inc == node.inc)
            .map(|((c, _), _)| *c)
            .filter(|c| self.clients[*c].spec.name.starts_with("device"))
            .collect();
        for c in victims {
            if self.s.rng.chance(500) {
                self.clients[c].die(self.s.ms(), &mut self.s.history);
            }
        }
        self.drop_connections(id, &node, true);
    }

    /// The node's process is gone: its clients' connections break.
    fn drop_connections(&mut self, id: u64, node: &SimNode, will_due: bool) {
        self.drop_links(id, node.inc, Some(will_due));
    }

    /// The clients of node `id`'s process `inc` lose their connections. `will_due`: the broker
    /// side ends with them (the process is gone: wills are due); `None`: only the clients lose
    /// them (a partition), and the broker decides when it learns of it.
    fn drop_links(&mut self, id: u64, inc: u64, will_due: Option<bool>) {
        let links: Vec<(ClientIdx, u64)> = self
            .links
            .iter()
            .filter(|(_, (n, i, _))| *n == id && *i == inc)
            .map(|(k, _)| *k)
            .collect();
        for (c, gen) in links {
            self.links.remove(&(c, gen));
            if let Some(due) = will_due {
                self.s.ended(c, gen, due);
            }
            self.s.client_lost(c, gen);
        }
    }

    fn restart_later(&mut self, id: u64) {
        // Now and then longer than the leader's patience: its sessions are taken offline
        // by the leader meanwhile.
        let d = if self.s.rng.chance(200) {
            self.s.rng.range(4_500_000, 7_000_000)
        } else {
            self.s.rng.range(300_000, 3_000_000)
        };
        self.s.after(d, Event::World(WorldEvent::Restart(id)));
    }

    fn running(&self) -> Vec<u64> {
        self.slots
            .iter()
            .filter(|(_, s)| s.node.is_some() && s.stopping.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    fn leader(&self) -> Option<u64> {
        self.slots
            .values()
            .filter_map(|s| s.node.as_ref())
            .find_map(|n| {
                let st = n.raft.status();
                (st.role == "leader").then_some(n.id)
            })
    }

    // ---- the world's schedule ----

    fn world(&mut self, w: WorldEvent) {
        match w {
            WorldEvent::Fault => {
                if self.quiet {
                    return;
                }
                self.inject();
                let d = self.s.rng.range(1_500_000, 5_000_000);
                self.s.after(d, Event::World(WorldEvent::Fault));
            }
            WorldEvent::Restart(id) => {
                if self.slots[&id].member || self.slots[&id].joining {
                    self.start_node(id);
                }
            }
            WorldEvent::Heal => {
                self.s.net.heal();
                self.s.history.node(self.s.ms(), 0, "network healed");
            }
            WorldEvent::ShutdownStep(id) => self.shutdown_step(id),
            WorldEvent::Quiet => {
                if (self.faults.len() as u64) < self.opts.min_faults
                    || self.published() < self.opts.min_messages
                {
                    // Not enough happened yet: keep going a little.
                    self.s.after(2_000_000, Event::World(WorldEvent::Quiet));
                    return;
                }
                self.quiet = true;
                self.s.net.heal();
                self.s
                    .history
                    .node(self.s.ms(), 0, "quiet: everything healed, clients finish");
                let down: Vec<u64> = self
                    .slots
                    .iter()
                    .filter(|(_, s)| s.node.is_none() && (s.member || s.joining))
                    .map(|(id, _)| *id)
                    .collect();
                for id in down {
                    self.start_node(id);
                }
                for c in &mut self.clients {
                    c.finish();
                }
                self.s
                    .after(self.opts.quiet_ms * 1000, Event::World(WorldEvent::End));
            }
            WorldEvent::End => {
                // The last checks of the derived indices travel like the others; the run ends
                // once they arrived.
                let ids: Vec<u64> = if self.s.derived_checks {
                    self.slots.keys().copied().collect()
                } else {
                    Vec::new()
                };
                for id in ids {
                    let inc = self.slots[&id].inc;
                    if let Some(node) = node_in(&mut self.slots, id, inc) {
                        node.check_derived(&mut self.s);
                        let _ = node.flush_output(&mut self.s);
                    }
                }
                self.s.after(200_000, Event::World(WorldEvent::Final));
            }
            WorldEvent::Final => self.ended = true,
        }
    }

    fn published(&self) -> u64 {
        self.clients.iter().map(SimClient::published).sum()
    }

    fn inject(&mut self) {
        // A membership change in progress finishes first.
        if self.advance_membership() {
            return;
        }
        let kind = self.s.rng.pick(&self.kinds);
        let running = self.running();
        let ms = self.s.ms();
        let text = match kind {
            Fault::Crash | Fault::CrashLeader | Fault::CrashMidQos2 => {
                let victim = match kind {
                    Fault::CrashLeader => self.leader(),
                    Fault::CrashMidQos2 => self.node_mid_qos2(),
                    _ => None,
                }
                .or_else(|| (!running.is_empty()).then(|| self.s.rng.pick(&running)));
                let Some(victim) = victim else { return };
                if kind == Fault::CrashMidQos2 && self.node_mid_qos2() == Some(victim) {
                    self.s.coverage.crashes_mid_qos2 += 1;
                }
                self.crash(victim, "killed");
                self.restart_later(victim);
                format!("{kind:?} node {victim}")
            }
            Fault::CrashAll => {
                for id in running.clone() {
                    self.crash(id, "killed with all");
                }
                // They come back together, or one by one (a node may then be alone, without a
                // leader, for longer than its startup hold).
                let together = self.s.rng.chance(500);
                let d = self.s.rng.range(200_000, 3_000_000);
                for id in running.clone() {
                    let d = if together {
                        d
                    } else {
                        self.s.rng.range(200_000, 9_000_000)
                    };
                    self.s.after(d, Event::World(WorldEvent::Restart(id)));
                }
                format!("crash of every node {running:?}")
            }
            Fault::Graceful => {
                if running.is_empty() {
                    return;
                }
                let victim = self.s.rng.pick(&running);
                let deadline = self.s.now + 5_000_000;
                if let Some(slot) = self.slots.get_mut(&victim) {
                    slot.stopping = Some(Stopping::Transfer(deadline));
                }
                self.s.coverage.graceful_restarts += 1;
                self.s
                    .after(1, Event::World(WorldEvent::ShutdownStep(victim)));
                format!("graceful restart of node {victim}")
            }
            Fault::Isolate => {
                if running.is_empty() {
                    return;
                }
                let victim = self
                    .leader()
                    .filter(|_| self.s.rng.chance(500))
                    .unwrap_or_else(|| self.s.rng.pick(&running));
                self.isolate(victim, "");
                return;
            }
            Fault::IsolateMidSnapshot => {
                self.isolate_next_transfer = true;
                "isolate the receiver of the next snapshot transfer".to_string()
            }
            Fault::Flaky => {
                self.s.net.drop = self.s.rng.range(20, 200);
                self.s.net.duplicate = self.s.rng.range(0, 100);
                self.s.net.reorder = self.s.rng.chance(500);
                self.s.net.jitter = self.s.rng.range(0, 30_000);
                let d = self.s.rng.range(2_000_000, 8_000_000);
                self.s.after(d, Event::World(WorldEvent::Heal));
                format!(
                    "flaky network (drop {}‰, duplicate {}‰, reorder {})",
                    self.s.net.drop, self.s.net.duplicate, self.s.net.reorder
                )
            }
            Fault::Membership => {
                if !self.start_membership_change() {
                    return;
                }
                "membership change".to_string()
            }
            Fault::Limits => {
                if running.is_empty() {
                    return;
                }
                let via = self.s.rng.pick(&running);
                let limits = pb::Limits {
                    max_queued_messages: self.s.rng.range(5_000, 9_000),
                    max_inflight: self.s.rng.range(4, 40),
                    max_queued_bytes: self.s.rng.range(8 << 20, 32 << 20),
                };
                let inc = self.slots[&via].inc;
                self.s.local(
                    via,
                    inc,
                    Actor::Store,
                    Actor::Store,
                    Local::Store(StoreInput::SetLimits(limits)),
                );
                self.s.coverage.limit_changes += 1;
                format!("replicated limits changed through node {via}: {limits:?}")
            }
        };
        self.s.history.node(ms, 0, format!("FAULT {text}"));
        self.faults
            .push(format!("{:.3}s {text}", ms as f64 / 1000.0));
    }

    /// Cuts `victim` off from the other nodes and the clients for a while.
    fn isolate(&mut self, victim: u64, why: &str) {
        let all = self.cluster.all.clone();
        self.s.net.isolate(victim, &all);
        self.s.net.isolate_clients(victim);
        // Its clients lose their connections as the network goes (the node keeps them
        // half-open until their sessions are taken over, or their keep-alive runs out).
        let inc = self.slots[&victim].inc;
        self.drop_links(victim, inc, None);
        self.s.coverage.partitions += 1;
        let d = self.s.rng.range(1_500_000, 8_000_000);
        self.s.after(d, Event::World(WorldEvent::Heal));
        let text = if why.is_empty() {
            format!("isolate node {victim}")
        } else {
            format!("isolate node {victim} ({why})")
        };
        let ms = self.s.ms();
        self.s.history.node(ms, 0, format!("FAULT {text}"));
        self.faults
            .push(format!("{:.3}s {text}", ms as f64 / 1000.0));
    }

    /// The node through which some client is in the middle of a QoS 2 flow, if any.
    fn node_mid_qos2(&self) -> Option<u64> {
        self.clients
            .iter()
            .filter(|c| c.mid_qos2())
            .find_map(|c| self.links.get(&(c.idx, c.gen())).map(|(n, _, _)| *n))
    }

    /// Membership: the spare node (empty disk) is added; or a follower is removed, its disk
    /// wiped, and it becomes the spare. One step at a time.
    fn start_membership_change(&mut self) -> bool {
        if self.member_change.is_some() {
            return false;
        }
        let Some(leader) = self.leader() else {
            return false;
        };
        let spare = self
            .slots
            .iter()
            .find(|(_, s)| !s.member)
            .map(|(id, _)| *id);
        let change = match spare {
            Some(id) => {
                // Start it empty first: it waits to be added.
                self.slots.get_mut(&id).expect("a node").joining = true;
                self.start_node(id);
                MemberChange::Add {
                    id,
                    raft_address: format!("node-{id}:7946"),
                    admin_address: String::new(),
                }
            }
            None => {
                let members: Vec<u64> = self
                    .slots
                    .iter()
                    .filter(|(id, s)| s.member && **id != leader)
                    .map(|(id, _)| *id)
                    .collect();
                if members.len() < 3 {
                    return false;
                }
                MemberChange::Remove {
                    id: self.s.rng.pick(&members),
                }
            }
        };
        let (tx, rx) = oneshot::channel();
        let now = self.s.instant();
        let inc = self.slots[&leader].inc;
        if let Some(node) = node_in(&mut self.slots, leader, inc) {
            let mut out = starling_cluster::raft::RaftOutput::default();
            node.raft.change_members(change.clone(), tx, now, &mut out);
            let s = &mut self.s;
            if let Err(Fatal(why)) = node.raft_output(out, s) {
                self.s
                    .history
                    .violation(self.s.ms(), format!("node {leader} stopped: {why}"));
            }
        }
        self.s.history.node(
            self.s.ms(),
            0,
            format!("membership change proposed: {change:?}"),
        );
        self.member_change = Some((change, rx, self.s.now));
        true
    }

    /// Follows a membership change: once the leader's configuration shows it (or its proposer
    /// answered), the world acts on it — a removed node is stopped and its disk wiped (it may be
    /// added again later), an added one counts as a member. A change that does not show within
    /// fifteen seconds is given up (an added node that never joined is stopped). True while one
    /// is pending.
    fn advance_membership(&mut self) -> bool {
        let Some((change, mut rx, since)) = self.member_change.take() else {
            return false;
        };
        let answered = !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        let voters = self.leader().map(|l| {
            self.slots[&l]
                .node
                .as_ref()
                .map(|n| n.raft.status().voters)
                .unwrap_or_default()
        });
        let applied = match (&change, &voters) {
            (MemberChange::Add { id, .. }, Some(v)) => v.contains(id),
            (MemberChange::Remove { id }, Some(v)) => !v.contains(id),
            _ => false,
        };
        if !applied {
            if answered || self.s.now < since + 15_000_000 {
                // Not visible yet (or the proposer is gone): keep watching.
                if self.s.now < since + 15_000_000 {
                    self.member_change = Some((change, rx, since));
                    return true;
                }
            }
            self.s.history.node(
                self.s.ms(),
                0,
                format!("membership change not applied: {change:?}"),
            );
            if let MemberChange::Add { id, .. } = change {
                if !self.slots[&id].member {
                    self.crash(id, "not added");
                    if let Some(d) = self.s.disks.get_mut(&id) {
                        d.wipe();
                    }
                    self.slots.get_mut(&id).expect("a node").joining = false;
                }
            }
            return false;
        }
        self.s.coverage.membership_changes += 1;
        self.s.history.node(
            self.s.ms(),
            0,
            format!("membership change applied: {change:?}"),
        );
        match change {
            MemberChange::Add { id, .. } => {
                let slot = self.slots.get_mut(&id).expect("a node");
                slot.member = true;
                slot.joining = false;
            }
            MemberChange::Remove { id } => {
                // It leaves for good: stopped, its disk wiped; it may join again later.
                self.crash(id, "removed from the cluster");
                if let Some(d) = self.s.disks.get_mut(&id) {
                    d.wipe();
                }
                let slot = self.slots.get_mut(&id).expect("a node");
                slot.member = false;
                slot.joining = false;
            }
        }
        false
    }

    fn shutdown_step(&mut self, id: u64) {
        let Some(stopping) = self.slots.get(&id).and_then(|s| s.stopping) else {
            return;
        };
        let inc = self.slots[&id].inc;
        let now = self.s.now;
        let next = match stopping {
            Stopping::Transfer(deadline) => {
                let leads = self.leader() == Some(id);
                if leads && now < deadline {
                    self.s.local(
                        id,
                        inc,
                        Actor::Raft,
                        Actor::Raft,
                        Local::Raft(RaftInput::TransferLeadership),
                    );
                    self.s
                        .after(500_000, Event::World(WorldEvent::ShutdownStep(id)));
                    return;
                }
                // Clients closed (`Shutdown`), then wait until the store is quiet.
                let Some(node) = node_in(&mut self.slots, id, inc) else {
                    return;
                };
                let s = &mut self.s;
                node.begin_shutdown(s);
                Stopping::Drain(now + 5_000_000)
            }
            Stopping::Drain(deadline) => {
                let Some(node) = node_in(&mut self.slots, id, inc) else {
                    return;
                };
                if !node.store.quiet() && now < deadline {
                    self.s
                        .after(20_000, Event::World(WorldEvent::ShutdownStep(id)));
                    return;
                }
                let s = &mut self.s;
                node.finish_shutdown(s);
                Stopping::Finish(0)
            }
            Stopping::Finish(n) => {
                let pending = self.s.disks.get(&id).map_or(0, SimDisk::pending);
                if pending > 0 && n < 100 {
                    self.s
                        .after(20_000, Event::World(WorldEvent::ShutdownStep(id)));
                    if let Some(slot) = self.slots.get_mut(&id) {
                        slot.stopping = Some(Stopping::Finish(n + 1));
                    }
                    return;
                }
                // The writer drained; the process exits.
                if let Some(slot) = self.slots.get_mut(&id) {
                    if let Some(node) = slot.node.take() {
                        slot.stopping = None;
                        self.s.history.node(self.s.ms(), id, "stopped gracefully");
                        self.drop_connections(id, &node, false);
                    }
                }
                self.restart_later(id);
                return;
            }
        };
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.stopping = Some(next);
        }
        self.s
            .after(20_000, Event::World(WorldEvent::ShutdownStep(id)));
    }

    // ---- the end ----

    fn finish(mut self) -> Report {
        // Let whatever is queued at the end settle nothing more: judge now.
        let mut violations: Vec<String> = Vec::new();
        let mut nodes: Vec<&mut SimNode> = self
            .slots
            .values_mut()
            .filter_map(|s| s.node.as_mut())
            .collect();
        check::end_of_run(&mut self.s, &mut nodes, &self.clients, &mut violations);
        let (clients, msgs) = check::history(&self.s.history, &self.clients, &mut violations);
        for (at, v) in &self.s.history.violations {
            violations.push(format!("{:.3}s {v}", *at as f64 / 1000.0));
        }
        let history = if self.opts.full_history {
            let all: Vec<ClientIdx> = (0..self.clients.len()).collect();
            self.s.history.render_all(&all, &self.s.names)
        } else if violations.is_empty() {
            String::new()
        } else {
            self.s.history.render(&clients, &msgs, &self.s.names)
        };
        let messages = self.published();
        Report {
            seed: self.opts.seed,
            violations,
            coverage: self.s.coverage.clone(),
            faults: self.faults,
            messages,
            operations: self
                .s
                .history
                .events
                .iter()
                .filter(|(_, e)| {
                    matches!(
                        e,
                        Ev::Published { .. } | Ev::Subscribed { .. } | Ev::Connecting { .. }
                    )
                })
                .count() as u64,
            steps: self.s.steps,
            sim_ms: self.s.ms(),
            history,
        }
    }
}

/// Node `id`'s process `inc`, if it runs.
fn node_in(slots: &mut BTreeMap<u64, Slot>, id: u64, inc: u64) -> Option<&mut SimNode> {
    slots
        .get_mut(&id)
        .and_then(|s| s.node.as_mut())
        .filter(|n| n.inc == inc)
}

/// Records the digest of `node`'s state at `index`, or compares it with the one recorded by
/// the first node that reached that index.
fn check_digest(
    digests: &mut BTreeMap<u64, (u64, u64)>,
    node: &SimNode,
    s: &mut Sched,
    index: u64,
) {
    let known = digests.get(&index).copied();
    if known.is_none() && !index.is_multiple_of(8) {
        return;
    }
    let digest = node.store.state().digest();
    match known {
        Some((other, d)) if other != node.id => {
            s.coverage.digest_checks += 1;
            if d != digest {
                s.history.violation(
                    s.ms(),
                    format!(
                        "replicas differ at applied index {index}: node {other} has digest {d:016x}, node {} {digest:016x}",
                        node.id
                    ),
                );
            }
        }
        Some(_) => {}
        None => {
            digests.insert(index, (node.id, digest));
            if digests.len() > 4096 {
                digests.pop_first();
            }
        }
    }
}

/// The clients of a run: persistent and clean subscribers and publishers on a few topics, a
/// retained publisher, clients with wills and one that collects the wills.
fn workload(s: &mut Sched) -> Vec<SimClient> {
    let q = |v: u64| match v {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let topics: Vec<String> = (0..4).map(|i| format!("t/{i}")).collect();
    let mut specs = Vec::new();
    for i in 0..3 {
        specs.push(ClientSpec {
            name: format!("pub-{i}"),
            clean: i == 2,
            subscriptions: Vec::new(),
            publishes: Some(PublishSpec {
                topics: topics.clone(),
                qos: vec![QoS::AtLeastOnce, QoS::ExactlyOnce, q(s.rng.range(0, 2))],
                retain: false,
                quota: s.rng.range(60, 120),
                window: s.rng.range(1, 6) as usize,
            }),
            will: s.rng.chance(500),
            dies_at: None,
            session: None,
        });
    }
    let filters = ["t/#", "t/+", "t/1", "t/2", "#"];
    for i in 0..3 {
        specs.push(ClientSpec {
            name: format!("sub-{i}"),
            clean: false,
            subscriptions: vec![(s.rng.pick(&filters).to_string(), q(s.rng.range(1, 2)))],
            publishes: None,
            will: s.rng.chance(500),
            dies_at: None,
            session: None,
        });
    }
    for i in 0..2 {
        specs.push(ClientSpec {
            name: format!("clean-sub-{i}"),
            clean: true,
            subscriptions: vec![(s.rng.pick(&filters).to_string(), q(s.rng.range(1, 2)))],
            publishes: None,
            will: s.rng.chance(500),
            dies_at: None,
            session: None,
        });
    }
    specs.push(ClientSpec {
        name: "retainer".into(),
        clean: false,
        subscriptions: Vec::new(),
        publishes: Some(PublishSpec {
            topics: Vec::new(),
            qos: vec![QoS::AtLeastOnce, QoS::ExactlyOnce],
            retain: true,
            quota: s.rng.range(10, 30),
            window: 1,
        }),
        will: false,
        dies_at: None,
        session: None,
    });
    specs.push(ClientSpec {
        name: "wills".into(),
        clean: false,
        subscriptions: vec![("will/#".into(), QoS::ExactlyOnce)],
        publishes: None,
        will: false,
        dies_at: None,
        session: None,
    });
    // Devices with wills that die at some point (their brokers learn of it by the keep-alive).
    for i in 0..3 {
        specs.push(ClientSpec {
            name: format!("device-{i}"),
            clean: i == 2,
            subscriptions: Vec::new(),
            publishes: None,
            will: true,
            dies_at: s.rng.chance(800).then(|| s.rng.range(3_000, 35_000)),
            session: None,
        });
    }
    // MQTT 5 sessions: a persistent subscriber whose expiry outlasts any outage of a run (it
    // must never lose its session, across failovers), and devices whose sessions expire soon
    // after they die, with wills that wait for a delay (published when due, or when the
    // session ends first). Both expire in log time, through the Ticks of whichever node leads.
    for spec in specs.iter_mut() {
        let v5 = match spec.name.as_str() {
            "sub-0" if s.rng.chance(500) => Some(SessionSettings {
                expiry_secs: s.rng.pick(&[NEVER_EXPIRES_IN_A_RUN_SECS, u32::MAX]),
                ..SessionSettings::default()
            }),
            "device-0" | "device-1" if s.rng.chance(500) => Some(SessionSettings {
                expiry_secs: s.rng.range(1, 6) as u32,
                will_delay_secs: s.rng.pick(&[0, 1, 3, 10]),
                ..SessionSettings::default()
            }),
            _ => None,
        };
        spec.session = v5;
    }
    specs
        .into_iter()
        .enumerate()
        .map(|(i, spec)| SimClient::new(i, spec))
        .collect()
}

/// A message's id, for the checker's report.
pub fn msg_ids(v: &[MsgId]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}
