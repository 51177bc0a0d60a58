//! What happened in a run, in order: client events (what the checker judges), node and fault
//! events (what a reader needs to understand a failure), and the violations found along the
//! way. A failing seed prints it.

use std::fmt::{self, Write as _};

use starling_codec::QoS;

use crate::client::ClientIdx;

/// A published message: its publisher and sequence number (also its payload, `m:<client>:<seq>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgId {
    /// The publishing client.
    pub client: ClientIdx,
    /// Its sequence number at that client, from 1.
    pub seq: u64,
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m:{}:{}", self.client, self.seq)
    }
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ev {
    /// A client opens connection `gen`.
    Connecting {
        /// The client.
        client: ClientIdx,
        /// The connection.
        gen: u64,
    },
    /// The connection reached a node (the world's choice).
    Opened {
        /// The client.
        client: ClientIdx,
        /// The connection.
        gen: u64,
        /// The node.
        node: u64,
    },
    /// CONNACK 0.
    Connected {
        /// The client.
        client: ClientIdx,
        /// The connection.
        gen: u64,
        /// Session present.
        present: bool,
    },
    /// Refused: no node (`None`) or CONNACK with this code.
    Refused {
        /// The client.
        client: ClientIdx,
        /// The connection.
        gen: u64,
        /// CONNACK code.
        code: Option<u8>,
    },
    /// The connection broke (or the client gave up on it).
    Lost {
        /// The client.
        client: ClientIdx,
        /// The connection.
        gen: u64,
    },
    /// The client sends DISCONNECT.
    Disconnecting {
        /// The client.
        client: ClientIdx,
        /// The connection.
        gen: u64,
    },
    /// The client stops using the connection without closing it (half-open).
    Abandoned {
        /// The client.
        client: ClientIdx,
        /// The connection.
        gen: u64,
    },
    /// A persistent client resumed without its session.
    SessionLost {
        /// The client.
        client: ClientIdx,
        /// The connection.
        gen: u64,
    },
    /// SUBACK for a filter.
    Subscribed {
        /// The client.
        client: ClientIdx,
        /// The connection.
        gen: u64,
        /// The filter.
        filter: String,
        /// Granted QoS.
        qos: QoS,
    },
    /// A message is published (first written).
    Published {
        /// The message.
        msg: MsgId,
        /// Topic.
        topic: String,
        /// QoS.
        qos: QoS,
        /// RETAIN.
        retain: bool,
        /// The publisher's connection.
        gen: u64,
    },
    /// A message is written again after a reconnection (DUP).
    Resent {
        /// The message.
        msg: MsgId,
        /// The publisher's connection.
        gen: u64,
    },
    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) received by the publisher.
    Completed {
        /// The message.
        msg: MsgId,
    },
    /// A message delivered to a subscriber's application.
    Delivered {
        /// The subscriber.
        client: ClientIdx,
        /// Its connection.
        gen: u64,
        /// The message.
        msg: MsgId,
        /// QoS received.
        qos: QoS,
        /// DUP flag.
        dup: bool,
        /// RETAIN flag.
        retain: bool,
        /// Topic.
        topic: String,
    },
    /// A QoS 2 PUBLISH with an id awaiting PUBREL (not delivered again).
    DuplicateSuppressed {
        /// The subscriber.
        client: ClientIdx,
        /// Its connection.
        gen: u64,
        /// The packet id.
        packet_id: u16,
    },
    /// A will delivered.
    WillDelivered {
        /// The subscriber.
        client: ClientIdx,
        /// Whose will.
        of: ClientIdx,
        /// Of which connection.
        of_gen: u64,
        /// QoS received (a QoS 1 copy may come twice).
        qos: QoS,
    },
    /// Something happened to a node or the network (faults, restarts, snapshots, leaders).
    Node {
        /// The node (0: the network or several).
        node: u64,
        /// What.
        what: String,
    },
}

/// The run's history and the violations found.
#[derive(Default)]
pub struct History {
    /// Events with their time (ms of simulated time).
    pub events: Vec<(u64, Ev)>,
    /// Violations, with their time.
    pub violations: Vec<(u64, String)>,
    /// How each client connection ended on the broker's side: whether its will was due, and
    /// when (ms).
    pub ended: std::collections::BTreeMap<(ClientIdx, u64), (bool, u64)>,
}

impl History {
    /// Records an event.
    pub fn push(&mut self, at: u64, ev: Ev) {
        self.events.push((at, ev));
    }

    /// Records something about a node or the network.
    pub fn node(&mut self, at: u64, node: u64, what: impl Into<String>) {
        self.events.push((
            at,
            Ev::Node {
                node,
                what: what.into(),
            },
        ));
    }

    /// Records a violation.
    pub fn violation(&mut self, at: u64, what: String) {
        self.violations.push((at, what));
    }

    /// Every event, as text.
    pub fn render_all(&self, _clients: &[ClientIdx], names: &[String]) -> String {
        let mut s = String::new();
        for (at, ev) in &self.events {
            let _ = writeln!(s, "{:>9.3}s {}", *at as f64 / 1000.0, describe(ev, names));
        }
        s
    }

    /// The events that mention any of `clients` or `msgs`, and every node event, as text: what
    /// a reader needs to follow a failure.
    pub fn render(&self, clients: &[ClientIdx], msgs: &[MsgId], names: &[String]) -> String {
        let mut s = String::new();
        for (at, ev) in &self.events {
            let relevant = match ev {
                Ev::Node { .. } => true,
                Ev::Published { msg, .. } | Ev::Resent { msg, .. } | Ev::Completed { msg } => {
                    msgs.contains(msg) || clients.contains(&msg.client)
                }
                Ev::Delivered { client, msg, .. } => msgs.contains(msg) || clients.contains(client),
                Ev::Connecting { client, .. }
                | Ev::Opened { client, .. }
                | Ev::Connected { client, .. }
                | Ev::Refused { client, .. }
                | Ev::Lost { client, .. }
                | Ev::Disconnecting { client, .. }
                | Ev::Abandoned { client, .. }
                | Ev::SessionLost { client, .. }
                | Ev::Subscribed { client, .. }
                | Ev::DuplicateSuppressed { client, .. } => clients.contains(client),
                Ev::WillDelivered { client, of, .. } => {
                    clients.contains(client) || clients.contains(of)
                }
            };
            if relevant {
                let _ = writeln!(s, "{:>9.3}s {}", *at as f64 / 1000.0, describe(ev, names));
            }
        }
        s
    }
}

fn name(names: &[String], c: ClientIdx) -> &str {
    names.get(c).map_or("?", String::as_str)
}

/// One event as a line of text.
pub fn describe(ev: &Ev, names: &[String]) -> String {
    let n = |c| name(names, c);
    match ev {
        Ev::Connecting { client, gen } => format!("{} #{gen} connecting", n(*client)),
        Ev::Opened { client, gen, node } => format!("{} #{gen} opened on node {node}", n(*client)),
        Ev::Connected {
            client,
            gen,
            present,
        } => format!(
            "{} #{gen} CONNACK 0 (session present {})",
            n(*client),
            u8::from(*present)
        ),
        Ev::Refused { client, gen, code } => match code {
            Some(c) => format!("{} #{gen} CONNACK {c}", n(*client)),
            None => format!("{} #{gen} no node answers", n(*client)),
        },
        Ev::Lost { client, gen } => format!("{} #{gen} connection lost", n(*client)),
        Ev::Disconnecting { client, gen } => format!("{} #{gen} DISCONNECT", n(*client)),
        Ev::Abandoned { client, gen } => format!("{} #{gen} abandoned (half-open)", n(*client)),
        Ev::SessionLost { client, gen } => format!("{} #{gen} SESSION LOST", n(*client)),
        Ev::Subscribed {
            client,
            gen,
            filter,
            qos,
        } => format!("{} #{gen} SUBACK {filter} q{}", n(*client), *qos as u8),
        Ev::Published {
            msg,
            topic,
            qos,
            retain,
            gen,
        } => format!(
            "{} #{gen} PUBLISH {msg} {topic} q{} r{}",
            n(msg.client),
            *qos as u8,
            u8::from(*retain)
        ),
        Ev::Resent { msg, gen } => format!("{} #{gen} PUBLISH {msg} again (DUP)", n(msg.client)),
        Ev::Completed { msg } => format!("{} {msg} completed", n(msg.client)),
        Ev::Delivered {
            client,
            gen,
            msg,
            qos,
            dup,
            retain,
            topic,
        } => format!(
            "{} #{gen} received {msg} {topic} q{} d{} r{}",
            n(*client),
            *qos as u8,
            u8::from(*dup),
            u8::from(*retain)
        ),
        Ev::DuplicateSuppressed {
            client,
            gen,
            packet_id,
        } => format!(
            "{} #{gen} duplicate QoS 2 id {packet_id} not delivered again",
            n(*client)
        ),
        Ev::WillDelivered {
            client,
            of,
            of_gen,
            qos,
        } => format!(
            "{} received the will of {} #{of_gen} q{}",
            n(*client),
            n(*of),
            *qos as u8
        ),
        Ev::Node { node, what } => {
            if *node == 0 {
                format!("-- {what}")
            } else {
                format!("-- node {node}: {what}")
            }
        }
    }
}
