//! One MQTT connection over a raw tokio socket.
//!
//! ```text
//!  socket ──read_buf──▶ rbuf ──Decoder::decode──▶ Packet ──▶ caller
//!  caller ──encode──▶ wbuf (many packets) ──write_all (one per batch)──▶ socket
//! ```
//!
//! Reads go into the connection's own `BytesMut` (`read_buf` is cancel-safe, so a read can sit
//! in a `select!`); writes are appended to one `BytesMut` and flushed with a single `write_all`.
//! Every wait takes a deadline.

// #[PerformanceCriticalPath]: every benchmark message passes through here.

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use starling_codec::{
    ConnAck, Connect, ConnectReasonCode, Decoder, Disconnect, Packet, ProtocolVersion, QoS,
    SubAckReasonCode, Subscribe, SubscribeFilter,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout_at, Instant};

use crate::BenchError;

/// Largest packet accepted from the broker.
const MAX_PACKET: usize = 16 << 20;

/// Read buffer capacity reserved before each read.
const READ_CHUNK: usize = 64 << 10;

/// A client connection: socket, read buffer, decoder, write buffer.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
    /// Capacity reserved in the read buffer before each read.
    read_chunk: usize,
    /// Name used in error messages (the client id once known).
    name: String,
}

impl Conn {
    /// Opens a TCP connection to `addr`, from `bind` if given (port chosen by the kernel).
    ///
    /// # Errors
    /// [`BenchError::Io`] if the connection fails, [`BenchError::Timeout`] past `deadline`.
    pub async fn open(
        addr: SocketAddr,
        bind: Option<IpAddr>,
        deadline: Instant,
    ) -> Result<Conn, BenchError> {
        let connect = async {
            match bind {
                None => TcpStream::connect(addr).await,
                Some(ip) => {
                    let socket = if ip.is_ipv4() {
                        TcpSocket::new_v4()?
                    } else {
                        TcpSocket::new_v6()?
                    };
                    socket.bind(SocketAddr::new(ip, 0))?;
                    socket.connect(addr).await
                }
            }
        };
        let stream = timeout_at(deadline, connect)
            .await
            .map_err(|_| BenchError::Timeout(format!("TCP connect to {addr}")))?
            .map_err(|e| BenchError::io(format!("connect to {addr}"), e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| BenchError::io("set TCP_NODELAY", e))?;
        Ok(Conn {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            decoder: Decoder::new(MAX_PACKET),
            read_chunk: READ_CHUNK,
            name: addr.to_string(),
        })
    }

    /// Sets the capacity reserved before each read (default 64 KiB). Idle connections held by
    /// the thousand use a small one so that the load generator's memory stays small.
    pub fn set_read_chunk(&mut self, bytes: usize) {
        self.read_chunk = bytes.max(16);
    }

    /// Opens a connection and completes CONNECT / CONNACK (MQTT 3.1.1).
    ///
    /// # Errors
    /// As [`Conn::open`] and [`Conn::handshake`].
    pub async fn connect(
        addr: SocketAddr,
        bind: Option<IpAddr>,
        client_id: &str,
        clean_session: bool,
        keep_alive: u16,
        deadline: Instant,
    ) -> Result<(Conn, ConnAck), BenchError> {
        let mut c = Conn::open(addr, bind, deadline).await?;
        let ack = c
            .handshake(client_id, clean_session, keep_alive, deadline)
            .await?;
        Ok((c, ack))
    }

    /// Sends CONNECT and waits for CONNACK, which must accept the connection.
    ///
    /// # Errors
    /// [`BenchError::Protocol`] for a refusal or an unexpected packet, IO errors, timeouts.
    pub async fn handshake(
        &mut self,
        client_id: &str,
        clean_session: bool,
        keep_alive: u16,
        deadline: Instant,
    ) -> Result<ConnAck, BenchError> {
        self.name = client_id.to_string();
        let connect = Connect {
            protocol: ProtocolVersion::V3_1_1,
            clean_start: clean_session,
            keep_alive,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        };
        self.decoder.set_protocol(ProtocolVersion::V3_1_1);
        self.push(&Packet::Connect(Box::new(connect)))?;
        self.flush(deadline).await?;
        match self.recv(deadline).await? {
            Packet::ConnAck(a) if a.code == ConnectReasonCode::Success => Ok(*a),
            Packet::ConnAck(a) => Err(BenchError::Protocol(format!(
                "{client_id}: CONNACK refused: {:?}",
                a.code
            ))),
            p => Err(BenchError::Protocol(format!(
                "{client_id}: expected CONNACK, got {:?}",
                p.packet_type()
            ))),
        }
    }

    /// Subscribes to `filters` and waits for the SUBACK; returns the granted codes.
    ///
    /// # Errors
    /// [`BenchError::Protocol`] if a filter is refused or the reply is not the SUBACK; IO
    /// errors; timeouts.
    pub async fn subscribe(
        &mut self,
        filters: &[(&str, QoS)],
        packet_id: u16,
        deadline: Instant,
    ) -> Result<Vec<SubAckReasonCode>, BenchError> {
        let sub = Subscribe {
            packet_id,
            filters: filters
                .iter()
                .map(|(f, q)| SubscribeFilter::new((*f).into(), *q))
                .collect(),
            properties: Default::default(),
        };
        self.push(&Packet::Subscribe(sub))?;
        self.flush(deadline).await?;
        // Only fresh sessions subscribe (a resumed session is not subscribed again), so nothing
        // may come before the SUBACK.
        match self.recv(deadline).await? {
            Packet::SubAck(a) if a.packet_id == packet_id => {
                if a.reason_codes.contains(&SubAckReasonCode::UnspecifiedError) {
                    return Err(BenchError::Protocol(format!(
                        "{}: subscription refused",
                        self.name
                    )));
                }
                Ok(a.reason_codes)
            }
            p => Err(BenchError::Protocol(format!(
                "{}: expected SUBACK, got {:?}",
                self.name,
                p.packet_type()
            ))),
        }
    }

    /// Appends a packet to the write buffer.
    ///
    /// # Errors
    /// [`BenchError::Protocol`] if the packet cannot be encoded (a bug in the caller).
    pub fn push(&mut self, p: &Packet) -> Result<(), BenchError> {
        p.encode(ProtocolVersion::V3_1_1, &mut self.wbuf)
            .map_err(|e| BenchError::Protocol(format!("encode {:?}: {e}", p.packet_type())))
    }

    /// The write buffer, for encoders that write straight into it.
    pub fn wbuf(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// Writes the whole write buffer with one `write_all` and clears it.
    ///
    /// # Errors
    /// IO errors; [`BenchError::Timeout`] past `deadline`.
    pub async fn flush(&mut self, deadline: Instant) -> Result<(), BenchError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        timeout_at(deadline, self.stream.write_all(&self.wbuf))
            .await
            .map_err(|_| BenchError::Timeout(format!("{}: write", self.name)))?
            .map_err(|e| BenchError::io(format!("{}: write", self.name), e))?;
        self.wbuf.clear();
        Ok(())
    }

    /// Reads once into the read buffer (cancel-safe); returns the bytes read.
    ///
    /// # Errors
    /// [`BenchError::Closed`] at end of stream, IO errors.
    pub async fn read_some(&mut self) -> Result<usize, BenchError> {
        self.rbuf.reserve(self.read_chunk);
        let n = self
            .stream
            .read_buf(&mut self.rbuf)
            .await
            .map_err(|e| BenchError::io(format!("{}: read", self.name), e))?;
        if n == 0 {
            return Err(BenchError::Closed(self.name.clone()));
        }
        Ok(n)
    }

    /// Reads what is available without waiting; returns the bytes read (0: nothing there).
    ///
    /// # Errors
    /// [`BenchError::Closed`] at end of stream, IO errors.
    pub fn try_read_some(&mut self) -> Result<usize, BenchError> {
        self.rbuf.reserve(self.read_chunk);
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => Err(BenchError::Closed(self.name.clone())),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(BenchError::io(format!("{}: read", self.name), e)),
        }
    }

    /// Waits until the socket may be readable (cancel-safe).
    ///
    /// # Errors
    /// IO errors.
    pub async fn readable(&self) -> Result<(), BenchError> {
        self.stream
            .readable()
            .await
            .map_err(|e| BenchError::io(format!("{}: poll", self.name), e))
    }

    /// Decodes the next whole packet of the read buffer, if there is one.
    ///
    /// # Errors
    /// [`BenchError::Protocol`] for bytes that are not a valid packet.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, BenchError> {
        self.decoder
            .decode(&mut self.rbuf)
            .map_err(|e| BenchError::Protocol(format!("{}: decode: {e}", self.name)))
    }

    /// Waits for the next packet.
    ///
    /// # Errors
    /// As [`Conn::read_some`] and [`Conn::next_packet`]; [`BenchError::Timeout`] past
    /// `deadline`.
    pub async fn recv(&mut self, deadline: Instant) -> Result<Packet, BenchError> {
        loop {
            if let Some(p) = self.next_packet()? {
                return Ok(p);
            }
            timeout_at(deadline, self.read_some()).await.map_err(|_| {
                BenchError::Timeout(format!("{}: waiting for a packet", self.name))
            })??;
        }
    }

    /// Sends DISCONNECT (best effort) and closes the connection.
    pub async fn disconnect(mut self, deadline: Instant) {
        if self
            .push(&Packet::Disconnect(Disconnect::default()))
            .is_ok()
        {
            let _ = self.flush(deadline).await;
        }
        let _ = timeout_at(deadline, self.stream.shutdown()).await;
    }
}

/// A `QoS` from a wire value (anything above 2 is treated as 2).
pub fn qos_of(v: u8) -> QoS {
    QoS::from_u8(v).unwrap_or(QoS::ExactlyOnce)
}
