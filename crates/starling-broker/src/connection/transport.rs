//! What a connection reads from and writes to: a plain TCP socket, or a TLS / WebSocket / WSS
//! stream, and the handshakes that produce them.
//!
//! ```text
//!  accept ─▶ Tcp ───────────────────────────────────────────────▶ Stream::Tcp   (the fast path:
//!         ─▶ TLS handshake (rustls, 1.2/1.3) ─▶ client CN? ───────▶ Stream::Tls    readiness +
//!         ─▶ HTTP upgrade (subprotocol mqtt) ────────────────────▶ Stream::Ws     try_read/
//!         ─▶ TLS handshake ─▶ HTTP upgrade ───────────────────────▶ Stream::Wss    try_write)
//! ```
//!
//! [`Stream::Tcp`] keeps the readiness-based IO of `io.rs` unchanged: no boxing, no dynamic
//! dispatch, no extra copy. The other variants are boxed (so the connection stays small) and
//! polled through [`Stream::poll_read_other`] / [`Stream::poll_write_other`]: TLS reads decrypt
//! into the connection's read buffer; WebSocket binary frames are appended to it (MQTT packets
//! may span frames, and a frame may hold several packets); writes leave as one binary frame per
//! write batch, taking the write buffer's bytes without a copy.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use bytestring::ByteString;
use futures_util::{Sink, Stream as _};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::config::{ListenerConfig, Transport};

/// A connection's byte stream.
pub(crate) enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
    /// WebSocket over TCP.
    Ws(Box<WebSocketStream<TcpStream>>),
    /// WebSocket over TLS.
    Wss(Box<WebSocketStream<TlsStream<TcpStream>>>),
}

/// Appends the next binary frames' bytes to `buf`; `Ok(0)` at the end of the stream.
fn poll_ws_read<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    loop {
        match ready!(Pin::new(&mut *ws).poll_next(cx)) {
            // Empty frames would read as end of stream: skip them.
            Some(Ok(Message::Binary(b))) if b.is_empty() => {}
            Some(Ok(Message::Binary(b))) => {
                buf.extend_from_slice(&b);
                return Poll::Ready(Ok(b.len()));
            }
            Some(Ok(Message::Text(_))) => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "text frame on an MQTT WebSocket",
                )))
            }
            // Pings are answered by tungstenite; a Close is answered, then the stream ends.
            Some(Ok(_)) => {}
            Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            None => return Poll::Ready(Ok(0)),
        }
    }
}

/// Sends `buf` as one binary frame and flushes.
fn poll_ws_write<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut ws = Pin::new(ws);
    if !buf.is_empty() {
        ready!(ws.as_mut().poll_ready(cx)).map_err(io::Error::other)?;
        let n = buf.len();
        ws.as_mut()
            .start_send(Message::Binary(buf.split().freeze()))
            .map_err(io::Error::other)?;
        return match ws.poll_flush(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(io::Error::other(e))),
            // Flushed later by `poll_flush_other`.
            _ => Poll::Ready(Ok(n)),
        };
    }
    ws.poll_flush(cx)
        .map(|r| r.map(|()| 0).map_err(io::Error::other))
}

impl Stream {
    /// Reads into `buf` (not for [`Stream::Tcp`], which `io.rs` reads by readiness). `Ok(0)` is
    /// the end of the stream.
    pub(crate) fn poll_read_other(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Tcp(_) => Poll::Ready(Err(io::Error::other("poll_read_other on TCP"))),
            Stream::Tls(s) => tokio_util::io::poll_read_buf(Pin::new(&mut **s), cx, buf),
            Stream::Ws(ws) => poll_ws_read(ws, cx, buf),
            Stream::Wss(ws) => poll_ws_read(ws, cx, buf),
        }
    }

    /// Writes from `buf`, advancing it by what was taken (not for [`Stream::Tcp`]).
    pub(crate) fn poll_write_other(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Tcp(_) => Poll::Ready(Err(io::Error::other("poll_write_other on TCP"))),
            Stream::Tls(s) => {
                let n = ready!(Pin::new(&mut **s).poll_write(cx, buf))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                buf.advance(n);
                Poll::Ready(Ok(n))
            }
            Stream::Ws(ws) => poll_ws_write(ws, cx, buf),
            Stream::Wss(ws) => poll_ws_write(ws, cx, buf),
        }
    }

    /// Pushes out what the TLS or WebSocket layer still holds (a no-op for TCP).
    pub(crate) fn poll_flush_other(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(_) => Poll::Ready(Ok(())),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::Ws(ws) => Pin::new(&mut **ws).poll_flush(cx).map_err(io::Error::other),
            Stream::Wss(ws) => Pin::new(&mut **ws).poll_flush(cx).map_err(io::Error::other),
        }
    }

    /// Closes politely (TLS close_notify, WebSocket Close frame); errors are ignored.
    pub(crate) fn poll_shutdown_other(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Stream::Tcp(_) => {}
            Stream::Tls(s) => {
                let _ = ready!(Pin::new(&mut **s).poll_shutdown(cx));
            }
            Stream::Ws(ws) => {
                let _ = ready!(Pin::new(&mut **ws).poll_close(cx));
            }
            Stream::Wss(ws) => {
                let _ = ready!(Pin::new(&mut **ws).poll_close(cx));
            }
        }
        Poll::Ready(())
    }

    /// True for plain TCP.
    pub(crate) fn is_tcp(&self) -> bool {
        matches!(self, Stream::Tcp(_))
    }
}

/// How a listener turns an accepted socket into a [`Stream`].
pub(crate) struct Handshake {
    transport: Transport,
    tls: Option<TlsAcceptor>,
    /// The client certificate's CN is the user name.
    identity_as_username: bool,
    max_packet_size: usize,
}

/// An accepted connection after its handshake.
pub(crate) struct Accepted {
    pub(crate) stream: Stream,
    /// With `use_identity_as_username`: `Some(cn)` from the client certificate (`Some(None)`
    /// without one). `None`: the CONNECT user name counts.
    pub(crate) identity: Option<Option<ByteString>>,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("WebSocket upgrade failed: {0}")]
    WebSocket(tokio_tungstenite::tungstenite::Error),
}

/// A TLS listener's certificates cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {reason}")]
pub struct TlsSetupError {
    what: &'static str,
    path: String,
    reason: String,
}

fn pem_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let err = |reason: String| TlsSetupError {
        what,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// The rustls configuration of a `tls` / `wss` listener: TLS 1.2 and 1.3 only, the ring
/// provider, and client certificates verified against `client_ca_file` when it is set.
pub(crate) fn server_config(l: &ListenerConfig) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (Some(cert_file), Some(key_file)) = (&l.cert_file, &l.key_file) else {
        return Err(TlsSetupError {
            what: "listener",
            path: l.addr.to_string(),
            reason: "cert_file and key_file are needed".into(),
        });
    };
    let certs = pem_certs(cert_file, "cert_file")?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsSetupError {
        what: "key_file",
        path: key_file.display().to_string(),
        reason: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsSetupError {
            what: "listener",
            path: l.addr.to_string(),
            reason: e.to_string(),
        })?;
    let verifier = match &l.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in pem_certs(ca, "client_ca_file")? {
                roots.add(c).map_err(|e| TlsSetupError {
                    what: "client_ca_file",
                    path: ca.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if l.require_client_cert {
                v
            } else {
                v.allow_unauthenticated()
            };
            v.build().map_err(|e| TlsSetupError {
                what: "client_ca_file",
                path: ca.display().to_string(),
                reason: e.to_string(),
            })?
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let config = builder
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| TlsSetupError {
            what: "cert_file",
            path: cert_file.display().to_string(),
            reason: e.to_string(),
        })?;
    Ok(Arc::new(config))
}

/// The subprotocol to answer with: `mqtt` (3.1.1), else `mqttv3.1` (3.1 clients), else none.
fn choose_subprotocol(req: &Request) -> Option<&'static str> {
    let offered: Vec<String> = req
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_ascii_lowercase()))
        .collect();
    ["mqtt", "mqttv3.1"]
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p))
}

impl Handshake {
    /// The handshake of a listener.
    pub(crate) fn new(
        transport: Transport,
        tls: Option<Arc<ServerConfig>>,
        identity_as_username: bool,
        max_packet_size: usize,
    ) -> Handshake {
        Handshake {
            transport,
            tls: tls.map(TlsAcceptor::from),
            identity_as_username,
            max_packet_size,
        }
    }

    /// The listener's transport.
    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    fn ws_config(&self) -> WebSocketConfig {
        // A message or frame never needs to be larger than the largest MQTT packet (plus a
        // little framing slack); small eager buffers keep idle WebSocket connections cheap.
        let max = self.max_packet_size.saturating_add(1024);
        WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
            .read_buffer_size(4096)
            .write_buffer_size(0)
    }

    async fn websocket<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        s: S,
    ) -> Result<WebSocketStream<S>, HandshakeError> {
        // The error type is tungstenite's callback signature.
        #[allow(clippy::result_large_err)]
        let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
            if let Some(p) = choose_subprotocol(req) {
                resp.headers_mut()
                    .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
            }
            Ok(resp)
        };
        tokio_tungstenite::accept_hdr_async_with_config(s, callback, Some(self.ws_config()))
            .await
            .map_err(HandshakeError::WebSocket)
    }

    async fn tls(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, HandshakeError> {
        let Some(acceptor) = &self.tls else {
            return Err(HandshakeError::Tls(io::Error::other(
                "no TLS configuration",
            )));
        };
        acceptor.accept(tcp).await.map_err(HandshakeError::Tls)
    }

    fn identity(&self, tls: &TlsStream<TcpStream>) -> Option<Option<ByteString>> {
        if !self.identity_as_username {
            return None;
        }
        let cn = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| starling_auth::x509::subject_common_name(c))
            .map(ByteString::from);
        Some(cn)
    }

    /// Runs the handshake on an accepted socket (the caller bounds it in time).
    pub(crate) async fn accept(&self, tcp: TcpStream) -> Result<Accepted, HandshakeError> {
        Ok(match self.transport {
            Transport::Tcp => Accepted {
                stream: Stream::Tcp(tcp),
                identity: None,
            },
            Transport::Tls => {
                let tls = self.tls(tcp).await?;
                let identity = self.identity(&tls);
                Accepted {
                    stream: Stream::Tls(Box::new(tls)),
                    identity,
                }
            }
            Transport::Ws => Accepted {
                stream: Stream::Ws(Box::new(self.websocket(tcp).await?)),
                identity: None,
            },
            Transport::Wss => {
                let tls = self.tls(tcp).await?;
                let identity = self.identity(&tls);
                Accepted {
                    stream: Stream::Wss(Box::new(self.websocket(tls).await?)),
                    identity,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(protocols: &[&str]) -> Request {
        let mut b = Request::builder().uri("/mqtt");
        for p in protocols {
            b = b.header("Sec-WebSocket-Protocol", *p);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn subprotocol_choice() {
        assert_eq!(choose_subprotocol(&req(&["mqtt"])), Some("mqtt"));
        assert_eq!(choose_subprotocol(&req(&["chat, MQTT"])), Some("mqtt"));
        assert_eq!(choose_subprotocol(&req(&["mqttv3.1"])), Some("mqttv3.1"));
        assert_eq!(
            choose_subprotocol(&req(&["mqttv3.1", "mqtt"])),
            Some("mqtt")
        );
        assert_eq!(choose_subprotocol(&req(&["chat"])), None);
        assert_eq!(choose_subprotocol(&req(&[])), None);
    }
}
