//! Broker settings. Every limit is a field with a default; the binary fills them from the TOML
//! file, `STARLING_*` variables and flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use starling_state::StateConfig;

/// How a listener carries MQTT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Plain TCP.
    #[default]
    Tcp,
    /// TLS (1.2 or 1.3) over TCP.
    Tls,
    /// WebSocket (subprotocol `mqtt`) over TCP.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

impl Transport {
    /// True for `tls` and `wss`.
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    /// True for `ws` and `wss`.
    pub fn is_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }
}

/// One `[[mqtt.listener]]` table: a listener with its transport and, for TLS, its certificates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port.
    pub addr: SocketAddr,
    /// `tcp`, `tls`, `ws` or `wss`.
    #[serde(default)]
    pub transport: Transport,
    /// Server certificate chain (PEM), for `tls` and `wss`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Private key of the certificate (PEM: PKCS#8, PKCS#1 or SEC1), for `tls` and `wss`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to. Set, the listener asks
    /// clients for a certificate.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: refuse TLS handshakes without a valid client certificate (true), or
    /// accept clients without one (false; a certificate that is presented must still be valid).
    #[serde(default = "yes")]
    pub require_client_cert: bool,
    /// With `client_ca_file`: the client certificate's subject CN is the client's user name, and
    /// the CONNECT user name and password are ignored (Mosquitto's `use_identity_as_username`).
    #[serde(default)]
    pub use_identity_as_username: bool,
}

fn yes() -> bool {
    true
}

/// `allow_anonymous`: `true`, `false`, or `"auto"` (allowed only when every listener is on a
/// loopback address, as Mosquitto 2 does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Anonymous {
    /// Decided by the listeners' addresses.
    #[default]
    Auto,
    /// Clients without a user name are accepted.
    Allow,
    /// Clients without a user name get CONNACK 5.
    Deny,
}

impl Serialize for Anonymous {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Anonymous::Auto => s.serialize_str("auto"),
            Anonymous::Allow => s.serialize_bool(true),
            Anonymous::Deny => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for Anonymous {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Anonymous, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Anonymous::Allow),
            Raw::Bool(false) => Ok(Anonymous::Deny),
            // Strings too, so that STARLING_MQTT_ALLOW_ANONYMOUS=true works.
            Raw::Text(t) => match t.trim() {
                "auto" => Ok(Anonymous::Auto),
                "true" | "1" | "yes" | "on" => Ok(Anonymous::Allow),
                "false" | "0" | "no" | "off" => Ok(Anonymous::Deny),
                other => Err(serde::de::Error::custom(format!(
                    "allow_anonymous: expected true, false or \"auto\", got {other:?}"
                ))),
            },
        }
    }
}

/// Settings of the broker core.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Plain TCP MQTT listeners.
    pub listeners: Vec<SocketAddr>,
    /// Further listeners with a transport each (`[[mqtt.listener]]`): TLS, WebSocket, or TCP.
    pub listener: Vec<ListenerConfig>,
    /// Worker threads (arbiters) for connections and router shards; 0 = one per CPU.
    pub workers: usize,
    /// Largest packet accepted, in bytes (fixed header included). Larger ones close the
    /// connection before their body is read.
    pub max_packet_size: usize,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout_secs: u64,
    /// Longest client id accepted from a 3.1.1 client (3.1 clients: 23, by the specification).
    pub max_client_id_len: usize,
    /// Outbound QoS 1/2 messages in flight per client.
    pub max_inflight: usize,
    /// PUBLISHes of one client still owed something (QoS 1/2 ones awaiting their
    /// acknowledgement, retained QoS 0 ones awaiting their commit) before the broker stops
    /// reading from that client (backpressure).
    pub max_inflight_in: usize,
    /// Messages queued per session beyond the in-flight window.
    pub max_queued_messages: usize,
    /// Bytes held per session, in flight or queued (topic + payload + 64 per message).
    pub max_queued_bytes: usize,
    /// Bytes waiting in a connection's write buffer before QoS 0 messages to it are dropped.
    pub max_write_buffer: usize,
    /// Most simultaneous client connections.
    pub max_connections: usize,
    /// Most simultaneous connections from one IP address; 0 = no limit.
    pub max_connections_per_ip: usize,
    /// Longest topic name or filter accepted, in bytes (PUBLISH and SUBSCRIBE).
    pub max_topic_length: usize,
    /// Most levels in a topic name or filter; 0 = no limit.
    pub max_topic_levels: usize,
    /// Most subscriptions (distinct filters) per client; 0 = no limit.
    pub max_subscriptions: usize,
    /// PUBLISH packets per second accepted from one client before the broker stops reading from
    /// it for a while (backpressure, nothing dropped); 0 = no limit.
    pub max_publish_rate: u32,
    /// Burst allowed above `max_publish_rate` (token bucket size); 0 = one second's worth.
    pub publish_burst: u32,
    /// Interval of `$SYS` updates in seconds; 0 disables them.
    pub sys_interval_secs: u64,
    /// Seconds after which an abandoned persistent session is removed; 0 = never (3.1.1).
    pub session_expiry_secs: u64,
    /// Highest Session Expiry Interval an MQTT 5 client gets, in seconds; a client asking for
    /// more gets this (CONNACK says so). 0 = never lowered.
    pub max_session_expiry_secs: u32,
    /// Seconds to wait for a commit (persistent connect, durable publish) before failing.
    pub commit_timeout_secs: u64,
    /// Log entries between state snapshots (which let the log be compacted).
    pub snapshot_entries: u64,
    /// Bytes of log entries between state snapshots: a snapshot is taken after
    /// `snapshot_entries` entries or this many bytes (or the size of the last snapshot, if
    /// larger), whichever comes first, so that large messages cannot grow the log (in memory
    /// and on disk) without bound, while a large state is not rewritten too often.
    pub snapshot_bytes: u64,
    /// Accept connections without a user name: `true`, `false` or `"auto"` (only if every
    /// listener is on a loopback address).
    pub allow_anonymous: Anonymous,
    /// Password file (`user:hash` lines, Mosquitto-compatible); empty = user names and
    /// passwords are not checked.
    pub password_file: PathBuf,
    /// ACL file (Mosquitto `acl_file` syntax); empty = every client may publish and subscribe
    /// to everything.
    pub acl_file: PathBuf,
    /// A persistent session can only be resumed (or discarded) by a client with the user name
    /// that created it; others get CONNACK 5.
    pub bind_session_to_user: bool,
    /// Threads verifying passwords (PBKDF2, slow by design); 0 = half the CPUs, at least one.
    pub auth_threads: usize,
    /// Password verifications waiting for a thread before new connections get CONNACK 3.
    pub max_pending_auth: usize,
    /// Listen backlog.
    pub backlog: u32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listeners: vec![SocketAddr::from(([127, 0, 0, 1], 1883))],
            listener: Vec::new(),
            workers: 0,
            max_packet_size: 256 * 1024 * 1024,
            connect_timeout_secs: 10,
            max_client_id_len: 65535,
            max_inflight: 20,
            max_inflight_in: 1000,
            max_session_expiry_secs: 0,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            max_write_buffer: 4 * 1024 * 1024,
            max_connections: 1_000_000,
            max_connections_per_ip: 0,
            max_topic_length: 65_535,
            max_topic_levels: 0,
            max_subscriptions: 0,
            max_publish_rate: 0,
            publish_burst: 0,
            sys_interval_secs: 10,
            session_expiry_secs: 0,
            commit_timeout_secs: 5,
            snapshot_entries: 100_000,
            snapshot_bytes: 16 * 1024 * 1024,
            allow_anonymous: Anonymous::Auto,
            password_file: PathBuf::new(),
            acl_file: PathBuf::new(),
            bind_session_to_user: false,
            auth_threads: 0,
            max_pending_auth: 1024,
            backlog: 4096,
        }
    }
}

/// The queue limits in force for every connection of the node: the replicated ones (see
/// [`StateConfig`]), which the session store publishes here when they change, so that clean
/// sessions' local queues and every session's in-flight window follow the cluster's values and
/// not a node's local configuration.
#[derive(Debug)]
pub struct SharedLimits {
    max_queued_messages: std::sync::atomic::AtomicUsize,
    max_inflight: std::sync::atomic::AtomicUsize,
    max_queued_bytes: std::sync::atomic::AtomicUsize,
}

impl SharedLimits {
    /// Limits starting at `l`.
    pub fn new(l: &StateConfig) -> SharedLimits {
        use std::sync::atomic::AtomicUsize;
        SharedLimits {
            max_queued_messages: AtomicUsize::new(l.max_queued_messages),
            max_inflight: AtomicUsize::new(l.max_inflight),
            max_queued_bytes: AtomicUsize::new(l.max_queued_bytes),
        }
    }

    /// Publishes new limits.
    pub fn set(&self, l: &StateConfig) {
        use std::sync::atomic::Ordering::Relaxed;
        self.max_queued_messages
            .store(l.max_queued_messages, Relaxed);
        self.max_inflight.store(l.max_inflight, Relaxed);
        self.max_queued_bytes.store(l.max_queued_bytes, Relaxed);
    }

    /// The limits in force.
    pub fn get(&self) -> StateConfig {
        use std::sync::atomic::Ordering::Relaxed;
        StateConfig {
            max_queued_messages: self.max_queued_messages.load(Relaxed),
            max_inflight: self.max_inflight.load(Relaxed),
            max_queued_bytes: self.max_queued_bytes.load(Relaxed),
        }
    }
}

/// A setting is out of range.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {key}: {reason}")]
pub struct ConfigError {
    /// The setting's name.
    pub key: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl BrokerConfig {
    /// Checks ranges.
    ///
    /// # Errors
    /// The first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, reason: &str| {
            Err(ConfigError {
                key,
                reason: reason.to_string(),
            })
        };
        if self.listeners.is_empty() && self.listener.is_empty() {
            return err("listeners", "at least one listener is needed");
        }
        for l in &self.listener {
            let tls = l.transport.is_tls();
            if tls && (l.cert_file.is_none() || l.key_file.is_none()) {
                return err(
                    "listener",
                    &format!(
                        "{}: a tls or wss listener needs cert_file and key_file",
                        l.addr
                    ),
                );
            }
            if !tls && (l.cert_file.is_some() || l.key_file.is_some() || l.client_ca_file.is_some())
            {
                return err(
                    "listener",
                    &format!(
                        "{}: cert_file, key_file and client_ca_file need transport tls or wss",
                        l.addr
                    ),
                );
            }
            if l.use_identity_as_username && l.client_ca_file.is_none() {
                return err(
                    "listener",
                    &format!("{}: use_identity_as_username needs client_ca_file", l.addr),
                );
            }
        }
        if self.max_topic_length == 0 || self.max_topic_length > 65_535 {
            return err("max_topic_length", "must be between 1 and 65535");
        }
        if self.max_pending_auth == 0 {
            return err("max_pending_auth", "must be at least 1");
        }
        if self.max_packet_size < 64 || self.max_packet_size > 268_435_460 {
            return err("max_packet_size", "must be between 64 bytes and 256 MiB");
        }
        if self.max_inflight == 0 || self.max_inflight > 65_535 {
            return err("max_inflight", "must be between 1 and 65535");
        }
        if self.max_inflight_in == 0 {
            return err("max_inflight_in", "must be at least 1");
        }
        if self.max_client_id_len < 23 {
            return err("max_client_id_len", "must be at least 23");
        }
        if self.max_queued_messages == 0 || self.max_queued_bytes < 1024 {
            return err(
                "max_queued_messages",
                "queues need room for at least one message and 1 KiB",
            );
        }
        if self.commit_timeout_secs == 0 {
            return err("commit_timeout_secs", "must be at least 1");
        }
        Ok(())
    }

    /// Worker count with 0 resolved to the number of CPUs.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Every listener address with its transport: `listeners` (TCP) first, then `listener`.
    pub fn all_listeners(&self) -> Vec<(SocketAddr, Transport)> {
        self.listeners
            .iter()
            .map(|a| (*a, Transport::Tcp))
            .chain(self.listener.iter().map(|l| (l.addr, l.transport)))
            .collect()
    }

    /// Whether clients without a user name are accepted, with `"auto"` resolved: allowed only if
    /// every listener is on a loopback address.
    pub fn anonymous_allowed(&self) -> bool {
        match self.allow_anonymous {
            Anonymous::Allow => true,
            Anonymous::Deny => false,
            Anonymous::Auto => self
                .all_listeners()
                .iter()
                .all(|(a, _)| a.ip().is_loopback()),
        }
    }

    /// The password file, if one is configured.
    pub fn password_file(&self) -> Option<&std::path::Path> {
        (!self.password_file.as_os_str().is_empty()).then_some(self.password_file.as_path())
    }

    /// The ACL file, if one is configured.
    pub fn acl_file(&self) -> Option<&std::path::Path> {
        (!self.acl_file.as_os_str().is_empty()).then_some(self.acl_file.as_path())
    }

    /// Password verification threads with 0 resolved.
    pub fn auth_thread_count(&self) -> usize {
        if self.auth_threads > 0 {
            self.auth_threads
        } else {
            (self.worker_count() / 2).max(1)
        }
    }

    /// The limits this configuration asks the replicated state to apply. On a single node they
    /// become a `SetLimits` entry when they differ from the state's; in a cluster only the
    /// explicit operation (`starling cluster limits`) changes the replicated ones.
    pub fn state_config(&self) -> StateConfig {
        StateConfig {
            max_queued_messages: self.max_queued_messages,
            max_inflight: self.max_inflight,
            max_queued_bytes: self.max_queued_bytes,
        }
    }

    /// CONNECT deadline.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.max(1))
    }

    /// Commit deadline.
    pub fn commit_timeout(&self) -> Duration {
        Duration::from_secs(self.commit_timeout_secs)
    }

    /// How long a connection waits for the store's answer to a request. The store itself
    /// refuses what did not commit within `commit_timeout` (checked every half second), so its
    /// answer, and its bookkeeping, normally come first; this is the net behind it.
    pub fn answer_timeout(&self) -> Duration {
        self.commit_timeout() + Duration::from_secs(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(addr: &str, transport: Transport) -> ListenerConfig {
        ListenerConfig {
            addr: addr.parse().unwrap(),
            transport,
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            require_client_cert: true,
            use_identity_as_username: false,
        }
    }

    #[test]
    fn anonymous_auto_follows_the_listeners() {
        let mut c = BrokerConfig::default();
        assert!(c.anonymous_allowed(), "localhost-only default");
        c.listener.push(listener("[::1]:8080", Transport::Ws));
        assert!(c.anonymous_allowed());
        c.listener.push(listener("0.0.0.0:8081", Transport::Ws));
        assert!(
            !c.anonymous_allowed(),
            "a non-loopback listener turns it off"
        );
        c.allow_anonymous = Anonymous::Allow;
        assert!(c.anonymous_allowed());
        c = BrokerConfig {
            listeners: vec!["10.0.0.1:1883".parse().unwrap()],
            ..BrokerConfig::default()
        };
        assert!(!c.anonymous_allowed());
    }

    #[test]
    fn tls_listeners_need_their_files() {
        let mut c = BrokerConfig::default();
        c.listener.push(listener("127.0.0.1:8883", Transport::Tls));
        assert_eq!(c.validate().unwrap_err().key, "listener");
        let l = c.listener.last_mut().unwrap();
        l.cert_file = Some("c.pem".into());
        l.key_file = Some("k.pem".into());
        c.validate().unwrap();
        c.listener[0].use_identity_as_username = true;
        assert!(c.validate().is_err());
        let mut ws = listener("127.0.0.1:8080", Transport::Ws);
        ws.client_ca_file = Some("ca.pem".into());
        let c = BrokerConfig {
            listener: vec![ws],
            ..BrokerConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
