//! Simulated time and the event queue.
//!
//! Everything that happens is an [`Event`] at a time (microseconds of simulated time). Events
//! at the same time run in an order the seed decides. Messages between two parties (two actors
//! of a node, two nodes' peer stream, a client and its connection) keep their order: each such
//! channel delivers strictly later than its previous message.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use starling_codec::Packet;
use tokio::time::Instant;

use starling_storage::WriteBatch;

use crate::client::ClientIdx;
use crate::disk::SimDisk;
use crate::history::History;
use crate::net::{NetMsg, Network};
use crate::node::{Actor, Coverage, Local, Timer};
use crate::rng::SimRng;

/// Microseconds of simulated time.
pub type Micros = u64;

/// Something that happens at a time.
pub enum Event {
    /// A message for an actor of node `node`'s process `inc` (dropped if that process is gone).
    Local {
        /// The node.
        node: u64,
        /// Its process incarnation.
        inc: u64,
        /// The receiving actor.
        to: Actor,
        /// The message.
        msg: Local,
    },
    /// A timer of node `node`'s process `inc`.
    Timer {
        /// The node.
        node: u64,
        /// Its process incarnation.
        inc: u64,
        /// Which.
        timer: Timer,
    },
    /// A message between nodes, for whatever process of `to` runs when it arrives.
    Net {
        /// Sender.
        from: u64,
        /// Receiver.
        to: u64,
        /// The message.
        msg: NetMsg,
    },
    /// The oldest pending write of node `node`'s process `inc` is durable.
    Disk {
        /// The node.
        node: u64,
        /// Its process incarnation.
        inc: u64,
    },
    /// Something for a client.
    Client {
        /// The client.
        client: ClientIdx,
        /// What.
        input: ClientInput,
    },
    /// The world's own schedule (faults, the client's turns, phases).
    World(WorldEvent),
}

/// What reaches a client.
// Most are packets (as large as a 5.0 PUBLISH with its properties): boxing them would cost an
// allocation each and save nothing.
#[allow(clippy::large_enum_variant)]
pub enum ClientInput {
    /// A packet on its connection `gen`.
    Packet(u64, Packet),
    /// Its connection `gen` is gone.
    Lost(u64),
    /// Its connection `gen` could not be opened.
    OpenFailed(u64),
    /// Its turn to act.
    Turn,
}

/// The world's own events.
#[derive(Clone, Copy, Debug)]
pub enum WorldEvent {
    /// Inject the next fault.
    Fault,
    /// Start node `node` again (after a crash or a graceful stop).
    Restart(u64),
    /// Heal a partition or a flaky network.
    Heal,
    /// A graceful shutdown of `node` advances.
    ShutdownStep(u64),
    /// The fault phase ends: heal everything, let clients finish.
    Quiet,
    /// The run's last checks.
    End,
    /// The run ends.
    Final,
}

/// The queue, the clock, the random source, the network and the history: what every part of
/// the simulation reaches to make things happen.
pub struct Sched {
    /// Now.
    pub now: Micros,
    /// The instant that simulated time 0 maps to (the cores compare instants, never read them).
    base: Instant,
    /// The seeded random source.
    pub rng: SimRng,
    /// Pending events by (time, random tiebreak, sequence).
    queue: BTreeMap<(Micros, u64, u64), Event>,
    /// Sequence of the next event (unique keys).
    seq: u64,
    /// Last delivery time per ordered channel.
    fifo: HashMap<Chan, Micros>,
    /// The network between nodes.
    pub net: Network,
    /// What happened.
    pub history: History,
    /// Events processed.
    pub steps: u64,
    /// What the run exercised.
    pub coverage: Coverage,
    /// Client names, for the history.
    pub names: Vec<String>,
    /// Check the indices derived from the state (see `Options::derived_checks`).
    pub derived_checks: bool,
    /// Snapshot transfers started since the world last looked: (from, to).
    pub transfers_started: Vec<(u64, u64)>,
    /// Every node's disk (it outlives the node's processes).
    pub disks: BTreeMap<u64, SimDisk>,
}

/// An ordered channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Chan {
    /// The mailbox of an actor of one node process.
    Local(u64, u64, Actor),
    /// A node's timer of one kind (coalesced ones never overtake each other).
    Net(u64, u64, u8),
    /// Broker → client connection.
    ToClient(ClientIdx, u64),
    /// Client connection → broker.
    ToBroker(ClientIdx, u64),
    /// A node's disk.
    Disk(u64, u64),
}

impl Sched {
    /// A clock at 0.
    pub fn new(seed: u64, net: Network) -> Sched {
        Sched {
            now: 0,
            base: Instant::now(),
            rng: SimRng::new(seed),
            queue: BTreeMap::new(),
            seq: 0,
            fifo: HashMap::new(),
            net,
            history: History::default(),
            steps: 0,
            coverage: Coverage::default(),
            names: Vec::new(),
            derived_checks: true,
            transfers_started: Vec::new(),
            disks: BTreeMap::new(),
        }
    }

    /// A thread hop's delay.
    pub fn rng_delay(&mut self) -> Micros {
        self.rng.range(5, 150)
    }

    /// The broker side of a client's connection ended; `will_due` if its will must come.
    pub fn ended(&mut self, client: ClientIdx, gen: u64, will_due: bool) {
        let at = self.ms();
        self.history
            .ended
            .entry((client, gen))
            .or_insert((will_due, at));
    }

    /// A storage write of node `node`'s process `inc`, durable after a simulated fsync.
    pub fn disk_submit(&mut self, node: u64, inc: u64, seq: u64, batch: WriteBatch) {
        if let Some(d) = self.disks.get_mut(&node) {
            d.submit(seq, batch);
        }
        let delay = self.rng.range(100, 2_500);
        self.ordered(Chan::Disk(node, inc), delay, Event::Disk { node, inc });
    }

    /// Now, as the cores see it.
    pub fn instant(&self) -> Instant {
        self.base + Duration::from_micros(self.now)
    }

    /// Now in ms (the history's unit).
    pub fn ms(&self) -> u64 {
        self.now / 1000
    }

    /// A wall clock for entry timestamps (ms since an arbitrary epoch).
    pub fn wall_ms(&self) -> u64 {
        1_700_000_000_000 + self.now / 1000
    }

    /// Schedules `ev` at `at`.
    pub fn at(&mut self, at: Micros, ev: Event) {
        self.seq += 1;
        let tie = self.rng.next_u64();
        self.queue.insert((at.max(self.now), tie, self.seq), ev);
    }

    /// Schedules `ev` after `delay`.
    pub fn after(&mut self, delay: Micros, ev: Event) {
        self.at(self.now + delay, ev);
    }

    /// Schedules `ev` on the ordered channel `chan`, `delay` from now but after the channel's
    /// previous message.
    pub fn ordered(&mut self, chan: Chan, delay: Micros, ev: Event) {
        let last = self.fifo.get(&chan).copied().unwrap_or(0);
        let at = (self.now + delay).max(last + 1);
        self.fifo.insert(chan, at);
        self.at(at, ev);
    }

    /// The next event, advancing the clock.
    pub fn pop(&mut self) -> Option<Event> {
        let ((at, _, _), ev) = self.queue.pop_first()?;
        self.now = at;
        self.steps += 1;
        Some(ev)
    }

    /// Time of the next event.
    pub fn peek_time(&self) -> Option<Micros> {
        self.queue.keys().next().map(|k| k.0)
    }

    /// A message to an actor of a node: a thread hop of a few microseconds. Each actor has
    /// one mailbox, in order of sending whoever sent (`from` is for the reader of a trace).
    pub fn local(&mut self, node: u64, inc: u64, _from: Actor, to: Actor, msg: Local) {
        let delay = self.rng.range(5, 150);
        self.ordered(
            Chan::Local(node, inc, to),
            delay,
            Event::Local { node, inc, to, msg },
        );
    }

    /// A timer of a node's process after `delay`.
    pub fn timer(&mut self, node: u64, inc: u64, delay: Micros, timer: Timer) {
        self.after(delay, Event::Timer { node, inc, timer });
    }

    /// A packet from the broker to a client's connection `gen`.
    pub fn to_client(&mut self, client: ClientIdx, gen: u64, packet: Packet) {
        let delay = self.rng.range(50, 400);
        self.ordered(
            Chan::ToClient(client, gen),
            delay,
            Event::Client {
                client,
                input: ClientInput::Packet(gen, packet),
            },
        );
    }

    /// A client's connection `gen` is gone (after what was sent on it).
    pub fn client_lost(&mut self, client: ClientIdx, gen: u64) {
        let delay = self.rng.range(50, 400);
        self.ordered(
            Chan::ToClient(client, gen),
            delay,
            Event::Client {
                client,
                input: ClientInput::Lost(gen),
            },
        );
    }

    /// A message between nodes, through the network's faults.
    #[allow(clippy::needless_pass_by_value)] // taken to be delivered (cloned only when duplicated)
    pub fn net_send(&mut self, from: u64, to: u64, msg: NetMsg) {
        let Some(plan) = self.net.plan(from, to, &msg, &mut self.rng) else {
            return;
        };
        for delay in plan.deliveries {
            let ev = Event::Net {
                from,
                to,
                msg: msg.clone(),
            };
            if plan.ordered {
                self.ordered(Chan::Net(from, to, msg.kind()), delay, ev);
            } else {
                self.after(delay, ev);
            }
        }
    }
}
