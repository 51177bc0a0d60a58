//! Proptest strategies shared by the integration tests: valid packets of every type.

#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use starling_codec::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, ProtocolVersion, Publish, QoS, SubAck,
    Subscribe, SubscribeFilter, SubscribeReturnCode, Unsubscribe,
};

pub(crate) fn protocol() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(ProtocolVersion::V3_1), Just(ProtocolVersion::V3_1_1)]
}

pub(crate) fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

pub(crate) fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

/// Any UTF-8 string without U+0000 (what CONNECT strings and filters may be).
pub(crate) fn string() -> impl Strategy<Value = ByteString> {
    prop_oneof!["[a-z0-9/+#$ _-]{0,12}", "[^\u{0}]{0,12}",].prop_map(ByteString::from)
}

/// A valid topic name: non-empty, no wildcards, no U+0000.
pub(crate) fn topic_name() -> impl Strategy<Value = ByteString> {
    prop_oneof!["[a-z0-9/$]{1,16}", "[^+#\u{0}]{1,12}",].prop_map(ByteString::from)
}

pub(crate) fn binary(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

pub(crate) fn will() -> impl Strategy<Value = LastWill> {
    (topic_name(), binary(32), qos(), any::<bool>()).prop_map(|(topic, payload, qos, retain)| {
        LastWill {
            topic,
            payload,
            qos,
            retain,
        }
    })
}

/// A valid CONNECT of either protocol version (3.1.1: no password without a user name).
pub(crate) fn connect() -> impl Strategy<Value = Connect> {
    (
        protocol(),
        any::<bool>(),
        any::<u16>(),
        string(),
        option::of(will()),
        option::of(string()),
        option::of(binary(16)),
    )
        .prop_map(
            |(protocol, clean_session, keep_alive, client_id, will, username, password)| {
                let password = if protocol == ProtocolVersion::V3_1_1 && username.is_none() {
                    None
                } else {
                    password
                };
                Connect {
                    protocol,
                    clean_session,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                }
            },
        )
}

pub(crate) fn connect_return_code() -> impl Strategy<Value = ConnectReturnCode> {
    (0u8..=5).prop_map(|c| ConnectReturnCode::from_u8(c).expect("0..=5"))
}

/// A valid PUBLISH (packet id 0 exactly at QoS 0; DUP only with QoS > 0).
pub(crate) fn publish() -> impl Strategy<Value = Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        prop_oneof![binary(64), binary(400)],
    )
        .prop_map(|(qos, dup, retain, topic, id, payload)| {
            let has_id = qos != QoS::AtMostOnce;
            Publish {
                dup: dup && has_id,
                qos,
                retain,
                topic,
                packet_id: if has_id { id } else { 0 },
                payload,
            }
        })
}

pub(crate) fn subscribe_return_code() -> impl Strategy<Value = SubscribeReturnCode> {
    prop_oneof![
        qos().prop_map(SubscribeReturnCode::Success),
        Just(SubscribeReturnCode::Failure)
    ]
}

/// A valid packet of any of the 14 types.
pub(crate) fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        connect().prop_map(|c| Packet::Connect(Box::new(c))),
        (any::<bool>(), connect_return_code()).prop_map(|(session_present, code)| {
            Packet::ConnAck(ConnAck {
                session_present,
                code,
            })
        }),
        publish().prop_map(Packet::Publish),
        packet_id().prop_map(Packet::PubAck),
        packet_id().prop_map(Packet::PubRec),
        packet_id().prop_map(Packet::PubRel),
        packet_id().prop_map(Packet::PubComp),
        (
            packet_id(),
            vec(
                (string(), qos()).prop_map(|(filter, qos)| SubscribeFilter { filter, qos }),
                1..5
            )
        )
            .prop_map(|(packet_id, filters)| Packet::Subscribe(Subscribe { packet_id, filters })),
        (packet_id(), vec(subscribe_return_code(), 1..5)).prop_map(|(packet_id, return_codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                return_codes,
            })
        }),
        (packet_id(), vec(string(), 1..5)).prop_map(|(packet_id, filters)| {
            Packet::Unsubscribe(Unsubscribe { packet_id, filters })
        }),
        packet_id().prop_map(Packet::UnsubAck),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        Just(Packet::Disconnect),
    ]
}

/// Encodes `p`, checking that `encoded_len` is what was written.
pub(crate) fn encode(p: &Packet) -> BytesMut {
    let mut out = BytesMut::new();
    p.encode(&mut out).expect("a valid packet encodes");
    assert_eq!(out.len(), p.encoded_len(), "encoded_len of {p:?}");
    out
}
