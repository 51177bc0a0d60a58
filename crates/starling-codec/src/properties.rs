//! MQTT 5.0 properties (section 2.2.2): the identifiers, the typed property set of each packet,
//! and the reading and writing of a property block with its rules.
//!
//! A property block is a Variable Byte Integer length followed by that many bytes of
//! properties, each an identifier and a value of the identifier's type:
//!
//! ```text
//!  ┌ length (1-4 bytes) ┐┌ id ┐┌ value ┐┌ id ┐┌ value ┐ ...
//! ```
//!
//! Each packet has its own struct ([`ConnectProperties`], [`PublishProperties`], ...): an
//! `Option` per property that may appear once, a `Vec` for those that may repeat (User
//! Property, and the Subscription Identifiers of a PUBLISH). `Default` is the empty set, which
//! is what 3.1 / 3.1.1 packets carry and what encodes to a zero-length block.
//!
//! Rules applied when reading (the error is the [`DecodeError`] named):
//! - the block must lie inside the packet and end on a property boundary
//!   ([`DecodeError::Malformed`]);
//! - an identifier the packet may not carry, or an unknown one, makes the packet malformed
//!   (2.2.2.2: [`DecodeError::PropertyNotAllowed`]);
//! - a property other than User Property and a PUBLISH's Subscription Identifier appearing twice
//!   is a protocol error ([`DecodeError::DuplicateProperty`]);
//! - values: Receive Maximum and Maximum Packet Size 0, a Subscription Identifier 0, a byte
//!   property that is a boolean (or Maximum QoS, or Payload Format Indicator) other than 0 or 1,
//!   a Response Topic that is not a valid topic name are protocol errors
//!   ([`DecodeError::InvalidPropertyValue`]); a Topic Alias of 0 is
//!   [`DecodeError::InvalidTopicAlias`]; strings are checked like all strings (UTF-8, no
//!   U+0000).

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::decode::reader::Reader;
use crate::encode::{check_field, put_field, put_var_int, var_int_len, MAX_VAR_INT};
use crate::error::{DecodeError, EncodeError};
use crate::packet::QoS;
use crate::topic;

/// A property identifier (2.2.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PropertyId {
    /// 0x01, byte: the payload is unspecified bytes (0) or UTF-8 (1). PUBLISH, will.
    PayloadFormatIndicator = 0x01,
    /// 0x02, four-byte integer: lifetime of the message in seconds. PUBLISH, will.
    MessageExpiryInterval = 0x02,
    /// 0x03, UTF-8 string: content type of the payload. PUBLISH, will.
    ContentType = 0x03,
    /// 0x08, UTF-8 string: topic name for a response. PUBLISH, will.
    ResponseTopic = 0x08,
    /// 0x09, binary data: correlation data of a request and its response. PUBLISH, will.
    CorrelationData = 0x09,
    /// 0x0B, variable byte integer: identifier of a subscription. PUBLISH, SUBSCRIBE.
    SubscriptionIdentifier = 0x0B,
    /// 0x11, four-byte integer: session expiry in seconds. CONNECT, CONNACK, DISCONNECT.
    SessionExpiryInterval = 0x11,
    /// 0x12, UTF-8 string: client identifier assigned by the server. CONNACK.
    AssignedClientIdentifier = 0x12,
    /// 0x13, two-byte integer: keep-alive the server wants. CONNACK.
    ServerKeepAlive = 0x13,
    /// 0x15, UTF-8 string: extended authentication method. CONNECT, CONNACK, AUTH.
    AuthenticationMethod = 0x15,
    /// 0x16, binary data: extended authentication data. CONNECT, CONNACK, AUTH.
    AuthenticationData = 0x16,
    /// 0x17, byte: whether reason strings and user properties may be sent on failures. CONNECT.
    RequestProblemInformation = 0x17,
    /// 0x18, four-byte integer: delay in seconds before the will is published. Will.
    WillDelayInterval = 0x18,
    /// 0x19, byte: whether the client wants Response Information. CONNECT.
    RequestResponseInformation = 0x19,
    /// 0x1A, UTF-8 string: basis for response topics. CONNACK.
    ResponseInformation = 0x1A,
    /// 0x1C, UTF-8 string: another server to use. CONNACK, DISCONNECT.
    ServerReference = 0x1C,
    /// 0x1F, UTF-8 string: a human-readable reason. Every acknowledgement, DISCONNECT, AUTH.
    ReasonString = 0x1F,
    /// 0x21, two-byte integer: QoS 1 and 2 publications the sender accepts in flight.
    /// CONNECT, CONNACK.
    ReceiveMaximum = 0x21,
    /// 0x22, two-byte integer: highest topic alias the sender accepts. CONNECT, CONNACK.
    TopicAliasMaximum = 0x22,
    /// 0x23, two-byte integer: a number standing for the topic. PUBLISH.
    TopicAlias = 0x23,
    /// 0x24, byte: the highest QoS the server supports (0 or 1; absent means 2). CONNACK.
    MaximumQoS = 0x24,
    /// 0x25, byte: whether the server supports retained messages. CONNACK.
    RetainAvailable = 0x25,
    /// 0x26, UTF-8 string pair: application-defined name and value. Every packet with
    /// properties; may repeat.
    UserProperty = 0x26,
    /// 0x27, four-byte integer: the largest packet the sender accepts. CONNECT, CONNACK.
    MaximumPacketSize = 0x27,
    /// 0x28, byte: whether the server supports wildcard subscriptions. CONNACK.
    WildcardSubscriptionAvailable = 0x28,
    /// 0x29, byte: whether the server supports subscription identifiers. CONNACK.
    SubscriptionIdentifierAvailable = 0x29,
    /// 0x2A, byte: whether the server supports shared subscriptions. CONNACK.
    SharedSubscriptionAvailable = 0x2A,
}

impl PropertyId {
    /// Every identifier, in ascending order.
    pub const ALL: &'static [PropertyId] = &[
        PropertyId::PayloadFormatIndicator,
        PropertyId::MessageExpiryInterval,
        PropertyId::ContentType,
        PropertyId::ResponseTopic,
        PropertyId::CorrelationData,
        PropertyId::SubscriptionIdentifier,
        PropertyId::SessionExpiryInterval,
        PropertyId::AssignedClientIdentifier,
        PropertyId::ServerKeepAlive,
        PropertyId::AuthenticationMethod,
        PropertyId::AuthenticationData,
        PropertyId::RequestProblemInformation,
        PropertyId::WillDelayInterval,
        PropertyId::RequestResponseInformation,
        PropertyId::ResponseInformation,
        PropertyId::ServerReference,
        PropertyId::ReasonString,
        PropertyId::ReceiveMaximum,
        PropertyId::TopicAliasMaximum,
        PropertyId::TopicAlias,
        PropertyId::MaximumQoS,
        PropertyId::RetainAvailable,
        PropertyId::UserProperty,
        PropertyId::MaximumPacketSize,
        PropertyId::WildcardSubscriptionAvailable,
        PropertyId::SubscriptionIdentifierAvailable,
        PropertyId::SharedSubscriptionAvailable,
    ];

    /// The identifier for a wire value, `None` for values the standard does not define.
    pub fn from_u32(v: u32) -> Option<PropertyId> {
        PropertyId::ALL
            .iter()
            .copied()
            .find(|id| u32::from(id.as_u8()) == v)
    }

    /// The wire value (every identifier of 5.0 is one byte).
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// Payload Format Indicator values (3.3.2.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PayloadFormat {
    /// 0: unspecified bytes.
    Unspecified = 0,
    /// 1: UTF-8 encoded character data.
    Utf8 = 1,
}

/// A User Property: name and value, both UTF-8 strings.
pub type UserProperty = (ByteString, ByteString);

/// A type a property value is read into and written from. The identifier is passed along
/// because it decides the encoding of a `u32` (four bytes or a Variable Byte Integer) and the
/// values allowed.
trait Value: Sized {
    fn read(id: PropertyId, r: &mut Reader) -> Result<Self, DecodeError>;
    /// Encoded length of the value (without the identifier).
    fn value_len(&self, id: PropertyId) -> usize;
    fn put(&self, id: PropertyId, out: &mut BytesMut);
    /// Whether the wire format can carry the value.
    fn check(&self, id: PropertyId) -> Result<(), EncodeError>;
}

fn invalid(id: PropertyId) -> DecodeError {
    DecodeError::InvalidPropertyValue(id.as_u8())
}

const TRUNCATED: &str = "truncated property";

impl Value for bool {
    fn read(id: PropertyId, r: &mut Reader) -> Result<bool, DecodeError> {
        match r.u8(TRUNCATED)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(invalid(id)),
        }
    }
    fn value_len(&self, _: PropertyId) -> usize {
        1
    }
    fn put(&self, _: PropertyId, out: &mut BytesMut) {
        out.put_u8(u8::from(*self));
    }
    fn check(&self, _: PropertyId) -> Result<(), EncodeError> {
        Ok(())
    }
}

impl Value for PayloadFormat {
    fn read(id: PropertyId, r: &mut Reader) -> Result<PayloadFormat, DecodeError> {
        match r.u8(TRUNCATED)? {
            0 => Ok(PayloadFormat::Unspecified),
            1 => Ok(PayloadFormat::Utf8),
            _ => Err(invalid(id)),
        }
    }
    fn value_len(&self, _: PropertyId) -> usize {
        1
    }
    fn put(&self, _: PropertyId, out: &mut BytesMut) {
        out.put_u8(*self as u8);
    }
    fn check(&self, _: PropertyId) -> Result<(), EncodeError> {
        Ok(())
    }
}

/// Maximum QoS: 0 or 1 on the wire (a server supporting QoS 2 leaves the property out).
impl Value for QoS {
    fn read(id: PropertyId, r: &mut Reader) -> Result<QoS, DecodeError> {
        match r.u8(TRUNCATED)? {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            _ => Err(invalid(id)),
        }
    }
    fn value_len(&self, _: PropertyId) -> usize {
        1
    }
    fn put(&self, _: PropertyId, out: &mut BytesMut) {
        out.put_u8(self.as_u8());
    }
    fn check(&self, id: PropertyId) -> Result<(), EncodeError> {
        if *self == QoS::ExactlyOnce {
            Err(EncodeError::InvalidProperty(id.as_u8()))
        } else {
            Ok(())
        }
    }
}

impl Value for u16 {
    fn read(id: PropertyId, r: &mut Reader) -> Result<u16, DecodeError> {
        let v = r.u16(TRUNCATED)?;
        match (id, v) {
            (PropertyId::TopicAlias, 0) => Err(DecodeError::InvalidTopicAlias),
            (PropertyId::ReceiveMaximum, 0) => Err(invalid(id)),
            _ => Ok(v),
        }
    }
    fn value_len(&self, _: PropertyId) -> usize {
        2
    }
    fn put(&self, _: PropertyId, out: &mut BytesMut) {
        out.put_u16(*self);
    }
    fn check(&self, _: PropertyId) -> Result<(), EncodeError> {
        Ok(())
    }
}

/// Four-byte integers, and the Subscription Identifier, a Variable Byte Integer.
impl Value for u32 {
    fn read(id: PropertyId, r: &mut Reader) -> Result<u32, DecodeError> {
        let v = if id == PropertyId::SubscriptionIdentifier {
            r.var_int(TRUNCATED)?
        } else {
            r.u32(TRUNCATED)?
        };
        match (id, v) {
            (PropertyId::SubscriptionIdentifier | PropertyId::MaximumPacketSize, 0) => {
                Err(invalid(id))
            }
            _ => Ok(v),
        }
    }
    fn value_len(&self, id: PropertyId) -> usize {
        if id == PropertyId::SubscriptionIdentifier {
            var_int_len(*self)
        } else {
            4
        }
    }
    fn put(&self, id: PropertyId, out: &mut BytesMut) {
        if id == PropertyId::SubscriptionIdentifier {
            put_var_int(out, *self);
        } else {
            out.put_u32(*self);
        }
    }
    fn check(&self, id: PropertyId) -> Result<(), EncodeError> {
        if id == PropertyId::SubscriptionIdentifier && *self > MAX_VAR_INT {
            Err(EncodeError::InvalidProperty(id.as_u8()))
        } else {
            Ok(())
        }
    }
}

impl Value for ByteString {
    fn read(id: PropertyId, r: &mut Reader) -> Result<ByteString, DecodeError> {
        let s = r.string(TRUNCATED)?;
        if id == PropertyId::ResponseTopic && topic::validate_topic_name(&s).is_err() {
            return Err(invalid(id));
        }
        Ok(s)
    }
    fn value_len(&self, _: PropertyId) -> usize {
        2 + self.len()
    }
    fn put(&self, _: PropertyId, out: &mut BytesMut) {
        put_field(out, self.as_bytes());
    }
    fn check(&self, _: PropertyId) -> Result<(), EncodeError> {
        check_field(self.len())
    }
}

impl Value for Bytes {
    fn read(_: PropertyId, r: &mut Reader) -> Result<Bytes, DecodeError> {
        r.binary(TRUNCATED)
    }
    fn value_len(&self, _: PropertyId) -> usize {
        2 + self.len()
    }
    fn put(&self, _: PropertyId, out: &mut BytesMut) {
        put_field(out, self);
    }
    fn check(&self, _: PropertyId) -> Result<(), EncodeError> {
        check_field(self.len())
    }
}

impl Value for UserProperty {
    fn read(_: PropertyId, r: &mut Reader) -> Result<UserProperty, DecodeError> {
        Ok((r.string(TRUNCATED)?, r.string(TRUNCATED)?))
    }
    fn value_len(&self, _: PropertyId) -> usize {
        4 + self.0.len() + self.1.len()
    }
    fn put(&self, _: PropertyId, out: &mut BytesMut) {
        put_field(out, self.0.as_bytes());
        put_field(out, self.1.as_bytes());
    }
    fn check(&self, _: PropertyId) -> Result<(), EncodeError> {
        check_field(self.0.len())?;
        check_field(self.1.len())
    }
}

/// A field of a property set: `Option` for a property that may appear once, `Vec` for one
/// that may repeat.
trait Slot {
    fn accept(&mut self, id: PropertyId, r: &mut Reader) -> Result<(), DecodeError>;
    /// Encoded length of the properties in the slot, identifiers included.
    fn slot_len(&self, id: PropertyId) -> usize;
    fn put(&self, id: PropertyId, out: &mut BytesMut);
    fn check(&self, id: PropertyId) -> Result<(), EncodeError>;
}

impl<T: Value> Slot for Option<T> {
    fn accept(&mut self, id: PropertyId, r: &mut Reader) -> Result<(), DecodeError> {
        let v = T::read(id, r)?;
        if self.is_some() {
            return Err(DecodeError::DuplicateProperty(id.as_u8()));
        }
        *self = Some(v);
        Ok(())
    }
    fn slot_len(&self, id: PropertyId) -> usize {
        self.as_ref().map_or(0, |v| 1 + v.value_len(id))
    }
    fn put(&self, id: PropertyId, out: &mut BytesMut) {
        if let Some(v) = self {
            out.put_u8(id.as_u8());
            v.put(id, out);
        }
    }
    fn check(&self, id: PropertyId) -> Result<(), EncodeError> {
        self.as_ref().map_or(Ok(()), |v| v.check(id))
    }
}

impl<T: Value> Slot for Vec<T> {
    fn accept(&mut self, id: PropertyId, r: &mut Reader) -> Result<(), DecodeError> {
        self.push(T::read(id, r)?);
        Ok(())
    }
    fn slot_len(&self, id: PropertyId) -> usize {
        repeated_len(self, id)
    }
    fn put(&self, id: PropertyId, out: &mut BytesMut) {
        put_repeated(self, id, out);
    }
    fn check(&self, id: PropertyId) -> Result<(), EncodeError> {
        self.iter().try_for_each(|v| v.check(id))
    }
}

fn repeated_len<T: Value>(values: &[T], id: PropertyId) -> usize {
    values
        .iter()
        .fold(0usize, |n, v| n.saturating_add(1 + v.value_len(id)))
}

fn put_repeated<T: Value>(values: &[T], id: PropertyId, out: &mut BytesMut) {
    for v in values {
        out.put_u8(id.as_u8());
        v.put(id, out);
    }
}

/// What the codec needs of every property set: reading one property, and the length and bytes
/// of the block.
pub(crate) trait PropertySet: Default {
    /// Where the set appears, for errors (`"CONNECT"`, `"will"`...).
    const CONTEXT: &'static str;

    /// Reads the value of property `id` (its identifier already read) into the set.
    fn accept(&mut self, id: PropertyId, r: &mut Reader) -> Result<(), DecodeError>;

    /// Length of the properties, without the length prefix (saturating for absurd sizes).
    fn body_len(&self) -> usize;

    /// Writes the properties, without the length prefix.
    fn put_body(&self, out: &mut BytesMut);

    /// Checks that the wire format can carry every value.
    fn check_values(&self) -> Result<(), EncodeError>;

    /// Length of the whole block: the length prefix and the properties.
    fn block_len(&self) -> usize {
        let body = self.body_len();
        // A body too long for a Variable Byte Integer fails `check`; 4 bytes then is a bound.
        body.saturating_add(u32::try_from(body).map_or(4, var_int_len))
    }

    /// Checks that the block can be encoded.
    fn check(&self) -> Result<(), EncodeError> {
        self.check_values()?;
        let body = self.body_len();
        if body > MAX_VAR_INT as usize {
            return Err(EncodeError::PayloadTooLarge(body));
        }
        Ok(())
    }

    /// Writes the block; [`PropertySet::check`] has passed.
    fn put_block(&self, out: &mut BytesMut) {
        put_var_int(out, u32::try_from(self.body_len()).unwrap_or(MAX_VAR_INT));
        self.put_body(out);
    }
}

/// Reads a property block (length and properties) from `r`.
pub(crate) fn read_block<P: PropertySet>(r: &mut Reader) -> Result<P, DecodeError> {
    let len = r.var_int("truncated property length")? as usize;
    if len > r.len() {
        return Err(DecodeError::Malformed("property length exceeds packet"));
    }
    let mut block = r.split_to(len);
    let mut set = P::default();
    while !block.is_empty() {
        let raw = block.var_int("truncated property identifier")?;
        let id = PropertyId::from_u32(raw).ok_or(DecodeError::PropertyNotAllowed {
            id: raw,
            context: P::CONTEXT,
        })?;
        set.accept(id, &mut block)?;
    }
    Ok(set)
}

/// Defines a property set: the struct, `is_empty`, and its [`PropertySet`] impl from a table of
/// fields and identifiers.
macro_rules! property_set {
    (
        $(#[$meta:meta])*
        $name:ident in $context:literal {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $id:ident, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )+
        }

        impl $name {
            /// Whether no property is set (the set encodes to a zero-length block).
            pub fn is_empty(&self) -> bool {
                *self == $name::default()
            }
        }

        impl PropertySet for $name {
            const CONTEXT: &'static str = $context;

            fn accept(&mut self, id: PropertyId, r: &mut Reader) -> Result<(), DecodeError> {
                match id {
                    $( PropertyId::$id => self.$field.accept(id, r), )+
                    #[allow(unreachable_patterns)]
                    _ => Err(DecodeError::PropertyNotAllowed {
                        id: u32::from(id.as_u8()),
                        context: $context,
                    }),
                }
            }

            fn body_len(&self) -> usize {
                0usize $( .saturating_add(self.$field.slot_len(PropertyId::$id)) )+
            }

            fn put_body(&self, out: &mut BytesMut) {
                $( self.$field.put(PropertyId::$id, out); )+
            }

            fn check_values(&self) -> Result<(), EncodeError> {
                $( self.$field.check(PropertyId::$id)?; )+
                Ok(())
            }
        }
    };
}

property_set! {
    /// CONNECT properties (3.1.2.11).
    ConnectProperties in "CONNECT" {
        /// Seconds the session outlives the connection (absent: 0, ends with it).
        session_expiry_interval: Option<u32> = SessionExpiryInterval,
        /// QoS 1 and 2 publications the client accepts in flight (never 0; absent: 65 535).
        receive_maximum: Option<u16> = ReceiveMaximum,
        /// Largest packet the client accepts (never 0; absent: no limit but the protocol's).
        maximum_packet_size: Option<u32> = MaximumPacketSize,
        /// Highest topic alias the client accepts from the server (absent: 0, none).
        topic_alias_maximum: Option<u16> = TopicAliasMaximum,
        /// Whether the client asks for Response Information in the CONNACK.
        request_response_information: Option<bool> = RequestResponseInformation,
        /// Whether reason strings and user properties may be sent on failures (absent: yes).
        request_problem_information: Option<bool> = RequestProblemInformation,
        /// User Properties, in order.
        user_properties: Vec<UserProperty> = UserProperty,
        /// Extended authentication method.
        authentication_method: Option<ByteString> = AuthenticationMethod,
        /// Extended authentication data (only with a method).
        authentication_data: Option<Bytes> = AuthenticationData,
    }
}

property_set! {
    /// Will properties (3.1.3.2), between the client identifier and the will topic of CONNECT.
    WillProperties in "will" {
        /// Seconds to wait after the connection is lost before publishing the will.
        will_delay_interval: Option<u32> = WillDelayInterval,
        /// Whether the will payload is UTF-8.
        payload_format_indicator: Option<PayloadFormat> = PayloadFormatIndicator,
        /// Lifetime of the will message in seconds.
        message_expiry_interval: Option<u32> = MessageExpiryInterval,
        /// Content type of the will payload.
        content_type: Option<ByteString> = ContentType,
        /// Response topic of the will message.
        response_topic: Option<ByteString> = ResponseTopic,
        /// Correlation data of the will message.
        correlation_data: Option<Bytes> = CorrelationData,
        /// User Properties, in order.
        user_properties: Vec<UserProperty> = UserProperty,
    }
}

property_set! {
    /// CONNACK properties (3.2.2.3).
    ConnAckProperties in "CONNACK" {
        /// Session expiry the server uses, if not the client's.
        session_expiry_interval: Option<u32> = SessionExpiryInterval,
        /// QoS 1 and 2 publications the server accepts in flight (never 0; absent: 65 535).
        receive_maximum: Option<u16> = ReceiveMaximum,
        /// Highest QoS the server supports, 0 or 1 (absent: 2).
        maximum_qos: Option<QoS> = MaximumQoS,
        /// Whether the server supports retained messages (absent: yes).
        retain_available: Option<bool> = RetainAvailable,
        /// Largest packet the server accepts (never 0; absent: no limit but the protocol's).
        maximum_packet_size: Option<u32> = MaximumPacketSize,
        /// Client identifier the server assigned (the client sent an empty one).
        assigned_client_identifier: Option<ByteString> = AssignedClientIdentifier,
        /// Highest topic alias the server accepts from the client (absent: 0, none).
        topic_alias_maximum: Option<u16> = TopicAliasMaximum,
        /// Human-readable reason (never required; may be dropped to fit the client's maximum).
        reason_string: Option<ByteString> = ReasonString,
        /// User Properties, in order (may be dropped to fit the client's maximum).
        user_properties: Vec<UserProperty> = UserProperty,
        /// Whether the server supports wildcard subscriptions (absent: yes).
        wildcard_subscription_available: Option<bool> = WildcardSubscriptionAvailable,
        /// Whether the server supports subscription identifiers (absent: yes).
        subscription_identifiers_available: Option<bool> = SubscriptionIdentifierAvailable,
        /// Whether the server supports shared subscriptions (absent: yes).
        shared_subscription_available: Option<bool> = SharedSubscriptionAvailable,
        /// Keep-alive the client must use instead of its own.
        server_keep_alive: Option<u16> = ServerKeepAlive,
        /// Basis for response topics (the client asked for it).
        response_information: Option<ByteString> = ResponseInformation,
        /// Another server the client should use.
        server_reference: Option<ByteString> = ServerReference,
        /// Extended authentication method.
        authentication_method: Option<ByteString> = AuthenticationMethod,
        /// Extended authentication data (only with a method).
        authentication_data: Option<Bytes> = AuthenticationData,
    }
}

property_set! {
    /// PUBLISH properties (3.3.2.3).
    ///
    /// The broker sends the publisher's properties on to subscribers, but sets three per
    /// delivery (see [`crate::encode::PublishV5`]): the remaining Message Expiry Interval, the
    /// Topic Alias, and the Subscription Identifiers of the matching subscriptions.
    PublishProperties in "PUBLISH" {
        /// Whether the payload is UTF-8.
        payload_format_indicator: Option<PayloadFormat> = PayloadFormatIndicator,
        /// Lifetime of the message in seconds.
        message_expiry_interval: Option<u32> = MessageExpiryInterval,
        /// A number standing for the topic (never 0).
        topic_alias: Option<u16> = TopicAlias,
        /// Topic name for a response (a valid topic name).
        response_topic: Option<ByteString> = ResponseTopic,
        /// Correlation data of a request and its response.
        correlation_data: Option<Bytes> = CorrelationData,
        /// User Properties, in order.
        user_properties: Vec<UserProperty> = UserProperty,
        /// Identifiers of the subscriptions that matched (server to client; each 1 to
        /// 268 435 455), in order.
        subscription_identifiers: Vec<u32> = SubscriptionIdentifier,
        /// Content type of the payload.
        content_type: Option<ByteString> = ContentType,
    }
}

property_set! {
    /// Properties of the acknowledgements: PUBACK, PUBREC, PUBREL, PUBCOMP (3.4.2.2 ...),
    /// SUBACK (3.9.2.1) and UNSUBACK (3.11.2.1). Both may be dropped to fit the receiver's
    /// maximum packet size.
    AckProperties in "acknowledgement" {
        /// Human-readable reason.
        reason_string: Option<ByteString> = ReasonString,
        /// User Properties, in order.
        user_properties: Vec<UserProperty> = UserProperty,
    }
}

property_set! {
    /// SUBSCRIBE properties (3.8.2.1).
    SubscribeProperties in "SUBSCRIBE" {
        /// Identifier of the subscriptions made (1 to 268 435 455; at most one).
        subscription_identifier: Option<u32> = SubscriptionIdentifier,
        /// User Properties, in order.
        user_properties: Vec<UserProperty> = UserProperty,
    }
}

property_set! {
    /// UNSUBSCRIBE properties (3.10.2.1).
    UnsubscribeProperties in "UNSUBSCRIBE" {
        /// User Properties, in order.
        user_properties: Vec<UserProperty> = UserProperty,
    }
}

property_set! {
    /// DISCONNECT properties (3.14.2.2).
    DisconnectProperties in "DISCONNECT" {
        /// New session expiry (client to server only).
        session_expiry_interval: Option<u32> = SessionExpiryInterval,
        /// Human-readable reason (may be dropped to fit the receiver's maximum packet size).
        reason_string: Option<ByteString> = ReasonString,
        /// User Properties, in order (may be dropped likewise).
        user_properties: Vec<UserProperty> = UserProperty,
        /// Another server the client should use.
        server_reference: Option<ByteString> = ServerReference,
    }
}

property_set! {
    /// AUTH properties (3.15.2.2).
    AuthProperties in "AUTH" {
        /// Extended authentication method.
        authentication_method: Option<ByteString> = AuthenticationMethod,
        /// Extended authentication data (only with a method).
        authentication_data: Option<Bytes> = AuthenticationData,
        /// Human-readable reason (may be dropped to fit the receiver's maximum packet size).
        reason_string: Option<ByteString> = ReasonString,
        /// User Properties, in order (may be dropped likewise).
        user_properties: Vec<UserProperty> = UserProperty,
    }
}

/// The property block of a PUBLISH as the broker sends it to one subscriber: the publisher's
/// properties with the Message Expiry Interval, Topic Alias and Subscription Identifiers given
/// apart, so that no [`PublishProperties`] is built per delivery. Written in the order of
/// [`PublishProperties`]' own encoding.
pub(crate) struct PublishBlock<'a> {
    pub(crate) base: &'a PublishProperties,
    pub(crate) message_expiry_interval: Option<u32>,
    pub(crate) topic_alias: Option<u16>,
    pub(crate) subscription_identifiers: &'a [u32],
}

impl PublishBlock<'_> {
    /// Length of the properties, without the length prefix.
    pub(crate) fn body_len(&self) -> usize {
        use PropertyId::*;
        let b = self.base;
        b.payload_format_indicator
            .slot_len(PayloadFormatIndicator)
            .saturating_add(self.message_expiry_interval.slot_len(MessageExpiryInterval))
            .saturating_add(self.topic_alias.slot_len(TopicAlias))
            .saturating_add(b.response_topic.slot_len(ResponseTopic))
            .saturating_add(b.correlation_data.slot_len(CorrelationData))
            .saturating_add(b.user_properties.slot_len(UserProperty))
            .saturating_add(repeated_len(
                self.subscription_identifiers,
                SubscriptionIdentifier,
            ))
            .saturating_add(b.content_type.slot_len(ContentType))
    }

    /// Length of the block with its length prefix.
    pub(crate) fn block_len(&self) -> usize {
        let body = self.body_len();
        body.saturating_add(u32::try_from(body).map_or(4, var_int_len))
    }

    /// Checks that the block can be encoded; `body_len` is [`PublishBlock::body_len`].
    pub(crate) fn check(&self, body_len: usize) -> Result<(), EncodeError> {
        use PropertyId::*;
        let b = self.base;
        b.response_topic.check(ResponseTopic)?;
        b.correlation_data.check(CorrelationData)?;
        b.user_properties.check(UserProperty)?;
        b.content_type.check(ContentType)?;
        self.subscription_identifiers
            .iter()
            .try_for_each(|v| v.check(SubscriptionIdentifier))?;
        if body_len > MAX_VAR_INT as usize {
            return Err(EncodeError::PayloadTooLarge(body_len));
        }
        Ok(())
    }

    /// Writes the block; [`PublishBlock::check`] has passed for `body_len`.
    pub(crate) fn put_block(&self, body_len: usize, out: &mut BytesMut) {
        use PropertyId::*;
        let b = self.base;
        put_var_int(out, u32::try_from(body_len).unwrap_or(MAX_VAR_INT));
        b.payload_format_indicator.put(PayloadFormatIndicator, out);
        self.message_expiry_interval.put(MessageExpiryInterval, out);
        self.topic_alias.put(TopicAlias, out);
        b.response_topic.put(ResponseTopic, out);
        b.correlation_data.put(CorrelationData, out);
        b.user_properties.put(UserProperty, out);
        put_repeated(self.subscription_identifiers, SubscriptionIdentifier, out);
        b.content_type.put(ContentType, out);
    }
}

/// The properties the standard lets a sender drop to fit the receiver's Maximum Packet Size:
/// the Reason String first, then the User Properties.
pub(crate) trait Droppable {
    /// Drops the Reason String; `false` if there was none.
    fn drop_reason_string(&mut self) -> bool;
    /// Drops the User Properties; `false` if there were none.
    fn drop_user_properties(&mut self) -> bool;
}

macro_rules! droppable {
    ($($name:ident),*) => {
        $(impl Droppable for $name {
            fn drop_reason_string(&mut self) -> bool {
                self.reason_string.take().is_some()
            }
            fn drop_user_properties(&mut self) -> bool {
                !std::mem::take(&mut self.user_properties).is_empty()
            }
        })*
    };
}

droppable!(
    ConnAckProperties,
    AckProperties,
    DisconnectProperties,
    AuthProperties
);

#[cfg(test)]
mod tests {
    use super::*;

    fn block<P: PropertySet>(p: &P) -> Bytes {
        p.check().unwrap();
        let mut out = BytesMut::new();
        p.put_block(&mut out);
        assert_eq!(out.len(), p.block_len());
        out.freeze()
    }

    fn read<P: PropertySet>(bytes: &[u8]) -> Result<P, DecodeError> {
        let mut r = Reader::new(Bytes::copy_from_slice(bytes));
        let p = read_block(&mut r)?;
        assert!(r.is_empty(), "the block is consumed exactly");
        Ok(p)
    }

    #[test]
    fn identifiers_round_trip() {
        for &id in PropertyId::ALL {
            assert_eq!(PropertyId::from_u32(u32::from(id.as_u8())), Some(id));
        }
        let known: Vec<u8> = PropertyId::ALL.iter().map(|id| id.as_u8()).collect();
        for v in 0..=300u32 {
            if !known.iter().any(|k| u32::from(*k) == v) {
                assert_eq!(PropertyId::from_u32(v), None, "{v:#x}");
            }
        }
        assert_eq!(PropertyId::ALL.len(), 27);
    }

    #[test]
    fn empty_set_is_one_zero_byte() {
        assert_eq!(&block(&PublishProperties::default())[..], &[0]);
        assert!(PublishProperties::default().is_empty());
        assert_eq!(
            read::<PublishProperties>(&[0]),
            Ok(PublishProperties::default())
        );
    }

    #[test]
    fn publish_properties_layout() {
        let p = PublishProperties {
            payload_format_indicator: Some(PayloadFormat::Utf8),
            message_expiry_interval: Some(0x0102_0304),
            topic_alias: Some(7),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            subscription_identifiers: vec![1, 200],
            ..PublishProperties::default()
        };
        assert!(!p.is_empty());
        let bytes = block(&p);
        assert_eq!(
            &bytes[..],
            &[
                29, // length
                0x01, 1, // payload format: UTF-8
                0x02, 1, 2, 3, 4, // message expiry
                0x23, 0, 7, // topic alias
                0x26, 0, 1, b'k', 0, 1, b'v', // user property
                0x26, 0, 1, b'k', 0, 1, b'w', // user property, same name: kept, in order
                0x0B, 1, // subscription identifier 1
                0x0B, 0xC8, 0x01, // subscription identifier 200, a 2-byte varint
            ][..]
        );
        assert_eq!(read::<PublishProperties>(&bytes), Ok(p));
    }

    #[test]
    fn property_length_must_lie_inside_the_packet() {
        // Length 5, but only 3 bytes follow.
        assert!(matches!(
            read::<AckProperties>(&[5, 0x1F, 0, 0]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn a_property_crossing_the_end_of_the_block_is_malformed() {
        // Length 2 covers the identifier and half of the string length.
        let mut r = Reader::new(Bytes::from_static(&[2, 0x1F, 0, 1, b'x']));
        assert!(matches!(
            read_block::<AckProperties>(&mut r),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn property_length_is_a_varint_of_at_most_4_bytes() {
        assert_eq!(
            read::<AckProperties>(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(DecodeError::MalformedVariableByteInteger)
        );
        // A truncated length is malformed too.
        assert!(matches!(
            read::<AckProperties>(&[0x80]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn a_property_not_allowed_in_the_packet_is_rejected() {
        // Topic Alias in a SUBSCRIBE.
        assert_eq!(
            read::<SubscribeProperties>(&[3, 0x23, 0, 1]),
            Err(DecodeError::PropertyNotAllowed {
                id: 0x23,
                context: "SUBSCRIBE"
            })
        );
        // An identifier the standard does not define.
        assert_eq!(
            read::<AckProperties>(&[2, 0x7F, 0]),
            Err(DecodeError::PropertyNotAllowed {
                id: 0x7F,
                context: "acknowledgement"
            })
        );
        // A 2-byte identifier (none is defined).
        assert_eq!(
            read::<AckProperties>(&[3, 0x81, 0x01, 0]),
            Err(DecodeError::PropertyNotAllowed {
                id: 0x81,
                context: "acknowledgement"
            })
        );
    }

    #[test]
    fn a_property_twice_is_a_protocol_error() {
        assert_eq!(
            read::<AckProperties>(&[6, 0x1F, 0, 0, 0x1F, 0, 0]),
            Err(DecodeError::DuplicateProperty(0x1F))
        );
        assert_eq!(
            read::<SubscribeProperties>(&[4, 0x0B, 1, 0x0B, 2]),
            Err(DecodeError::DuplicateProperty(0x0B))
        );
    }

    #[test]
    fn user_properties_and_publish_subscription_ids_repeat() {
        let p: PublishProperties = read(&[4, 0x0B, 1, 0x0B, 2]).unwrap();
        assert_eq!(p.subscription_identifiers, [1, 2]);
        let p: AckProperties = read(&[10, 0x26, 0, 0, 0, 0, 0x26, 0, 0, 0, 0]).unwrap();
        assert_eq!(p.user_properties.len(), 2);
    }

    #[test]
    fn subscription_identifier_is_1_to_268435455() {
        assert_eq!(
            read::<SubscribeProperties>(&[2, 0x0B, 0]),
            Err(DecodeError::InvalidPropertyValue(0x0B))
        );
        let p: SubscribeProperties = read(&[5, 0x0B, 0xFF, 0xFF, 0xFF, 0x7F]).unwrap();
        assert_eq!(p.subscription_identifier, Some(268_435_455));
        assert_eq!(
            read::<SubscribeProperties>(&[6, 0x0B, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(DecodeError::MalformedVariableByteInteger)
        );
    }

    #[test]
    fn zero_receive_maximum_packet_size_and_topic_alias_are_rejected() {
        assert_eq!(
            read::<ConnectProperties>(&[3, 0x21, 0, 0]),
            Err(DecodeError::InvalidPropertyValue(0x21))
        );
        assert_eq!(
            read::<ConnAckProperties>(&[5, 0x27, 0, 0, 0, 0]),
            Err(DecodeError::InvalidPropertyValue(0x27))
        );
        assert_eq!(
            read::<PublishProperties>(&[3, 0x23, 0, 0]),
            Err(DecodeError::InvalidTopicAlias)
        );
        // Topic Alias Maximum and Server Keep Alive may be 0.
        assert!(read::<ConnectProperties>(&[3, 0x22, 0, 0]).is_ok());
        assert!(read::<ConnAckProperties>(&[3, 0x13, 0, 0]).is_ok());
    }

    #[test]
    fn byte_properties_are_0_or_1() {
        for (id, ok) in [(0x17u8, true), (0x19, true)] {
            assert_eq!(read::<ConnectProperties>(&[2, id, 1]).is_ok(), ok);
            assert_eq!(
                read::<ConnectProperties>(&[2, id, 2]),
                Err(DecodeError::InvalidPropertyValue(id))
            );
        }
        for id in [0x24u8, 0x25, 0x28, 0x29, 0x2A] {
            assert!(read::<ConnAckProperties>(&[2, id, 0]).is_ok());
            assert!(read::<ConnAckProperties>(&[2, id, 1]).is_ok());
            assert_eq!(
                read::<ConnAckProperties>(&[2, id, 2]),
                Err(DecodeError::InvalidPropertyValue(id)),
                "{id:#x}"
            );
        }
        assert_eq!(
            read::<PublishProperties>(&[2, 0x01, 2]),
            Err(DecodeError::InvalidPropertyValue(0x01))
        );
        assert_eq!(
            read::<WillProperties>(&[2, 0x01, 0xFF]),
            Err(DecodeError::InvalidPropertyValue(0x01))
        );
    }

    #[test]
    fn strings_and_pairs_are_checked_like_all_strings() {
        assert_eq!(
            read::<AckProperties>(&[4, 0x1F, 0, 1, 0xFF]),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(
            read::<AckProperties>(&[4, 0x1F, 0, 1, 0]),
            Err(DecodeError::NullCharacter)
        );
        assert_eq!(
            read::<AckProperties>(&[7, 0x26, 0, 1, b'k', 0, 1, 0xC0]),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(
            read::<AckProperties>(&[7, 0x26, 0, 1, 0, 0, 1, b'v']),
            Err(DecodeError::NullCharacter)
        );
    }

    #[test]
    fn response_topic_must_be_a_topic_name() {
        for bad in [&b""[..], b"a/+", b"#"] {
            let mut bytes = vec![u8::try_from(3 + bad.len()).unwrap(), 0x08, 0];
            bytes.push(u8::try_from(bad.len()).unwrap());
            bytes.extend_from_slice(bad);
            assert_eq!(
                read::<PublishProperties>(&bytes),
                Err(DecodeError::InvalidPropertyValue(0x08))
            );
        }
        assert!(read::<PublishProperties>(&[4, 0x08, 0, 1, b'r']).is_ok());
    }

    #[test]
    fn values_the_wire_cannot_carry_are_not_encoded() {
        let p = PublishProperties {
            subscription_identifiers: vec![268_435_456],
            ..PublishProperties::default()
        };
        assert_eq!(p.check(), Err(EncodeError::InvalidProperty(0x0B)));
        let p = ConnAckProperties {
            maximum_qos: Some(QoS::ExactlyOnce),
            ..ConnAckProperties::default()
        };
        assert_eq!(p.check(), Err(EncodeError::InvalidProperty(0x24)));
        let p = AckProperties {
            reason_string: Some("x".repeat(65_536).into()),
            ..AckProperties::default()
        };
        assert_eq!(p.check(), Err(EncodeError::StringTooLong(65_536)));
    }

    #[test]
    fn reason_string_then_user_properties_can_be_dropped() {
        let mut p = AckProperties {
            reason_string: Some("why".into()),
            user_properties: vec![("a".into(), "b".into())],
        };
        assert!(p.drop_reason_string());
        assert!(!p.drop_reason_string());
        assert!(p.drop_user_properties());
        assert!(!p.drop_user_properties());
        assert!(p.is_empty());
    }
    #[test]
    fn publish_block_with_its_own_parts_is_the_publish_properties_block() {
        let p = PublishProperties {
            payload_format_indicator: Some(PayloadFormat::Unspecified),
            message_expiry_interval: Some(60),
            topic_alias: Some(3),
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(b"c")),
            user_properties: vec![("a".into(), "b".into())],
            subscription_identifiers: vec![5, 100_000],
            content_type: Some("text/plain".into()),
        };
        let split = PublishBlock {
            base: &p,
            message_expiry_interval: p.message_expiry_interval,
            topic_alias: p.topic_alias,
            subscription_identifiers: &p.subscription_identifiers,
        };
        split.check(split.body_len()).unwrap();
        let mut out = BytesMut::new();
        split.put_block(split.body_len(), &mut out);
        assert_eq!(out.len(), split.block_len());
        assert_eq!(out.freeze(), block(&p));
    }

    #[test]
    fn publish_block_replaces_the_per_delivery_parts() {
        let p = PublishProperties {
            message_expiry_interval: Some(60),
            topic_alias: Some(3),
            subscription_identifiers: vec![5],
            ..PublishProperties::default()
        };
        let split = PublishBlock {
            base: &p,
            message_expiry_interval: Some(42),
            topic_alias: None,
            subscription_identifiers: &[7, 8],
        };
        let mut out = BytesMut::new();
        split.put_block(split.body_len(), &mut out);
        let got: PublishProperties = read(&out).unwrap();
        assert_eq!(
            got,
            PublishProperties {
                message_expiry_interval: Some(42),
                subscription_identifiers: vec![7, 8],
                ..PublishProperties::default()
            }
        );
    }
}
