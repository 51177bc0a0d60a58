//! MQTT 5.0 reason codes (section 2.4), one enum per packet as in the tables of chapter 3.
//!
//! Values below 0x80 report success, 0x80 and above an error
//! ([`is_error`](ConnectReasonCode::is_error)). Each packet's enum holds only the codes that
//! packet may carry, so a PUBREL cannot be given a PUBACK-only code. [`ConnectReasonCode`] and
//! [`SubAckReasonCode`] also serve 3.1 and 3.1.1, whose CONNACK return codes and SUBACK return
//! codes they map to and from.

use crate::packet::QoS;

/// Defines a reason-code enum with `from_u8`, `as_u8` and `is_error`.
macro_rules! reason_code {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every code of this packet, in ascending order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The code for a wire value, `None` if this packet cannot carry it.
            pub fn from_u8(v: u8) -> Option<$name> {
                match v {
                    $( $value => Some($name::$variant), )+
                    _ => None,
                }
            }

            /// The wire value.
            pub fn as_u8(self) -> u8 {
                self as u8
            }

            /// Whether this code reports an error (0x80 and above).
            pub fn is_error(self) -> bool {
                self.as_u8() >= 0x80
            }
        }
    };
}

/// `Default` for a reason-code enum: the code of success (or of a normal disconnection).
macro_rules! default_code {
    ($name:ident => $variant:ident) => {
        impl Default for $name {
            fn default() -> $name {
                $name::$variant
            }
        }
    };
}

reason_code! {
    /// Reason code of CONNACK (3.2.2.2). For 3.1 / 3.1.1 see [`ConnectReasonCode::v3_return_code`].
    ConnectReasonCode {
        /// 0x00: the connection is accepted.
        Success = 0x00,
        /// 0x80: the server does not wish to say why.
        UnspecifiedError = 0x80,
        /// 0x81: the CONNECT could not be parsed.
        MalformedPacket = 0x81,
        /// 0x82: the CONNECT does not conform to the standard.
        ProtocolError = 0x82,
        /// 0x83: valid, but not accepted by this server.
        ImplementationSpecificError = 0x83,
        /// 0x84: the server does not speak the requested protocol version.
        UnsupportedProtocolVersion = 0x84,
        /// 0x85: the client identifier is valid but not allowed.
        ClientIdentifierNotValid = 0x85,
        /// 0x86: the user name or password is not accepted.
        BadUserNameOrPassword = 0x86,
        /// 0x87: the client is not authorised to connect.
        NotAuthorized = 0x87,
        /// 0x88: the server is not available.
        ServerUnavailable = 0x88,
        /// 0x89: the server is busy; try again later.
        ServerBusy = 0x89,
        /// 0x8A: the client has been banned.
        Banned = 0x8A,
        /// 0x8C: the authentication method is not supported or does not match the one in use.
        BadAuthenticationMethod = 0x8C,
        /// 0x90: the will topic is well formed but not accepted.
        TopicNameInvalid = 0x90,
        /// 0x95: the CONNECT exceeds the server's maximum packet size.
        PacketTooLarge = 0x95,
        /// 0x97: an implementation or administrative quota has been exceeded.
        QuotaExceeded = 0x97,
        /// 0x99: the will payload does not match its payload format indicator.
        PayloadFormatInvalid = 0x99,
        /// 0x9A: the will is retained but the server does not support retained messages.
        RetainNotSupported = 0x9A,
        /// 0x9B: the will QoS is above the server's maximum QoS.
        QoSNotSupported = 0x9B,
        /// 0x9C: the client should temporarily use another server.
        UseAnotherServer = 0x9C,
        /// 0x9D: the client should permanently use another server.
        ServerMoved = 0x9D,
        /// 0x9F: the connection rate limit has been exceeded.
        ConnectionRateExceeded = 0x9F,
    }
}

default_code!(ConnectReasonCode => Success);

impl ConnectReasonCode {
    /// The 3.1 / 3.1.1 CONNACK return code (0 to 5) that says the same or the nearest thing:
    /// 0x84 → 1 (unacceptable protocol version), 0x85 → 2 (identifier rejected), 0x86 → 4
    /// (bad user name or password), 0x87, 0x8A and 0x8C → 5 (not authorised), any other error
    /// → 3 (server unavailable).
    pub fn v3_return_code(self) -> u8 {
        use ConnectReasonCode::*;
        match self {
            Success => 0,
            UnsupportedProtocolVersion => 1,
            ClientIdentifierNotValid => 2,
            BadUserNameOrPassword => 4,
            NotAuthorized | Banned | BadAuthenticationMethod => 5,
            _ => 3,
        }
    }

    /// The code for a 3.1 / 3.1.1 CONNACK return code, `None` above 5: 0 → 0x00, 1 → 0x84,
    /// 2 → 0x85, 3 → 0x88, 4 → 0x86, 5 → 0x87. The inverse of
    /// [`v3_return_code`](ConnectReasonCode::v3_return_code) on these six.
    pub fn from_v3_return_code(code: u8) -> Option<ConnectReasonCode> {
        use ConnectReasonCode::*;
        Some(match code {
            0 => Success,
            1 => UnsupportedProtocolVersion,
            2 => ClientIdentifierNotValid,
            3 => ServerUnavailable,
            4 => BadUserNameOrPassword,
            5 => NotAuthorized,
            _ => return None,
        })
    }
}

reason_code! {
    /// Reason code of PUBACK (3.4.2.1).
    PubAckReasonCode {
        /// 0x00: the message is accepted.
        Success = 0x00,
        /// 0x10: accepted, but nobody is subscribed to it.
        NoMatchingSubscribers = 0x10,
        /// 0x80: not accepted, no reason given.
        UnspecifiedError = 0x80,
        /// 0x83: valid, but not accepted.
        ImplementationSpecificError = 0x83,
        /// 0x87: the publisher is not authorised to publish here.
        NotAuthorized = 0x87,
        /// 0x90: the topic name is well formed but not accepted.
        TopicNameInvalid = 0x90,
        /// 0x91: the packet identifier is already in use.
        PacketIdentifierInUse = 0x91,
        /// 0x97: an implementation or administrative quota has been exceeded.
        QuotaExceeded = 0x97,
        /// 0x99: the payload does not match its payload format indicator.
        PayloadFormatInvalid = 0x99,
    }
}

reason_code! {
    /// Reason code of PUBREC (3.5.2.1): the PUBACK codes.
    PubRecReasonCode {
        /// 0x00: the message is accepted.
        Success = 0x00,
        /// 0x10: accepted, but nobody is subscribed to it.
        NoMatchingSubscribers = 0x10,
        /// 0x80: not accepted, no reason given.
        UnspecifiedError = 0x80,
        /// 0x83: valid, but not accepted.
        ImplementationSpecificError = 0x83,
        /// 0x87: the publisher is not authorised to publish here.
        NotAuthorized = 0x87,
        /// 0x90: the topic name is well formed but not accepted.
        TopicNameInvalid = 0x90,
        /// 0x91: the packet identifier is already in use.
        PacketIdentifierInUse = 0x91,
        /// 0x97: an implementation or administrative quota has been exceeded.
        QuotaExceeded = 0x97,
        /// 0x99: the payload does not match its payload format indicator.
        PayloadFormatInvalid = 0x99,
    }
}

reason_code! {
    /// Reason code of PUBREL (3.6.2.1).
    PubRelReasonCode {
        /// 0x00: the message is released.
        Success = 0x00,
        /// 0x92: the packet identifier is not known (a session mismatch).
        PacketIdentifierNotFound = 0x92,
    }
}

reason_code! {
    /// Reason code of PUBCOMP (3.7.2.1).
    PubCompReasonCode {
        /// 0x00: the packet identifier is released.
        Success = 0x00,
        /// 0x92: the packet identifier is not known (a session mismatch).
        PacketIdentifierNotFound = 0x92,
    }
}

default_code!(PubAckReasonCode => Success);
default_code!(PubRecReasonCode => Success);
default_code!(PubRelReasonCode => Success);
default_code!(PubCompReasonCode => Success);

reason_code! {
    /// Reason code of one subscription in a SUBACK (3.9.3). In 3.1.1 only the granted QoS and
    /// 0x80 exist; encoding for 3.1.1 writes every failure as 0x80.
    SubAckReasonCode {
        /// 0x00: granted at maximum QoS 0.
        GrantedQoS0 = 0x00,
        /// 0x01: granted at maximum QoS 1.
        GrantedQoS1 = 0x01,
        /// 0x02: granted at maximum QoS 2.
        GrantedQoS2 = 0x02,
        /// 0x80: not accepted, no reason given (the 3.1.1 failure code).
        UnspecifiedError = 0x80,
        /// 0x83: valid, but not accepted.
        ImplementationSpecificError = 0x83,
        /// 0x87: the client is not authorised to subscribe to this filter.
        NotAuthorized = 0x87,
        /// 0x8F: the filter is well formed but not allowed.
        TopicFilterInvalid = 0x8F,
        /// 0x91: the packet identifier is already in use.
        PacketIdentifierInUse = 0x91,
        /// 0x97: an implementation or administrative quota has been exceeded.
        QuotaExceeded = 0x97,
        /// 0x9E: the server does not support shared subscriptions for this client.
        SharedSubscriptionsNotSupported = 0x9E,
        /// 0xA1: the server does not support subscription identifiers.
        SubscriptionIdentifiersNotSupported = 0xA1,
        /// 0xA2: the server does not support wildcard subscriptions.
        WildcardSubscriptionsNotSupported = 0xA2,
    }
}

impl SubAckReasonCode {
    /// The code granting `qos`.
    pub fn granted(qos: QoS) -> SubAckReasonCode {
        match qos {
            QoS::AtMostOnce => SubAckReasonCode::GrantedQoS0,
            QoS::AtLeastOnce => SubAckReasonCode::GrantedQoS1,
            QoS::ExactlyOnce => SubAckReasonCode::GrantedQoS2,
        }
    }

    /// The QoS granted, `None` for a failure.
    pub fn granted_qos(self) -> Option<QoS> {
        match self {
            SubAckReasonCode::GrantedQoS0 => Some(QoS::AtMostOnce),
            SubAckReasonCode::GrantedQoS1 => Some(QoS::AtLeastOnce),
            SubAckReasonCode::GrantedQoS2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    /// The 3.1.1 return code: the granted QoS, or 0x80 for any failure.
    pub fn v3_return_code(self) -> u8 {
        if self.is_error() {
            0x80
        } else {
            self.as_u8()
        }
    }
}

reason_code! {
    /// Reason code of one filter in an UNSUBACK (3.11.3). 3.1.1 UNSUBACKs carry none.
    UnsubAckReasonCode {
        /// 0x00: the subscription is deleted.
        Success = 0x00,
        /// 0x11: there was no such subscription.
        NoSubscriptionExisted = 0x11,
        /// 0x80: not accepted, no reason given.
        UnspecifiedError = 0x80,
        /// 0x83: valid, but not accepted.
        ImplementationSpecificError = 0x83,
        /// 0x87: the client is not authorised to unsubscribe.
        NotAuthorized = 0x87,
        /// 0x8F: the filter is well formed but not allowed.
        TopicFilterInvalid = 0x8F,
        /// 0x91: the packet identifier is already in use.
        PacketIdentifierInUse = 0x91,
    }
}

reason_code! {
    /// Reason code of DISCONNECT (3.14.2.1).
    DisconnectReasonCode {
        /// 0x00: close normally; the server discards the will.
        NormalDisconnection = 0x00,
        /// 0x04: close, and the server publishes the will.
        DisconnectWithWillMessage = 0x04,
        /// 0x80: closing, no reason given.
        UnspecifiedError = 0x80,
        /// 0x81: a packet could not be parsed.
        MalformedPacket = 0x81,
        /// 0x82: a packet did not conform to the standard.
        ProtocolError = 0x82,
        /// 0x83: a packet was valid but not accepted.
        ImplementationSpecificError = 0x83,
        /// 0x87: the request is not authorised.
        NotAuthorized = 0x87,
        /// 0x89: the server is busy.
        ServerBusy = 0x89,
        /// 0x8B: the server is shutting down.
        ServerShuttingDown = 0x8B,
        /// 0x8D: no packet arrived within 1.5 times the keep-alive.
        KeepAliveTimeout = 0x8D,
        /// 0x8E: another connection with the same client identifier took over.
        SessionTakenOver = 0x8E,
        /// 0x8F: a topic filter is well formed but not accepted.
        TopicFilterInvalid = 0x8F,
        /// 0x90: a topic name is well formed but not accepted.
        TopicNameInvalid = 0x90,
        /// 0x93: more QoS 1 / 2 publications in flight than the receive maximum allows.
        ReceiveMaximumExceeded = 0x93,
        /// 0x94: a topic alias is 0 or above the maximum announced.
        TopicAliasInvalid = 0x94,
        /// 0x95: a packet exceeded the maximum packet size.
        PacketTooLarge = 0x95,
        /// 0x96: the message rate is too high.
        MessageRateTooHigh = 0x96,
        /// 0x97: an implementation or administrative quota has been exceeded.
        QuotaExceeded = 0x97,
        /// 0x98: closed by an administrative action.
        AdministrativeAction = 0x98,
        /// 0x99: a payload did not match its payload format indicator.
        PayloadFormatInvalid = 0x99,
        /// 0x9A: the server does not support retained messages.
        RetainNotSupported = 0x9A,
        /// 0x9B: a QoS above the server's maximum QoS was used.
        QoSNotSupported = 0x9B,
        /// 0x9C: the client should temporarily use another server.
        UseAnotherServer = 0x9C,
        /// 0x9D: the client should permanently use another server.
        ServerMoved = 0x9D,
        /// 0x9E: the server does not support shared subscriptions.
        SharedSubscriptionsNotSupported = 0x9E,
        /// 0x9F: the connection rate limit has been exceeded.
        ConnectionRateExceeded = 0x9F,
        /// 0xA0: the connection has lasted as long as it is allowed to.
        MaximumConnectTime = 0xA0,
        /// 0xA1: the server does not support subscription identifiers.
        SubscriptionIdentifiersNotSupported = 0xA1,
        /// 0xA2: the server does not support wildcard subscriptions.
        WildcardSubscriptionsNotSupported = 0xA2,
    }
}

default_code!(DisconnectReasonCode => NormalDisconnection);

reason_code! {
    /// Reason code of AUTH (3.15.2.1).
    AuthReasonCode {
        /// 0x00: authentication is successful.
        Success = 0x00,
        /// 0x18: continue the authentication with another step.
        ContinueAuthentication = 0x18,
        /// 0x19: the client starts a re-authentication.
        ReAuthenticate = 0x19,
    }
}

default_code!(AuthReasonCode => Success);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_u8_inverts_as_u8_and_rejects_everything_else() {
        fn check<T: Copy + PartialEq + std::fmt::Debug>(
            all: &[T],
            from: fn(u8) -> Option<T>,
            to: fn(T) -> u8,
        ) {
            for v in 0..=u8::MAX {
                match from(v) {
                    Some(c) => assert_eq!(to(c), v),
                    None => assert!(all.iter().all(|c| to(*c) != v), "{v:#04x}"),
                }
            }
            for &c in all {
                assert_eq!(from(to(c)), Some(c));
            }
        }
        check(
            ConnectReasonCode::ALL,
            ConnectReasonCode::from_u8,
            ConnectReasonCode::as_u8,
        );
        check(
            PubAckReasonCode::ALL,
            PubAckReasonCode::from_u8,
            PubAckReasonCode::as_u8,
        );
        check(
            PubRecReasonCode::ALL,
            PubRecReasonCode::from_u8,
            PubRecReasonCode::as_u8,
        );
        check(
            PubRelReasonCode::ALL,
            PubRelReasonCode::from_u8,
            PubRelReasonCode::as_u8,
        );
        check(
            PubCompReasonCode::ALL,
            PubCompReasonCode::from_u8,
            PubCompReasonCode::as_u8,
        );
        check(
            SubAckReasonCode::ALL,
            SubAckReasonCode::from_u8,
            SubAckReasonCode::as_u8,
        );
        check(
            UnsubAckReasonCode::ALL,
            UnsubAckReasonCode::from_u8,
            UnsubAckReasonCode::as_u8,
        );
        check(
            DisconnectReasonCode::ALL,
            DisconnectReasonCode::from_u8,
            DisconnectReasonCode::as_u8,
        );
        check(
            AuthReasonCode::ALL,
            AuthReasonCode::from_u8,
            AuthReasonCode::as_u8,
        );
    }

    #[test]
    fn table_sizes_match_the_standard() {
        assert_eq!(ConnectReasonCode::ALL.len(), 22);
        assert_eq!(PubAckReasonCode::ALL.len(), 9);
        assert_eq!(PubRecReasonCode::ALL.len(), 9);
        assert_eq!(PubRelReasonCode::ALL.len(), 2);
        assert_eq!(PubCompReasonCode::ALL.len(), 2);
        assert_eq!(SubAckReasonCode::ALL.len(), 12);
        assert_eq!(UnsubAckReasonCode::ALL.len(), 7);
        assert_eq!(DisconnectReasonCode::ALL.len(), 29);
        assert_eq!(AuthReasonCode::ALL.len(), 3);
    }

    #[test]
    fn errors_are_the_codes_from_0x80() {
        assert!(!ConnectReasonCode::Success.is_error());
        assert!(ConnectReasonCode::UnspecifiedError.is_error());
        assert!(!PubAckReasonCode::NoMatchingSubscribers.is_error());
        assert!(!SubAckReasonCode::GrantedQoS2.is_error());
        assert!(SubAckReasonCode::UnspecifiedError.is_error());
        assert!(!UnsubAckReasonCode::NoSubscriptionExisted.is_error());
        assert!(!DisconnectReasonCode::DisconnectWithWillMessage.is_error());
        assert!(DisconnectReasonCode::ServerShuttingDown.is_error());
        assert!(!AuthReasonCode::ReAuthenticate.is_error());
        assert!(PubRelReasonCode::PacketIdentifierNotFound.is_error());
    }

    #[test]
    fn connect_codes_map_to_311_return_codes() {
        use ConnectReasonCode::*;
        let table = [
            (Success, 0),
            (UnsupportedProtocolVersion, 1),
            (ClientIdentifierNotValid, 2),
            (ServerUnavailable, 3),
            (ServerBusy, 3),
            (UnspecifiedError, 3),
            (MalformedPacket, 3),
            (ProtocolError, 3),
            (QuotaExceeded, 3),
            (UseAnotherServer, 3),
            (BadUserNameOrPassword, 4),
            (NotAuthorized, 5),
            (Banned, 5),
            (BadAuthenticationMethod, 5),
        ];
        for (code, v3) in table {
            assert_eq!(code.v3_return_code(), v3, "{code:?}");
        }
        for &code in ConnectReasonCode::ALL {
            assert!(code.v3_return_code() <= 5);
            // Success is the only code that maps to 0: a refusal never reads as acceptance.
            assert_eq!(code.v3_return_code() == 0, code == Success, "{code:?}");
        }
    }

    #[test]
    fn v3_return_codes_map_back() {
        for v3 in 0..=5 {
            let code = ConnectReasonCode::from_v3_return_code(v3).unwrap();
            assert_eq!(code.v3_return_code(), v3);
        }
        for v3 in 6..=u8::MAX {
            assert_eq!(ConnectReasonCode::from_v3_return_code(v3), None);
        }
    }

    #[test]
    fn suback_codes_map_to_granted_qos_or_0x80() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let code = SubAckReasonCode::granted(qos);
            assert_eq!(code.granted_qos(), Some(qos));
            assert_eq!(code.v3_return_code(), qos.as_u8());
        }
        for &code in SubAckReasonCode::ALL {
            if code.is_error() {
                assert_eq!(code.granted_qos(), None);
                assert_eq!(code.v3_return_code(), 0x80);
            }
        }
    }
}
