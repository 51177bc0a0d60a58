//! Failover: a persistent session continues on any surviving node with no message lost and no
//! QoS 2 message delivered twice (`docs/cluster.md`, the four exactly-once rules), checked
//! with [`starling_testkit::StrictClient`], a client that itself follows the protocol across
//! reconnects, against three real `starling` processes on loopback.
//!
//! - `delivery`: cross-node delivery (QoS 0/1/2, wildcards, retained, order) and takeover of
//!   a session across nodes.
//! - `mqtt5`: an MQTT 5 session with a Session Expiry Interval survives its node's `kill -9`
//!   and resumes on another node, with what was published to it meanwhile.
//! - `stages`: `kill -9` at each stage of a QoS 2 (and QoS 1) flow, both directions, the node
//!   killed being the publisher's, the subscriber's, or the leader.
//! - `soak`: 20,000 sequence-numbered QoS 2 messages while nodes are killed and restarted at
//!   random (bounded by `STARLING_SOAK_MESSAGES`, `STARLING_SOAK_SECS`).
//! - `partition`: the leader cut off from the two others (`kill -STOP` of either side, and a
//!   real partition with iptables where the machine allows it); the minority refuses visibly,
//!   the majority goes on, nothing is lost after healing.
//! - `wills`: the will of a client whose node dies is published exactly once (node down for
//!   good, or restarted at once), and not if the client resumed elsewhere in time.
//!
//! Figures are printed as `MEASURE ...` lines (`cargo test -p starling --test failover --
//! --nocapture`). Chaos runs print their seed (`STARLING_TEST_SEED` replays one).

mod check;
mod netsplit;
mod support;

mod delivery;
mod mqtt5;
mod partition;
mod soak;
mod stages;
mod wills;
