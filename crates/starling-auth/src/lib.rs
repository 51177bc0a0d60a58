//! Starling's client security rules, as plain data and pure functions: no sockets, no threads,
//! no clocks; the only IO is reading the two files.
//!
//! # Layout
//! - [`password`]: password files (`user:hash` lines; PBKDF2-SHA512 in Mosquitto's `$7$` format,
//!   Mosquitto 1.x `$6$` read for migration, SCRAM-SHA-256 credentials), hashing new passwords,
//!   constant-time verification, and the [`VerifyCache`] that keeps reconnect storms cheap.
//! - [`scram`]: SCRAM-SHA-256 (RFC 5802, 7677): [`ScramCredential`] (RFC 5803 text, a line of
//!   the password file beside `$7$` hashes) and [`ScramServer`], the server side of one exchange
//!   as a state machine the connection drives with the client's messages (for MQTT 5 enhanced
//!   authentication).
//! - [`acl`]: ACL files in Mosquitto's `acl_file` syntax (`user`, `topic`, `pattern` with `%c` and
//!   `%u`; `read` / `write` / `readwrite` / `deny`), compiled per client into a [`ClientAcl`] that
//!   answers publish and delivery checks and classifies subscriptions ([`Coverage`]).
//! - [`filter`]: topic-filter relations (`covers`, `intersects`) behind that classification.
//! - [`authorizer`]: the [`Authorizer`], one snapshot of both files, which the broker swaps as a
//!   whole on reload.
//! - [`x509`]: the subject common name of a client certificate (for `use_identity_as_username`).
//!
//! Who runs what: the broker's connection actors call the cheap checks inline and hand
//! [`Authorizer::verify`] (PBKDF2, slow on purpose) to a small thread pool. A SCRAM exchange
//! needs no such pool on the server: the client runs PBKDF2, the server checks HMACs.

pub mod acl;
pub mod authorizer;
pub mod filter;
pub mod password;
pub mod scram;
pub mod x509;

pub use acl::{Access, AclError, AclFile, ClientAcl, Coverage, Rule};
pub use authorizer::{Authorizer, LoadError, Verdict};
pub use password::{
    HashError, InvalidUserName, PasswordFile, PasswordFileError, PasswordHash, VerifyCache,
    DEFAULT_ITERATIONS,
};
pub use scram::{CredentialError, ScramCredential, ScramError, ScramServer};
