//! `[cluster]` settings.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

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
    /// Largest message accepted from or sent to a peer (a snapshot travels in one message).
    pub max_message_bytes: usize,
    /// Messages queued per peer before they are dropped (Raft retransmits).
    pub peer_queue: usize,
    /// Seconds the leader waits for an unreachable node before its sessions go offline and
    /// their wills are published (unless a client reconnected elsewhere meanwhile).
    pub node_down_secs: u64,
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
            max_message_bytes: 256 * 1024 * 1024,
            peer_queue: 4096,
            node_down_secs: 10,
        }
    }
}

/// A cluster setting is wrong.
#[derive(Debug, thiserror::Error)]
#[error("cluster configuration: {0}")]
pub struct ClusterConfigError(pub String);

impl ClusterConfig {
    /// Whether clustered mode is on (any peer configured).
    pub fn enabled(&self) -> bool {
        !self.peers.is_empty()
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
