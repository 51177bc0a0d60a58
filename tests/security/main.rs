//! Client security against the real `starling` binary: authentication (password files, CONNACK
//! 4 / 5, anonymous access), ACLs (publish, subscribe, retained messages, wills, patterns,
//! reload on SIGHUP), TLS (1.2 / 1.3, client certificates, certificate CN as user name),
//! MQTT over WebSocket (plain and TLS), session binding, the limits against hostile clients, and
//! `starling passwd`. docs/security.md describes the behaviour tested here.
//!
//! Test certificates are generated per test with rcgen; password hashes use few PBKDF2
//! iterations (except where the cost itself is tested) so that the suite stays fast in debug
//! builds. Tests needing an outside tool print a loud SKIPPED line without it: paho-mqtt for
//! Python (a failure instead with `STARLING_REQUIRE_INTEROP=1`, as in tests/interop), and
//! `mosquitto_passwd` (package `mosquitto`; always a skip, CI installs only the clients).

#[path = "../common/mod.rs"]
mod common;
mod support;

mod acl;
mod auth;
mod limits;
mod passwd;
mod session;
mod tls;
mod websocket;
