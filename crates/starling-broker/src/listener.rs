//! Accepting TCP connections and handing them to connection actors on the worker arbiters.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::{info, warn};

use crate::connection::{Connection, MQTT_LOG};
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

/// Live connection count shared by every listener, for `max_connections`, and connection ids.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) count: AtomicUsize,
    /// Connection ids: a random 32-bit prefix per process, so that an id in the replicated state
    /// (a session's owner) never names a connection of a later run of this node.
    pub(crate) next_id: AtomicU64,
}

impl Live {
    pub(crate) fn new() -> Live {
        Live {
            count: AtomicUsize::new(0),
            next_id: AtomicU64::new(u64::from(rand::random::<u32>()) << 32),
        }
    }
}

/// Decrements the live count when a connection actor is dropped.
pub(crate) struct LiveGuard(pub(crate) Arc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The accept loop of one listener.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    workers: Arc<[(ArbiterHandle, Arc<Worker>)]>,
    live: Arc<Live>,
    max_connections: usize,
) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    let mut next = 0usize;
    let mut refused_logged = false;
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
        if live.count.load(Ordering::Relaxed) >= max_connections {
            if !refused_logged {
                warn!(
                    limit = max_connections,
                    "connection refused: max_connections reached"
                );
                refused_logged = true;
            }
            drop(stream);
            continue;
        }
        refused_logged = false;
        live.count.fetch_add(1, Ordering::Relaxed);
        let guard = LiveGuard(live.clone());
        info!(target: MQTT_LOG, peer = %peer.ip(), port, "New connection from {} on port {port}.", peer.ip());
        let _ = stream.set_nodelay(true);
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot hand over accepted socket");
                continue;
            }
        };
        let id = live.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (arbiter, worker) = workers[next % workers.len()].clone();
        next = next.wrapping_add(1);
        arbiter.spawn(async move {
            match TcpStream::from_std(std_stream) {
                Ok(s) => {
                    let _ = Connection::new(id, worker, s, peer, guard).start();
                }
                Err(e) => warn!(error = %e, "cannot register accepted socket"),
            }
        });
    }
}
