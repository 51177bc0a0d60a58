//! A raw MQTT client over a plain socket: sends any packet or any bytes, decodes what comes back.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use starling_codec::{
    ConnAck, Connect, Decoder, LastWill, Packet, ProtocolVersion, Publish, QoS, SubAckReasonCode,
    Subscribe, SubscribeFilter,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why [`RawClient::recv`] returned no packet.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvError {
    /// Nothing within the timeout.
    Timeout,
    /// The broker closed the connection.
    Closed,
    /// The broker sent something undecodable.
    Decode(String),
}

/// A client that speaks packets, not sessions.
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
}

/// Default wait for an expected packet.
pub const TIMEOUT: Duration = Duration::from_secs(5);

impl RawClient {
    /// Opens a TCP connection.
    pub async fn open(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect to broker");
        stream.set_nodelay(true).expect("nodelay");
        RawClient {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::new(usize::MAX >> 4),
        }
    }

    /// Opens a connection and completes CONNECT/CONNACK; returns the CONNACK.
    pub async fn connect(addr: SocketAddr, client_id: &str, clean: bool) -> (RawClient, ConnAck) {
        Self::connect_with(
            addr,
            connect_packet(client_id, clean, ProtocolVersion::V3_1_1, 60, None),
        )
        .await
    }

    /// Opens a connection, sends `connect` and waits for CONNACK.
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
        let mut c = Self::open(addr).await;
        c.decoder.set_protocol(connect.protocol);
        c.send(&Packet::Connect(Box::new(connect))).await;
        match c.recv().await {
            Ok(Packet::ConnAck(a)) => (c, *a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Sends a packet, encoded for the protocol of the CONNECT sent by
    /// [`RawClient::connect_with`] (3.1.1 before or without it).
    pub async fn send(&mut self, p: &Packet) {
        let version = self.decoder.protocol().unwrap_or(ProtocolVersion::V3_1_1);
        let mut out = BytesMut::new();
        p.encode(version, &mut out).expect("encodable packet");
        self.send_raw(&out).await;
    }

    /// Sends bytes as they are. Errors are ignored: the broker may have closed already.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Receives the next packet within [`TIMEOUT`].
    pub async fn recv(&mut self) -> Result<Packet, RecvError> {
        self.recv_within(TIMEOUT).await
    }

    /// Receives the next packet within `timeout`.
    pub async fn recv_within(&mut self, timeout: Duration) -> Result<Packet, RecvError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(RecvError::Decode(e.to_string())),
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(RecvError::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(RecvError::Closed),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Waits for the broker to close the connection, skipping packets; true if it did in time.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Err(RecvError::Closed) | Err(RecvError::Decode(_)) => return true,
                Err(RecvError::Timeout) => return false,
                Ok(_) => {}
            }
        }
    }

    /// SUBSCRIBE and wait for the SUBACK's return codes.
    pub async fn subscribe(
        &mut self,
        packet_id: u16,
        filters: &[(&str, QoS)],
    ) -> Vec<SubAckReasonCode> {
        let filters = filters
            .iter()
            .map(|(f, q)| SubscribeFilter::new((*f).into(), *q))
            .collect();
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            filters,
            properties: Default::default(),
        }))
        .await;
        loop {
            match self.recv().await {
                Ok(Packet::SubAck(a)) if a.packet_id == packet_id => return a.reason_codes,
                Ok(_) => {}
                Err(e) => panic!("no SUBACK: {e:?}"),
            }
        }
    }

    /// Sends a PUBLISH.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        packet_id: u16,
    ) {
        let p = Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { packet_id },
            payload: bytes::Bytes::copy_from_slice(payload),
            properties: Default::default(),
        };
        self.send(&Packet::Publish(p)).await;
    }

    /// Receives the next PUBLISH, skipping other packets.
    pub async fn next_publish(&mut self) -> Result<Publish, RecvError> {
        loop {
            match self.recv().await? {
                Packet::Publish(p) => return Ok(p),
                _ => continue,
            }
        }
    }
}

/// A CONNECT packet.
pub fn connect_packet(
    client_id: &str,
    clean: bool,
    protocol: ProtocolVersion,
    keep_alive: u16,
    will: Option<LastWill>,
) -> Connect {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive,
        client_id: client_id.into(),
        will,
        username: None,
        password: None,
        properties: Default::default(),
    }
}
