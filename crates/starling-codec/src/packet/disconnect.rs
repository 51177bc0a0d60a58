//! DISCONNECT (3.14).

use crate::properties::DisconnectProperties;
use crate::reason::DisconnectReasonCode;

/// DISCONNECT (client to server; in 5.0 also server to client).
///
/// `Disconnect::default()` is the normal disconnection without properties: the only form of 3.1
/// and 3.1.1, and the 2-byte form of 5.0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason code (5.0; normal disconnection in 3.1 and 3.1.1).
    pub reason: DisconnectReasonCode,
    /// DISCONNECT properties (5.0; empty otherwise).
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// With a reason code and no properties.
    pub fn with_reason(reason: DisconnectReasonCode) -> Disconnect {
        Disconnect {
            reason,
            properties: DisconnectProperties::default(),
        }
    }
}
