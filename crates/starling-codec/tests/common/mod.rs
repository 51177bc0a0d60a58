//! Proptest strategies shared by the integration tests: valid packets of every type, for
//! 3.1 / 3.1.1 ([`packet`]) and for 5.0 with arbitrary properties ([`packet_v5`]).

#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use starling_codec::topic;
use starling_codec::*;

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
    (topic_name(), binary(32), qos(), any::<bool>())
        .prop_map(|(topic, payload, qos, retain)| LastWill::new(topic, payload, qos, retain))
}

/// A valid CONNECT of 3.1 or 3.1.1 (3.1.1: no password without a user name).
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
            |(protocol, clean_start, keep_alive, client_id, will, username, password)| {
                let password = if protocol == ProtocolVersion::V3_1_1 && username.is_none() {
                    None
                } else {
                    password
                };
                Connect {
                    protocol,
                    clean_start,
                    keep_alive,
                    properties: ConnectProperties::default(),
                    client_id,
                    will,
                    username,
                    password,
                }
            },
        )
}

/// One of the six codes 3.1 / 3.1.1 CONNACKs carry.
pub(crate) fn connect_return_code() -> impl Strategy<Value = ConnectReasonCode> {
    (0u8..=5).prop_map(|c| ConnectReasonCode::from_v3_return_code(c).expect("0..=5"))
}

/// A valid 3.1 / 3.1.1 PUBLISH (packet id 0 exactly at QoS 0; DUP only with QoS > 0).
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
                properties: PublishProperties::default(),
                payload,
            }
        })
}

/// The SUBACK codes of 3.1.1: granted QoS or 0x80.
pub(crate) fn subscribe_return_code() -> impl Strategy<Value = SubAckReasonCode> {
    prop_oneof![
        qos().prop_map(SubAckReasonCode::granted),
        Just(SubAckReasonCode::UnspecifiedError)
    ]
}

/// A valid 3.1 / 3.1.1 packet of any of the 14 types.
pub(crate) fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        connect().prop_map(|c| Packet::Connect(Box::new(c))),
        (any::<bool>(), connect_return_code()).prop_map(|(session_present, code)| {
            Packet::ConnAck(Box::new(ConnAck::new(session_present, code)))
        }),
        publish().prop_map(Packet::Publish),
        packet_id().prop_map(|id| Packet::PubAck(PubAck::new(id))),
        packet_id().prop_map(|id| Packet::PubRec(PubRec::new(id))),
        packet_id().prop_map(|id| Packet::PubRel(PubRel::new(id))),
        packet_id().prop_map(|id| Packet::PubComp(PubComp::new(id))),
        (
            packet_id(),
            vec(
                (string(), qos()).prop_map(|(filter, qos)| SubscribeFilter::new(filter, qos)),
                1..5
            )
        )
            .prop_map(|(packet_id, filters)| Packet::Subscribe(Subscribe {
                packet_id,
                properties: SubscribeProperties::default(),
                filters
            })),
        (packet_id(), vec(subscribe_return_code(), 1..5)).prop_map(|(packet_id, reason_codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties: AckProperties::default(),
                reason_codes,
            })
        }),
        (packet_id(), vec(string(), 1..5)).prop_map(|(packet_id, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties: UnsubscribeProperties::default(),
                filters,
            })
        }),
        packet_id().prop_map(|id| Packet::UnsubAck(UnsubAck::new(id))),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        Just(Packet::Disconnect(Disconnect::default())),
    ]
}

/// Encodes `p` for 3.1.1 (the same bytes as 3.1 but for CONNECT, which names its own version),
/// checking that `encoded_len` is what was written.
pub(crate) fn encode(p: &Packet) -> BytesMut {
    encode_in(p, ProtocolVersion::V3_1_1)
}

/// Encodes `p` for `version`, checking that `encoded_len` is what was written.
pub(crate) fn encode_in(p: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    p.encode(version, &mut out).expect("a valid packet encodes");
    assert_eq!(out.len(), p.encoded_len(version), "encoded_len of {p:?}");
    out
}

// ---- 5.0 ----

pub(crate) fn user_properties() -> impl Strategy<Value = Vec<UserProperty>> {
    prop_oneof![
        2 => Just(Vec::new()),
        1 => vec((string(), string()), 1..4),
    ]
}

fn nonzero_u16() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn nonzero_u32() -> impl Strategy<Value = u32> {
    prop_oneof![1..=300u32, 1..=u32::MAX]
}

pub(crate) fn subscription_identifier() -> impl Strategy<Value = u32> {
    prop_oneof![1..=127u32, 1..=268_435_455u32]
}

fn payload_format() -> impl Strategy<Value = PayloadFormat> {
    prop_oneof![Just(PayloadFormat::Unspecified), Just(PayloadFormat::Utf8)]
}

/// Authentication method and data: data only with a method.
fn authentication() -> impl Strategy<Value = (Option<ByteString>, Option<Bytes>)> {
    (option::of(string()), option::of(binary(8)))
        .prop_map(|(method, data)| (method.clone(), data.filter(|_| method.is_some())))
}

pub(crate) fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        (
            option::of(any::<u32>()),
            option::of(nonzero_u16()),
            option::of(nonzero_u32()),
            option::of(any::<u16>()),
        ),
        (
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            user_properties(),
            authentication(),
        ),
    )
        .prop_map(
            |(
                (
                    session_expiry_interval,
                    receive_maximum,
                    maximum_packet_size,
                    topic_alias_maximum,
                ),
                (request_response_information, request_problem_information, user_properties, auth),
            )| ConnectProperties {
                session_expiry_interval,
                receive_maximum,
                maximum_packet_size,
                topic_alias_maximum,
                request_response_information,
                request_problem_information,
                user_properties,
                authentication_method: auth.0,
                authentication_data: auth.1,
            },
        )
}

pub(crate) fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        option::of(any::<u32>()),
        option::of(payload_format()),
        option::of(any::<u32>()),
        option::of(string()),
        option::of(topic_name()),
        option::of(binary(8)),
        user_properties(),
    )
        .prop_map(
            |(
                will_delay_interval,
                payload_format_indicator,
                message_expiry_interval,
                content_type,
                response_topic,
                correlation_data,
                user_properties,
            )| WillProperties {
                will_delay_interval,
                payload_format_indicator,
                message_expiry_interval,
                content_type,
                response_topic,
                correlation_data,
                user_properties,
            },
        )
}

pub(crate) fn connect_v5() -> impl Strategy<Value = Connect> {
    (
        any::<bool>(),
        any::<u16>(),
        connect_properties(),
        string(),
        option::of((will(), will_properties())),
        option::of(string()),
        option::of(binary(16)),
    )
        .prop_map(
            |(clean_start, keep_alive, properties, client_id, will, username, password)| {
                Connect {
                    protocol: ProtocolVersion::V5,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id,
                    will: will.map(|(mut w, p)| {
                        w.properties = p;
                        w
                    }),
                    username,
                    // 5.0 allows a password without a user name.
                    password,
                }
            },
        )
}

pub(crate) fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    (
        (
            option::of(any::<u32>()),
            option::of(nonzero_u16()),
            option::of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
            option::of(any::<bool>()),
            option::of(nonzero_u32()),
            option::of(string()),
        ),
        (
            option::of(any::<u16>()),
            option::of(string()),
            user_properties(),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
        ),
        (
            option::of(any::<u16>()),
            option::of(string()),
            option::of(string()),
            authentication(),
        ),
    )
        .prop_map(|(a, b, c)| ConnAckProperties {
            session_expiry_interval: a.0,
            receive_maximum: a.1,
            maximum_qos: a.2,
            retain_available: a.3,
            maximum_packet_size: a.4,
            assigned_client_identifier: a.5,
            topic_alias_maximum: b.0,
            reason_string: b.1,
            user_properties: b.2,
            wildcard_subscription_available: b.3,
            subscription_identifiers_available: b.4,
            shared_subscription_available: b.5,
            server_keep_alive: c.0,
            response_information: c.1,
            server_reference: c.2,
            authentication_method: c.3 .0,
            authentication_data: c.3 .1,
        })
}

pub(crate) fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        option::of(payload_format()),
        option::of(any::<u32>()),
        option::of(nonzero_u16()),
        option::of(topic_name()),
        option::of(binary(8)),
        user_properties(),
        prop_oneof![2 => Just(Vec::new()), 1 => vec(subscription_identifier(), 1..4)],
        option::of(string()),
    )
        .prop_map(
            |(
                payload_format_indicator,
                message_expiry_interval,
                topic_alias,
                response_topic,
                correlation_data,
                user_properties,
                subscription_identifiers,
                content_type,
            )| PublishProperties {
                payload_format_indicator,
                message_expiry_interval,
                topic_alias,
                response_topic,
                correlation_data,
                user_properties,
                subscription_identifiers,
                content_type,
            },
        )
}

/// A valid 5.0 PUBLISH: the topic may be empty when a Topic Alias is present.
pub(crate) fn publish_v5() -> impl Strategy<Value = Publish> {
    (publish(), publish_properties(), any::<bool>()).prop_map(|(mut p, properties, empty)| {
        if empty && properties.topic_alias.is_some() {
            p.topic = ByteString::new();
        }
        p.properties = properties;
        p
    })
}

pub(crate) fn ack_properties() -> impl Strategy<Value = AckProperties> {
    prop_oneof![
        1 => Just(AckProperties::default()),
        2 => (option::of(string()), user_properties()).prop_map(|(reason_string, user_properties)| {
            AckProperties {
                reason_string,
                user_properties,
            }
        }),
    ]
}

pub(crate) fn subscription_options() -> impl Strategy<Value = SubscriptionOptions> {
    (qos(), any::<bool>(), any::<bool>(), 0u8..=2).prop_map(
        |(qos, no_local, retain_as_published, rh)| SubscriptionOptions {
            qos,
            no_local,
            retain_as_published,
            retain_handling: RetainHandling::from_u8(rh).expect("0..=2"),
        },
    )
}

/// A filter with 5.0 options (No Local never on a shared subscription).
pub(crate) fn subscribe_filter_v5() -> impl Strategy<Value = SubscribeFilter> {
    (
        prop_oneof![
            3 => string(),
            1 => "[a-z]{1,4}/[a-z+#]{1,4}".prop_map(|f| ByteString::from(format!("$share/{f}"))),
        ],
        subscription_options(),
    )
        .prop_map(|(filter, mut options)| {
            if topic::is_shared(&filter) {
                options.no_local = false;
            }
            SubscribeFilter { filter, options }
        })
}

fn code<T: Copy + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    select(all)
}

/// A valid 5.0 packet of any of the 15 types, with arbitrary properties and reason codes.
pub(crate) fn packet_v5() -> impl Strategy<Value = Packet> {
    prop_oneof![
        connect_v5().prop_map(|c| Packet::Connect(Box::new(c))),
        (
            any::<bool>(),
            code(ConnectReasonCode::ALL),
            connack_properties()
        )
            .prop_map(
                |(session_present, code, properties)| Packet::ConnAck(Box::new(ConnAck {
                    session_present,
                    code,
                    properties
                }))
            ),
        publish_v5().prop_map(Packet::Publish),
        (packet_id(), code(PubAckReasonCode::ALL), ack_properties()).prop_map(
            |(packet_id, reason, properties)| Packet::PubAck(PubAck {
                packet_id,
                reason,
                properties
            })
        ),
        (packet_id(), code(PubRecReasonCode::ALL), ack_properties()).prop_map(
            |(packet_id, reason, properties)| Packet::PubRec(PubRec {
                packet_id,
                reason,
                properties
            })
        ),
        (packet_id(), code(PubRelReasonCode::ALL), ack_properties()).prop_map(
            |(packet_id, reason, properties)| Packet::PubRel(PubRel {
                packet_id,
                reason,
                properties
            })
        ),
        (packet_id(), code(PubCompReasonCode::ALL), ack_properties()).prop_map(
            |(packet_id, reason, properties)| Packet::PubComp(PubComp {
                packet_id,
                reason,
                properties
            })
        ),
        (
            packet_id(),
            option::of(subscription_identifier()),
            user_properties(),
            vec(subscribe_filter_v5(), 1..5)
        )
            .prop_map(
                |(packet_id, subscription_identifier, user_properties, filters)| {
                    Packet::Subscribe(Subscribe {
                        packet_id,
                        properties: SubscribeProperties {
                            subscription_identifier,
                            user_properties,
                        },
                        filters,
                    })
                }
            ),
        (
            packet_id(),
            ack_properties(),
            vec(code(SubAckReasonCode::ALL), 1..5)
        )
            .prop_map(
                |(packet_id, properties, reason_codes)| Packet::SubAck(SubAck {
                    packet_id,
                    properties,
                    reason_codes
                })
            ),
        (packet_id(), user_properties(), vec(string(), 1..5)).prop_map(
            |(packet_id, user_properties, filters)| Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties: UnsubscribeProperties { user_properties },
                filters,
            })
        ),
        (
            packet_id(),
            ack_properties(),
            vec(code(UnsubAckReasonCode::ALL), 1..5)
        )
            .prop_map(
                |(packet_id, properties, reason_codes)| Packet::UnsubAck(UnsubAck {
                    packet_id,
                    properties,
                    reason_codes
                })
            ),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        (
            code(DisconnectReasonCode::ALL),
            option::of(any::<u32>()),
            option::of(string()),
            user_properties(),
            option::of(string())
        )
            .prop_map(
                |(
                    reason,
                    session_expiry_interval,
                    reason_string,
                    user_properties,
                    server_reference,
                )| {
                    Packet::Disconnect(Disconnect {
                        reason,
                        properties: DisconnectProperties {
                            session_expiry_interval,
                            reason_string,
                            user_properties,
                            server_reference,
                        },
                    })
                }
            ),
        (
            code(AuthReasonCode::ALL),
            authentication(),
            option::of(string()),
            user_properties()
        )
            .prop_map(|(reason, auth, reason_string, user_properties)| {
                Packet::Auth(Auth {
                    reason,
                    properties: AuthProperties {
                        authentication_method: auth.0,
                        authentication_data: auth.1,
                        reason_string,
                        user_properties,
                    },
                })
            }),
    ]
}
