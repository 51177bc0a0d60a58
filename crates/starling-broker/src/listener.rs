//! Accepting connections and handing them to connection actors on the worker arbiters.
//!
//! ```text
//!  accept ─▶ max_connections? ─▶ max_connections_per_ip? ─▶ worker (round-robin)
//!                                                             │ TCP: Connection at once
//!                                                             └ TLS / WS: handshake within
//!                                                               connect_timeout_secs, then
//!                                                               Connection
//! ```
//! A refused connection is closed at once, counted ([`Limit`]) and logged at most once per ten
//! seconds per listener. Handshakes run on the worker, so a slow one never holds up accepting.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::{debug, info, warn};

use crate::connection::transport::{Accepted, Handshake, HandshakeError};
use crate::connection::{Connection, MQTT_LOG};
use crate::metrics::{Counters, Limit, SecurityEvent};
use crate::Worker;

/// Binds `addr` with an explicit backlog (`TcpListener::bind` uses 128, which overflows under
/// connect bursts).
pub(crate) fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Live connection counts shared by every listener (for `max_connections` and
/// `max_connections_per_ip`), and connection ids.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) count: AtomicUsize,
    /// Open connections per IP; only kept when `max_connections_per_ip` is set.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Connection ids: a random 32-bit prefix per process, so that an id in the replicated state
    /// (a session's owner) never names a connection of a later run of this node.
    pub(crate) next_id: AtomicU64,
}

impl Live {
    pub(crate) fn new() -> Live {
        Live {
            count: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(u64::from(rand::random::<u32>()) << 32),
        }
    }

    /// Counts a connection from `ip` unless it has `max` already.
    fn admit_ip(&self, ip: IpAddr, max: usize) -> bool {
        let mut m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn release_ip(&self, ip: IpAddr) {
        let mut m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// Releases a connection's place in the live counts when the connection actor (or a failed
/// handshake) is dropped.
pub(crate) struct LiveGuard {
    live: Arc<Live>,
    ip: Option<IpAddr>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.live.count.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            self.live.release_ip(ip);
        }
    }
}

/// What an accept loop needs besides its socket.
pub(crate) struct AcceptContext {
    pub(crate) workers: Arc<[(ArbiterHandle, Arc<Worker>)]>,
    pub(crate) live: Arc<Live>,
    pub(crate) handshake: Arc<Handshake>,
    pub(crate) max_connections: usize,
    pub(crate) max_per_ip: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) counters: Arc<Counters>,
}

/// At most one line per ten seconds.
struct LogGate(Option<Instant>);

impl LogGate {
    fn open(&mut self) -> bool {
        let now = Instant::now();
        if self
            .0
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            return false;
        }
        self.0 = Some(now);
        true
    }
}

/// The accept loop of one listener.
pub(crate) async fn accept_loop(listener: TcpListener, cx: AcceptContext) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    let mut next = 0usize;
    let mut full_log = LogGate(None);
    let mut ip_log = LogGate(None);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, port, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if cx.live.count.load(Ordering::Relaxed) >= cx.max_connections {
            cx.counters.limit(Limit::MaxConnections);
            if full_log.open() {
                warn!(
                    limit = "max_connections",
                    max = cx.max_connections,
                    port,
                    "connection refused: max_connections ({}) reached",
                    cx.max_connections
                );
            }
            drop(stream);
            continue;
        }
        let ip = peer.ip();
        if cx.max_per_ip > 0 && !cx.live.admit_ip(ip, cx.max_per_ip) {
            cx.counters.limit(Limit::MaxConnectionsPerIp);
            if ip_log.open() {
                warn!(
                    limit = "max_connections_per_ip",
                    peer = %ip,
                    max = cx.max_per_ip,
                    port,
                    "connection from {ip} refused: max_connections_per_ip ({}) reached",
                    cx.max_per_ip
                );
            }
            drop(stream);
            continue;
        }
        cx.live.count.fetch_add(1, Ordering::Relaxed);
        let guard = LiveGuard {
            live: cx.live.clone(),
            ip: (cx.max_per_ip > 0).then_some(ip),
        };
        info!(target: MQTT_LOG, peer = %ip, port, "New connection from {ip} on port {port}.");
        let _ = stream.set_nodelay(true);
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot hand over accepted socket");
                continue;
            }
        };
        let id = cx.live.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (arbiter, worker) = cx.workers[next % cx.workers.len()].clone();
        next = next.wrapping_add(1);
        let handshake = cx.handshake.clone();
        let timeout = cx.connect_timeout;
        arbiter.spawn(async move {
            let tcp = match TcpStream::from_std(std_stream) {
                Ok(s) => s,
                Err(e) => return warn!(error = %e, "cannot register accepted socket"),
            };
            let accepted = if handshake.transport() == crate::config::Transport::Tcp {
                // The fast path: no handshake, no await.
                Accepted {
                    stream: crate::connection::transport::Stream::Tcp(tcp),
                    identity: None,
                }
            } else {
                match tokio::time::timeout(timeout, handshake.accept(tcp)).await {
                    Ok(Ok(a)) => a,
                    Ok(Err(e)) => {
                        let event = match e {
                            HandshakeError::Tls(_) => SecurityEvent::TlsHandshakeFailed,
                            HandshakeError::WebSocket(_) => SecurityEvent::WebSocketHandshakeFailed,
                        };
                        worker.counters.security(event);
                        return info!(peer = %peer, port, error = %e, "connection from {peer} closed: {e}");
                    }
                    Err(_) => {
                        worker.counters.limit(Limit::ConnectTimeout);
                        return info!(peer = %peer, port, limit = "connect_timeout_secs",
                            "connection from {peer} closed: handshake not done within connect_timeout_secs");
                    }
                }
            };
            debug!(peer = %peer, port, "connection handed to a worker");
            let _ = Connection::new(id, worker, accepted.stream, peer, guard, accepted.identity)
                .start();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_counts_are_released() {
        let live = Arc::new(Live::new());
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(live.admit_ip(ip, 2));
        assert!(live.admit_ip(ip, 2));
        assert!(!live.admit_ip(ip, 2));
        live.count.fetch_add(1, Ordering::Relaxed);
        drop(LiveGuard {
            live: live.clone(),
            ip: Some(ip),
        });
        assert!(live.admit_ip(ip, 2));
        assert!(live.admit_ip("10.1.2.4".parse().unwrap(), 2));
    }
}
