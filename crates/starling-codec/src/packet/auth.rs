//! AUTH (3.15), the extended-authentication exchange of 5.0.

use crate::properties::AuthProperties;
use crate::reason::AuthReasonCode;

/// AUTH (both directions; 5.0 only: it cannot be encoded for 3.1 or 3.1.1).
///
/// `Auth::default()` is success without properties, the 2-byte form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Auth {
    /// Reason code.
    pub reason: AuthReasonCode,
    /// AUTH properties: the authentication method and data, reason string, user properties.
    pub properties: AuthProperties,
}
