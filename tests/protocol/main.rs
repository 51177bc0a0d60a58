//! Single-node protocol behaviour, one test per behaviour of `brief/protocol.md`, against the real
//! `starling` binary on an ephemeral port.
//!
//! Each module covers one area; every test starts its own broker. Real clients (rumqttc) are used
//! where the behaviour is visible to them, the raw client where the assertion is about exact
//! packets or about input a real client refuses to produce.

#[path = "../common/mod.rs"]
mod common;

mod backpressure;
mod connect;
mod keepalive;
mod mqtt5;
mod publish;
mod retained;
mod session;
mod startup;
mod subscribe;
mod sys;
mod will;
