//! `[cluster]` settings.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::auth::MIN_SECRET_LEN;

/// The size of snapshot chunks unless `max_message_bytes` is smaller than four times it.
pub const DEFAULT_SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Settings of the clustered mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id (1, 2, ...). 0: derive it from the host name `<name>-<ordinal>` as
    /// ordinal + 1 (a StatefulSet pod `starling-2` is node 3).
    pub node_id: u64,
    /// Address the peer (gRPC) port listens on.
    pub listen: SocketAddr,
    /// Address peers use to reach this node; empty: `listen`.
    pub advertise: String,
    /// Cluster members as `id=host:port` (this node included).
    pub peers: Vec<String>,
    /// When the data directory is empty: start a new cluster whose first members are `peers`
    /// (true), or wait to be added by `starling cluster join` (false).
    pub bootstrap: bool,
    /// Admin HTTP endpoint (`/cluster/status`, membership operations); empty: none.
    pub admin_listen: String,
    /// Raft tick in milliseconds.
    pub tick_ms: u64,
    /// Ticks without a leader before an election (election timeout = tick_ms x this).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Largest message accepted from or sent to a peer. One log entry travels in one message,
    /// so it bounds the entries (`mqtt.max_packet_size` must leave room: see
    /// [`ClusterConfig::max_entry_bytes`]). Snapshots travel in chunks of
    /// `snapshot_chunk_bytes`, so they may be larger.
    pub max_message_bytes: usize,
    /// Size of the chunks a snapshot is sent in; at most half of `max_message_bytes`. 0: a
    /// quarter of `max_message_bytes`, at most 1 MiB (see [`ClusterConfig::snapshot_chunk`]).
    pub snapshot_chunk_bytes: usize,
    /// Largest snapshot this node accepts from a leader; a larger one is refused (and the
    /// refusal logged on both sides).
    pub max_snapshot_bytes: u64,
    /// Messages queued per peer before they are dropped (Raft retransmits).
    pub peer_queue: usize,
    /// Seconds the leader waits for an unreachable node before its sessions go offline and
    /// their wills are published (unless a client reconnected elsewhere meanwhile).
    pub node_down_secs: u64,
    /// The cluster secret (at least 16 bytes) every node shares: peers authenticate every call
    /// with it (docs/security.md, "Peers"). Prefer `secret_file` or `STARLING_CLUSTER_SECRET`
    /// to a value in a configuration file.
    pub secret: Secret,
    /// A file holding the cluster secret (surrounding whitespace is ignored); "": none.
    pub secret_file: String,
    /// Run clustered mode without peer authentication: any process that reaches the peer port
    /// can join and inject Raft messages. Only for tests on a trusted host; logged at start.
    pub insecure: bool,
}

/// Bytes a Raft message may need beyond the one log entry it carries (header, envelope).
pub const RAFT_MESSAGE_OVERHEAD: usize = 64 * 1024;

/// A secret setting: shown as `***` by `Debug`, so that it never reaches a log line.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: 0,
            listen: SocketAddr::from(([127, 0, 0, 1], 7946)),
            advertise: String::new(),
            peers: Vec::new(),
            bootstrap: true,
            admin_listen: String::new(),
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_message_bytes: 260 * 1024 * 1024,
            snapshot_chunk_bytes: 0,
            max_snapshot_bytes: 1024 * 1024 * 1024,
            peer_queue: 4096,
            node_down_secs: 10,
            secret: Secret::default(),
            secret_file: String::new(),
            insecure: false,
        }
    }
}

/// A cluster setting is wrong.
#[derive(Debug, thiserror::Error)]
#[error("cluster configuration: {0}")]
pub struct ClusterConfigError(pub String);

impl ClusterConfig {
    /// Checks the settings that depend on each other.
    ///
    /// # Errors
    /// `snapshot_chunk_bytes` is set over half of `max_message_bytes` (a chunk and its framing
    /// must fit one message).
    pub fn validate(&self) -> Result<(), ClusterConfigError> {
        if self.snapshot_chunk_bytes > self.max_message_bytes / 2 {
            return Err(ClusterConfigError(format!(
                "cluster.snapshot_chunk_bytes ({}) must be at most half of \
                 cluster.max_message_bytes ({}); 0 chooses a quarter of it, up to 1 MiB",
                self.snapshot_chunk_bytes, self.max_message_bytes
            )));
        }
        Ok(())
    }

    /// The size of snapshot chunks: `snapshot_chunk_bytes`, or if that is 0 a quarter of
    /// `max_message_bytes`, at most [`DEFAULT_SNAPSHOT_CHUNK_BYTES`].
    pub fn snapshot_chunk(&self) -> usize {
        match self.snapshot_chunk_bytes {
            0 => (self.max_message_bytes / 4).clamp(1, DEFAULT_SNAPSHOT_CHUNK_BYTES),
            n => n,
        }
    }

    /// Whether clustered mode is on (any peer configured).
    pub fn enabled(&self) -> bool {
        !self.peers.is_empty()
    }

    /// The largest log entry a peer message can carry: `max_message_bytes` less what a Raft
    /// message needs around one entry ([`RAFT_MESSAGE_OVERHEAD`]).
    pub fn max_entry_bytes(&self) -> usize {
        self.max_message_bytes.saturating_sub(RAFT_MESSAGE_OVERHEAD)
    }

    /// Parses `peers` into `(id, address)`.
    ///
    /// # Errors
    /// An entry that is not `id=host:port`, a zero or repeated id.
    pub fn peer_list(&self) -> Result<Vec<(u64, String)>, ClusterConfigError> {
        let mut out: Vec<(u64, String)> = Vec::new();
        for p in self
            .peers
            .iter()
            .flat_map(|p| p.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (id, addr) = p
                .split_once('=')
                .ok_or_else(|| ClusterConfigError(format!("peer {p:?} is not id=host:port")))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| ClusterConfigError(format!("peer {p:?}: bad id")))?;
            if id == 0 || out.iter().any(|(i, _)| *i == id) {
                return Err(ClusterConfigError(format!(
                    "peer {p:?}: ids must be unique and non-zero"
                )));
            }
            if !addr.contains(':') {
                return Err(ClusterConfigError(format!(
                    "peer {p:?}: address needs a port"
                )));
            }
            out.push((id, addr.trim().to_string()));
        }
        Ok(out)
    }

    /// This node's id, from `node_id` or the host name.
    ///
    /// # Errors
    /// `node_id` is 0 and the host name does not end in `-<number>`.
    pub fn resolve_node_id(&self, hostname: &str) -> Result<u64, ClusterConfigError> {
        if self.node_id != 0 {
            return Ok(self.node_id);
        }
        node_id_from_hostname(hostname).ok_or_else(|| {
            ClusterConfigError(format!(
                "node_id is not set and host name {hostname:?} is not of the form <name>-<ordinal>"
            ))
        })
    }

    /// The cluster secret, from `secret` or `secret_file`; `None` when `insecure` is set and
    /// neither is.
    ///
    /// # Errors
    /// Neither is set (and `insecure` is not), both are, the file cannot be read, or the
    /// secret is shorter than [`MIN_SECRET_LEN`] bytes.
    pub fn peer_secret(&self) -> Result<Option<Vec<u8>>, ClusterConfigError> {
        let secret = match (self.secret.0.is_empty(), self.secret_file.is_empty()) {
            (false, false) => {
                return Err(ClusterConfigError(
                    "set cluster.secret or cluster.secret_file, not both".into(),
                ))
            }
            (false, true) => self.secret.0.trim().as_bytes().to_vec(),
            (true, false) => {
                let text = std::fs::read(&self.secret_file).map_err(|e| {
                    ClusterConfigError(format!("cluster.secret_file {:?}: {e}", self.secret_file))
                })?;
                text.trim_ascii().to_vec()
            }
            (true, true) if self.insecure => return Ok(None),
            (true, true) => {
                return Err(ClusterConfigError(
                    "clustered mode needs a cluster secret so that only authenticated peers are \
                     accepted: set cluster.secret_file (or STARLING_CLUSTER_SECRET), e.g. to \
                     the output of `head -c 32 /dev/urandom | base64`, the same on every node; \
                     or cluster.insecure = true to run without peer authentication"
                        .into(),
                ))
            }
        };
        if secret.len() < MIN_SECRET_LEN {
            return Err(ClusterConfigError(format!(
                "the cluster secret has {} bytes; at least {MIN_SECRET_LEN} are needed",
                secret.len()
            )));
        }
        Ok(Some(secret))
    }

    /// The address peers use for this node.
    pub fn advertised(&self) -> String {
        if self.advertise.is_empty() {
            self.listen.to_string()
        } else {
            self.advertise.clone()
        }
    }
}

/// `starling-2` → 3 (StatefulSet ordinal + 1; Raft ids are non-zero). The host name may be
/// fully qualified.
pub fn node_id_from_hostname(hostname: &str) -> Option<u64> {
    let short = hostname.split('.').next()?;
    let (_, ordinal) = short.rsplit_once('-')?;
    ordinal.parse::<u64>().ok().map(|o| o + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_from_statefulset_hostname() {
        assert_eq!(node_id_from_hostname("starling-0"), Some(1));
        assert_eq!(
            node_id_from_hostname("starling-2.starling-headless.default.svc.cluster.local"),
            Some(3)
        );
        assert_eq!(node_id_from_hostname("my-broker-x"), None);
        assert_eq!(node_id_from_hostname("broker"), None);
    }

    #[test]
    fn the_secret_comes_from_one_place_and_is_long_enough() {
        let base = ClusterConfig {
            peers: vec!["1=a:1".into()],
            ..Default::default()
        };
        assert!(base.peer_secret().is_err(), "no secret and not insecure");
        let insecure = ClusterConfig {
            insecure: true,
            ..base.clone()
        };
        assert_eq!(insecure.peer_secret().unwrap(), None);
        let short = ClusterConfig {
            secret: Secret("too short".into()),
            ..base.clone()
        };
        assert!(short.peer_secret().is_err());
        let ok = ClusterConfig {
            secret: Secret(" 0123456789abcdef \n".into()),
            ..base.clone()
        };
        assert_eq!(ok.peer_secret().unwrap().unwrap(), b"0123456789abcdef");
        assert_eq!(format!("{:?}", ok.secret), "***");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "fedcba9876543210fedcba\n").unwrap();
        let from_file = ClusterConfig {
            secret_file: file.display().to_string(),
            ..base.clone()
        };
        assert_eq!(
            from_file.peer_secret().unwrap().unwrap(),
            b"fedcba9876543210fedcba"
        );
        let both = ClusterConfig {
            secret: Secret("0123456789abcdef".into()),
            ..from_file.clone()
        };
        assert!(both.peer_secret().is_err());
        std::fs::write(&file, "\n").unwrap();
        assert!(from_file.peer_secret().is_err(), "empty file");
        let missing = ClusterConfig {
            secret_file: dir.path().join("nope").display().to_string(),
            ..base
        };
        assert!(missing.peer_secret().is_err());
    }

    #[test]
    fn a_snapshot_chunk_must_fit_well_within_a_message() {
        let defaults = ClusterConfig::default();
        defaults.validate().unwrap();
        assert_eq!(defaults.snapshot_chunk(), DEFAULT_SNAPSHOT_CHUNK_BYTES);
        // A small message cap: the default chunk follows it.
        let small = ClusterConfig {
            max_message_bytes: 256 * 1024,
            ..Default::default()
        };
        small.validate().unwrap();
        assert_eq!(small.snapshot_chunk(), 64 * 1024);
        // An explicit chunk that does not fit is refused, naming both keys.
        let e = ClusterConfig {
            snapshot_chunk_bytes: 200 * 1024,
            ..small.clone()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("cluster.snapshot_chunk_bytes") && e.contains("cluster.max_message_bytes"),
            "{e}"
        );
        let explicit = ClusterConfig {
            snapshot_chunk_bytes: 100 * 1024,
            ..small
        };
        explicit.validate().unwrap();
        assert_eq!(explicit.snapshot_chunk(), 100 * 1024);
    }

    #[test]
    fn peers_parse_and_validate() {
        let c = ClusterConfig {
            peers: vec!["1=a:1, 2=b:2".into(), "3=c:3".into()],
            ..Default::default()
        };
        assert_eq!(c.peer_list().unwrap().len(), 3);
        for bad in ["x=a:1", "0=a:1", "1=a", "1=a:1,1=b:2", "a:1"] {
            let c = ClusterConfig {
                peers: vec![bad.into()],
                ..Default::default()
            };
            assert!(c.peer_list().is_err(), "{bad}");
        }
    }
}
