//! SCRAM-SHA-256 (RFC 5802, RFC 7677): credentials stored as RFC 5803 describes, and the server
//! side of one authentication exchange, as plain data driven by the caller (no IO, no clocks).
//!
//! A SCRAM credential keeps what the server needs to check a client's proof without knowing the
//! password: the salt and iteration count the client derives its key with, `StoredKey`
//! (checks the client) and `ServerKey` (proves the server to the client). It cannot be computed
//! from a `$7$` or `$6$` hash, so users who should log in with SCRAM get a credential of their
//! own ([`ScramCredential`], `starling passwd FILE add USER --scram`). The same credential also
//! checks a plain CONNECT password ([`ScramCredential::verify_password`]).
//!
//! One exchange, with the [`ScramServer`] methods that handle each message:
//!
//! ```text
//!   client                                            ScramServer
//!     |  client-first   n,,n=user,r=<client nonce>         |
//!     |--------------------------------------------------->|  client_first() -> user name
//!     |                          (the caller looks up that user's ScramCredential)
//!     |  server-first   r=<client+server nonce>,s=..,i=..  |
//!     |<---------------------------------------------------|  server_first(credential)
//!     |  client-final   c=biws,r=<nonce>,p=<proof>         |
//!     |--------------------------------------------------->|  client_final() -> Ok / Err
//!     |  server-final   v=<server signature>  (or e=...)   |
//!     |<---------------------------------------------------|
//! ```
//!
//! - Channel binding is not offered: a client asking for it (`p=`) is refused; `y` (the client
//!   could bind but believes the server cannot) and `n` are accepted, and the final message must
//!   echo that header exactly (`c=eSws` / `c=biws`).
//! - User names and passwords are prepared with SASLprep (RFC 4013, through the `stringprep`
//!   crate) as RFC 5802 asks, so non-ASCII names and passwords work with clients that do the
//!   same; what SASLprep refuses (control characters, code points unassigned in Unicode 3.2,
//!   mixed-direction text) cannot be used with SCRAM.
//! - An unknown user (or one with only a `$7$` hash) gets a salt derived from the user name and a
//!   secret key, and the iteration count of real users: the exchange looks the same until the
//!   proof, which then fails with the same `e=invalid-proof` as a wrong password.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Fewest iterations a credential may have (RFC 7677: "at least 4096").
pub const MIN_ITERATIONS: u32 = 4096;
/// Iterations of new credentials: OWASP's 2023 figure for PBKDF2-HMAC-SHA256, the counterpart of
/// the 210 000 PBKDF2-HMAC-SHA512 iterations of `$7$` hashes (about the same cost to brute-force
/// a stolen file). Unlike `$7$`, the client pays it at every SCRAM login (the server only checks
/// HMACs), so constrained clients may want fewer (`--iterations`, at least [`MIN_ITERATIONS`]) or
/// a client that caches its derived keys per salt, as RFC 5802 allows.
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// Most iterations accepted (as for `$7$` hashes).
pub const MAX_ITERATIONS: u32 = crate::password::MAX_ITERATIONS;
const _: () = assert!(MIN_ITERATIONS <= DEFAULT_ITERATIONS && DEFAULT_ITERATIONS <= MAX_ITERATIONS);
/// Fewer iterations than this make a weak credential (the same bar as `$7$` hashes).
const WEAK_BELOW: u32 = 10_000;
/// Salt length of new credentials, in bytes.
const SALT_LEN: usize = 16;
/// Longest salt read from a credential.
const MAX_SALT_LEN: usize = 1024;
/// SHA-256 output: the length of every key.
const KEY_LEN: usize = 32;
/// Random bytes in the server's nonce (32 base64 characters).
const SERVER_NONCE_LEN: usize = 24;
/// Longest client nonce accepted (it is echoed back; common clients send 18 to 32 characters).
const MAX_CLIENT_NONCE_LEN: usize = 256;
/// How the text form starts (RFC 5803).
const PREFIX: &str = "SCRAM-SHA-256$";

/// A SCRAM-SHA-256 credential: what a server keeps to check a client's proof without the
/// password. Text form (RFC 5803), as in password files:
/// `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    /// PBKDF2-HMAC-SHA256 iterations the client runs; in `MIN_ITERATIONS..=MAX_ITERATIONS`.
    iterations: u32,
    /// The user's salt (non-empty, at most `MAX_SALT_LEN` bytes).
    salt: Vec<u8>,
    /// SHA-256(ClientKey): checks the client's proof.
    stored_key: [u8; KEY_LEN],
    /// HMAC(SaltedPassword, "Server Key"): signs the server's final message.
    server_key: [u8; KEY_LEN],
}

impl fmt::Debug for ScramCredential {
    // Never print key material, not even in debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ScramCredential(SCRAM-SHA-256, {} iterations)",
            self.iterations
        )
    }
}

/// A SCRAM credential that cannot be made or read. The message never contains key material or
/// the password.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    /// The text does not start with `SCRAM-SHA-256$`.
    #[error("not a SCRAM-SHA-256 credential")]
    NotScram,
    /// A field is missing, not canonical base64, or of the wrong length.
    #[error("malformed SCRAM-SHA-256 credential: {0}")]
    Malformed(&'static str),
    /// Iteration count out of range.
    #[error("SCRAM-SHA-256 iteration count must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}")]
    Iterations,
    /// The password cannot be prepared (not UTF-8, or refused by SASLprep).
    #[error("password cannot be used with SCRAM-SHA-256: {0}")]
    Password(&'static str),
    /// The user name cannot be sent in a SCRAM exchange as it is.
    #[error("user name cannot be used with SCRAM-SHA-256: {0}")]
    UserName(&'static str),
}

/// HMAC-SHA256 of the concatenated `parts`.
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// SASLprep of a password, as a stored string (RFC 5802's `Normalize`). The reason never quotes
/// the password.
fn prepare_password(password: &[u8]) -> Result<Cow<'_, str>, CredentialError> {
    let s =
        std::str::from_utf8(password).map_err(|_| CredentialError::Password("not valid UTF-8"))?;
    let prepared = stringprep::saslprep(s).map_err(|_| {
        CredentialError::Password(
            "refused by SASLprep (RFC 4013): a control, unassigned or mixed-direction character",
        )
    })?;
    if prepared.is_empty() {
        return Err(CredentialError::Password("empty after SASLprep"));
    }
    Ok(prepared)
}

/// The keys of a prepared password: (StoredKey, ServerKey).
fn keys(prepared: &[u8], salt: &[u8], iterations: u32) -> ([u8; KEY_LEN], [u8; KEY_LEN]) {
    let mut salted = [0u8; KEY_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(prepared, salt, iterations, &mut salted);
    let client_key = hmac(&salted, &[b"Client Key"]);
    let server_key = hmac(&salted, &[b"Server Key"]);
    (Sha256::digest(client_key).into(), server_key)
}

/// Checks that `name` can be stored for a SCRAM user: clients send user names prepared with
/// SASLprep, so a name that SASLprep changes or refuses could never be found.
///
/// # Errors
/// [`CredentialError::UserName`] with the reason.
pub fn check_user_name(name: &str) -> Result<(), CredentialError> {
    match stringprep::saslprep(name) {
        Ok(p) if p.is_empty() => Err(CredentialError::UserName("empty after SASLprep")),
        Ok(p) if p != name => Err(CredentialError::UserName(
            "SASLprep (RFC 4013) changes it, so clients would send another name",
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(CredentialError::UserName(
            "refused by SASLprep (RFC 4013): a control, unassigned or mixed-direction character",
        )),
    }
}

impl ScramCredential {
    /// The credential of `password` with this salt and iteration count.
    ///
    /// # Errors
    /// Iterations out of range, an empty or oversized salt, or a password SASLprep refuses.
    pub fn derive(
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Result<ScramCredential, CredentialError> {
        check_iterations(iterations)?;
        check_salt(salt)?;
        let prepared = prepare_password(password)?;
        let (stored_key, server_key) = keys(prepared.as_bytes(), salt, iterations);
        Ok(ScramCredential {
            iterations,
            salt: salt.to_vec(),
            stored_key,
            server_key,
        })
    }

    /// The credential of `password` with a random 16-byte salt.
    ///
    /// # Errors
    /// As [`ScramCredential::derive`].
    pub fn generate(password: &[u8], iterations: u32) -> Result<ScramCredential, CredentialError> {
        let salt: [u8; SALT_LEN] = rand::random();
        ScramCredential::derive(password, &salt, iterations)
    }

    /// A credential from its parts, e.g. keys exported by another SCRAM server.
    ///
    /// # Errors
    /// Iterations out of range, an empty or oversized salt.
    pub fn from_keys(
        iterations: u32,
        salt: &[u8],
        stored_key: [u8; KEY_LEN],
        server_key: [u8; KEY_LEN],
    ) -> Result<ScramCredential, CredentialError> {
        check_iterations(iterations)?;
        check_salt(salt)?;
        Ok(ScramCredential {
            iterations,
            salt: salt.to_vec(),
            stored_key,
            server_key,
        })
    }

    /// Parses the RFC 5803 text form. Strict: canonical padded base64, a decimal count without
    /// leading zeros, 32-byte keys; so [`ScramCredential::encode`] gives back the same text.
    ///
    /// # Errors
    /// Not a SCRAM-SHA-256 credential, a malformed field, or an iteration count out of range.
    pub fn parse(s: &str) -> Result<ScramCredential, CredentialError> {
        const SHAPE: &str = "expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>";
        let rest = s.strip_prefix(PREFIX).ok_or(CredentialError::NotScram)?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(CredentialError::Malformed(SHAPE))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or(CredentialError::Malformed(SHAPE))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or(CredentialError::Malformed(SHAPE))?;
        if iterations.is_empty()
            || !iterations.bytes().all(|b| b.is_ascii_digit())
            || (iterations.starts_with('0'))
        {
            return Err(CredentialError::Malformed(
                "iteration count is not a decimal number",
            ));
        }
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| CredentialError::Iterations)?;
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| CredentialError::Malformed("salt is not base64"))?;
        let key = |field: &str, what| -> Result<[u8; KEY_LEN], CredentialError> {
            STANDARD
                .decode(field)
                .ok()
                .and_then(|k| <[u8; KEY_LEN]>::try_from(k).ok())
                .ok_or(CredentialError::Malformed(what))
        };
        let stored_key = key(stored_key, "StoredKey is not 32 bytes of base64")?;
        let server_key = key(server_key, "ServerKey is not 32 bytes of base64")?;
        ScramCredential::from_keys(iterations, &salt, stored_key, server_key)
    }

    /// The RFC 5803 text form.
    pub fn encode(&self) -> String {
        format!(
            "{PREFIX}{}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }

    /// Whether `password` (e.g. from a CONNECT packet) is this credential's: derives its
    /// StoredKey and compares in constant time. Slow by design (PBKDF2 at this credential's
    /// count): call it off latency-sensitive threads. A password that SASLprep refuses never
    /// matches (no credential can have been made from it).
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let Ok(prepared) = prepare_password(password) else {
            return false;
        };
        let (stored_key, _) = keys(prepared.as_bytes(), &self.salt, self.iterations);
        stored_key.ct_eq(&self.stored_key).into()
    }

    /// PBKDF2 iterations.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// The salt.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// StoredKey: SHA-256 of the client key.
    pub fn stored_key(&self) -> &[u8; KEY_LEN] {
        &self.stored_key
    }

    /// ServerKey: the key of the server's signature.
    pub fn server_key(&self) -> &[u8; KEY_LEN] {
        &self.server_key
    }

    /// True below 10 000 iterations (the bar of `$7$` hashes).
    pub fn is_weak(&self) -> bool {
        self.iterations < WEAK_BELOW
    }
}

fn check_iterations(iterations: u32) -> Result<(), CredentialError> {
    if (MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        Ok(())
    } else {
        Err(CredentialError::Iterations)
    }
}

fn check_salt(salt: &[u8]) -> Result<(), CredentialError> {
    match salt.len() {
        0 => Err(CredentialError::Malformed("empty salt")),
        n if n > MAX_SALT_LEN => Err(CredentialError::Malformed("salt longer than 1024 bytes")),
        _ => Ok(()),
    }
}

/// Why a SCRAM exchange failed, in one short lower-case line for a log (never a secret).
/// [`ScramError::server_error`] is the matching RFC 5802 `e=` value for the client.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    /// The message breaks RFC 5802's grammar.
    #[error("malformed scram message: {0}")]
    Malformed(&'static str),
    /// The user name (or authorization identity) is badly escaped, or SASLprep refuses it.
    #[error("invalid scram user name: {0}")]
    InvalidUserName(&'static str),
    /// The client wants channel binding (`p=`), which is not offered.
    #[error("client requires channel binding, which is not offered")]
    ChannelBindingNotSupported,
    /// The final message's `c=` is not the first message's GS2 header.
    #[error("channel binding (c=) does not match the gs2 header")]
    ChannelBindingMismatch,
    /// A mandatory extension (`m=`).
    #[error("mandatory scram extension (m=) not supported")]
    ExtensionNotSupported,
    /// An authorization identity (`a=`) other than the user name.
    #[error("authorization identity (a=) differs from the user name")]
    AuthzidMismatch,
    /// The final message's nonce is not this exchange's.
    #[error("nonce does not match this exchange")]
    NonceMismatch,
    /// The client's proof is wrong: a wrong password.
    #[error("wrong password (the client proof does not verify)")]
    InvalidProof,
    /// The user has no SCRAM credential (unknown, or only a `$7$`/`$6$` hash).
    #[error("no scram-sha-256 credential for the user")]
    UnknownUser,
    /// A message after the exchange ended (succeeded, failed, or a replay).
    #[error("scram message out of order (the exchange is over)")]
    OutOfOrder,
}

impl ScramError {
    /// The RFC 5802 `server-error-value` for the client. An unknown user gets `invalid-proof`,
    /// like a wrong password, so that the answer does not tell which user names exist.
    pub fn server_error(&self) -> &'static str {
        match self {
            ScramError::Malformed(_) => "invalid-encoding",
            ScramError::InvalidUserName(_) => "invalid-username-encoding",
            ScramError::ChannelBindingNotSupported => "channel-binding-not-supported",
            ScramError::ChannelBindingMismatch => "channel-bindings-dont-match",
            ScramError::ExtensionNotSupported => "extensions-not-supported",
            ScramError::InvalidProof | ScramError::UnknownUser => "invalid-proof",
            ScramError::AuthzidMismatch | ScramError::NonceMismatch | ScramError::OutOfOrder => {
                "other-error"
            }
        }
    }

    /// The server-final message of a failure: `e=<server_error>`.
    pub fn server_final(&self) -> Vec<u8> {
        format!("e={}", self.server_error()).into_bytes()
    }
}

/// What the client's first message said.
struct ClientFirst {
    /// The user name, decoded and prepared.
    user: String,
    /// `n,,`, `y,,` or with `a=`: echoed in the final message's `c=`.
    gs2_header: String,
    /// The message without the GS2 header: the start of the AuthMessage.
    bare: String,
    /// The client's nonce.
    nonce: String,
}

/// The keys a final message is checked against.
enum Keys {
    /// The user's credential.
    Known {
        stored_key: [u8; KEY_LEN],
        server_key: [u8; KEY_LEN],
    },
    /// No credential: a key no proof matches, checked all the same so that the work done
    /// looks alike.
    Decoy { stored_key: [u8; KEY_LEN] },
}

/// Waiting for the client's final message.
struct Pending {
    /// Echoed in `c=`.
    gs2_header: String,
    /// client-first-message-bare "," server-first-message: the AuthMessage up to the final
    /// message.
    auth_prefix: String,
    /// Client and server nonce, which the final message repeats.
    nonce: String,
    keys: Keys,
}

/// Where an exchange is.
enum State {
    /// Waiting for client-first.
    Start,
    /// client-first read; the caller looks up the user.
    ClientFirst(ClientFirst),
    /// server-first sent; waiting for client-final.
    ServerFirst(Pending),
    /// Succeeded or failed; every further message is refused.
    Over,
}

/// The server side of one SCRAM-SHA-256 exchange, driven by the caller with the client's
/// messages. Use a new one per exchange (and per re-authentication).
pub struct ScramServer {
    state: State,
    /// Key of the salts made up for users without a credential.
    decoy_key: [u8; 32],
    /// Iteration count announced for users without a credential.
    decoy_iterations: u32,
    /// A fixed server nonce (tests: known-answer vectors); `None` draws one from the CSPRNG.
    server_nonce: Option<String>,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Start => "start",
            State::ClientFirst(_) => "client-first read",
            State::ServerFirst(_) => "server-first sent",
            State::Over => "over",
        };
        f.debug_struct("ScramServer")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl Default for ScramServer {
    fn default() -> Self {
        ScramServer::new()
    }
}

/// The decoy key of this process, drawn once.
fn process_decoy_key() -> [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    *KEY.get_or_init(rand::random)
}

impl ScramServer {
    /// A new exchange. Users without a credential get salts made up under a key drawn once per
    /// process, and [`DEFAULT_ITERATIONS`]; the builder methods below change both.
    pub fn new() -> ScramServer {
        ScramServer {
            state: State::Start,
            decoy_key: process_decoy_key(),
            decoy_iterations: DEFAULT_ITERATIONS,
            server_nonce: None,
        }
    }

    /// Makes up the salts of users without a credential under `key`. With the default
    /// per-process key, a restarted process or another node answers the same unknown name with
    /// another salt, which a patient prober can notice; a key that every node shares and keeps
    /// (derived from a cluster secret, say) closes that gap.
    pub fn with_decoy_key(mut self, key: [u8; 32]) -> ScramServer {
        self.decoy_key = key;
        self
    }

    /// Announces `iterations` (clamped to the valid range) for users without a credential: the
    /// count most real users have, so that the answer does not stand out
    /// ([`crate::Authorizer::scram_server`] does this).
    pub fn with_decoy_iterations(mut self, iterations: u32) -> ScramServer {
        self.decoy_iterations = iterations.clamp(MIN_ITERATIONS, MAX_ITERATIONS);
        self
    }

    /// Reads the client's first message and returns the user name (decoded and prepared with
    /// SASLprep) whose credential the caller looks up for [`ScramServer::server_first`].
    ///
    /// # Errors
    /// A malformed message, channel binding required, a mandatory extension, a bad user name,
    /// an authorization identity other than the user, or a second first message. The exchange
    /// is then over.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<String, ScramError> {
        if !matches!(self.state, State::Start) {
            self.state = State::Over;
            return Err(ScramError::OutOfOrder);
        }
        self.state = State::Over;
        let first = parse_client_first(msg)?;
        let user = first.user.clone();
        self.state = State::ClientFirst(first);
        Ok(user)
    }

    /// The server's first message: the client's nonce extended with a random one, the salt and
    /// the iteration count. `credential` is the user's, or `None` for a user without one: the
    /// answer then carries a salt made up from the user name (the same each time, as a real one
    /// would be) and the exchange fails at the proof.
    ///
    /// # Panics
    /// If [`ScramServer::client_first`] has not just succeeded: a bug in the caller.
    pub fn server_first(&mut self, credential: Option<&ScramCredential>) -> Vec<u8> {
        let State::ClientFirst(first) = std::mem::replace(&mut self.state, State::Over) else {
            panic!("ScramServer::server_first called without a successful client_first");
        };
        let server_nonce = self.server_nonce.take().unwrap_or_else(|| {
            let mut raw = [0u8; SERVER_NONCE_LEN];
            rand::rng().fill_bytes(&mut raw);
            STANDARD.encode(raw)
        });
        let nonce = format!("{}{server_nonce}", first.nonce);
        let (salt, iterations, keys) = match credential {
            Some(c) => (
                Cow::Borrowed(c.salt.as_slice()),
                c.iterations,
                Keys::Known {
                    stored_key: c.stored_key,
                    server_key: c.server_key,
                },
            ),
            None => {
                let user = first.user.as_bytes();
                let salt = hmac(&self.decoy_key, &[b"salt\0", user]);
                (
                    Cow::Owned(salt[..SALT_LEN].to_vec()),
                    self.decoy_iterations,
                    Keys::Decoy {
                        stored_key: hmac(&self.decoy_key, &[b"stored-key\0", user]),
                    },
                )
            }
        };
        let server_first = format!("r={nonce},s={},i={iterations}", STANDARD.encode(&salt));
        self.state = State::ServerFirst(Pending {
            gs2_header: first.gs2_header,
            auth_prefix: format!("{},{server_first}", first.bare),
            nonce,
            keys,
        });
        server_first.into_bytes()
    }

    /// Checks the client's final message: the channel-binding echo, the nonce, and the proof
    /// (in constant time). On success, returns the server's final message (`v=<signature>`),
    /// which lets the client check the server in turn.
    ///
    /// # Errors
    /// A malformed message, a wrong channel-binding echo or nonce, a wrong proof (wrong
    /// password), a user without a credential, or a message after the exchange ended (a
    /// replay). [`ScramError::server_final`] gives the `e=` message to send. The exchange is
    /// over either way.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let State::ServerFirst(pending) = std::mem::replace(&mut self.state, State::Over) else {
            return Err(ScramError::OutOfOrder);
        };
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not utf-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(',')
            .ok_or(ScramError::Malformed("no proof (p=)"))?;
        let proof = proof.strip_prefix("p=").ok_or(ScramError::Malformed(
            "the proof (p=) is not the last attribute",
        ))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding (c=) first"))?;
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce (r=) second"))?;
        attrs.try_for_each(check_extension)?;
        let binding = STANDARD
            .decode(binding)
            .map_err(|_| ScramError::Malformed("channel binding (c=) is not base64"))?;
        if binding != pending.gs2_header.as_bytes() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if nonce != pending.nonce {
            return Err(ScramError::NonceMismatch);
        }
        let proof: [u8; KEY_LEN] = STANDARD
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed(
                "proof (p=) is not 32 bytes of base64",
            ))?;
        let auth_message = format!("{},{without_proof}", pending.auth_prefix);
        let stored_key = match &pending.keys {
            Keys::Known { stored_key, .. } | Keys::Decoy { stored_key } => stored_key,
        };
        // ClientKey = proof XOR HMAC(StoredKey, AuthMessage); the proof is right when
        // SHA-256(ClientKey) is StoredKey.
        let signature = hmac(stored_key, &[auth_message.as_bytes()]);
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(signature) {
            *k ^= s;
        }
        let matches: bool = Sha256::digest(client_key)
            .as_slice()
            .ct_eq(stored_key)
            .into();
        match pending.keys {
            Keys::Decoy { .. } => Err(ScramError::UnknownUser),
            Keys::Known { .. } if !matches => Err(ScramError::InvalidProof),
            Keys::Known { server_key, .. } => {
                let signature = hmac(&server_key, &[auth_message.as_bytes()]);
                Ok(format!("v={}", STANDARD.encode(signature)).into_bytes())
            }
        }
    }

    /// Uses `nonce` instead of a random server nonce (known-answer tests).
    #[cfg(test)]
    fn with_server_nonce(mut self, nonce: &str) -> ScramServer {
        self.server_nonce = Some(nonce.to_string());
        self
    }
}

/// Parses client-first-message (RFC 5802 §7):
/// `gs2-cbind-flag "," [authzid] "," [reserved-mext ","] username "," nonce ["," extensions]`.
fn parse_client_first(msg: &[u8]) -> Result<ClientFirst, ScramError> {
    let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not utf-8"))?;
    let (flag, rest) = msg
        .split_once(',')
        .ok_or(ScramError::Malformed("no gs2 header"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBindingNotSupported),
        _ => {
            return Err(ScramError::Malformed(
                "gs2 header: channel-binding flag is not n, y or p=",
            ))
        }
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("no gs2 header"))?;
    let gs2_header = &msg[..flag.len() + authzid.len() + 2];
    let authzid = match authzid {
        "" => None,
        a => Some(
            a.strip_prefix("a=")
                .ok_or(ScramError::Malformed("gs2 header: authzid is not a="))?,
        ),
    };
    let mut attrs = bare.split(',');
    let name = attrs.next().unwrap_or_default();
    if name.starts_with("m=") {
        return Err(ScramError::ExtensionNotSupported);
    }
    let name = name
        .strip_prefix("n=")
        .ok_or(ScramError::Malformed("no user name (n=)"))?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(ScramError::Malformed("no nonce (r=) after the user name"))?;
    if nonce.is_empty() || !nonce.bytes().all(|b| matches!(b, 0x21..=0x7e)) {
        return Err(ScramError::Malformed(
            "nonce (r=) is empty or not printable ascii",
        ));
    }
    if nonce.len() > MAX_CLIENT_NONCE_LEN {
        return Err(ScramError::Malformed(
            "nonce (r=) longer than 256 characters",
        ));
    }
    attrs.try_for_each(check_extension)?;
    let user = decode_user_name(name)?;
    if let Some(authzid) = authzid {
        if decode_user_name(authzid)? != user {
            return Err(ScramError::AuthzidMismatch);
        }
    }
    Ok(ClientFirst {
        user,
        gs2_header: gs2_header.to_string(),
        bare: bare.to_string(),
        nonce: nonce.to_string(),
    })
}

/// An optional extension: `ALPHA "=" value`, ignored; `m=` (mandatory) is refused.
fn check_extension(attr: &str) -> Result<(), ScramError> {
    let b = attr.as_bytes();
    if b.first() == Some(&b'm') && b.get(1) == Some(&b'=') {
        return Err(ScramError::ExtensionNotSupported);
    }
    if b.len() < 3 || !b[0].is_ascii_alphabetic() || b[1] != b'=' || b.contains(&0) {
        return Err(ScramError::Malformed("an attribute is not a=value"));
    }
    Ok(())
}

/// A `saslname`: `=2C` and `=3D` stand for `,` and `=`; then SASLprep, as the client should
/// have prepared it.
fn decode_user_name(s: &str) -> Result<String, ScramError> {
    let mut name = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        name.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => name.push(','),
            Some("=3D") => name.push('='),
            _ => return Err(ScramError::InvalidUserName("'=' not followed by 2C or 3D")),
        }
        rest = &rest[i + 3..];
    }
    name.push_str(rest);
    let prepared = stringprep::saslprep(&name)
        .map_err(|_| ScramError::InvalidUserName("refused by saslprep"))?;
    if prepared.is_empty() {
        return Err(ScramError::InvalidUserName("empty"));
    }
    Ok(prepared.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 7677 §3, the SCRAM-SHA-256 example: user `user`, password `pencil`.
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
    /// The RFC example's credential (computed with Python's hashlib and hmac).
    const RFC_CREDENTIAL: &str = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
                                  WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:\
                                  wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

    fn rfc_credential() -> ScramCredential {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        ScramCredential::derive(b"pencil", &salt, 4096).unwrap()
    }

    /// The client side, enough for the tests: the final message for `password`, given the
    /// messages so far.
    fn client_final(password: &[u8], client_first: &str, server_first: &[u8]) -> String {
        client_final_with(password, client_first, server_first, "")
    }

    /// As [`client_final`], with `extensions` (`,x=...`) before the proof.
    fn client_final_with(
        password: &[u8],
        client_first: &str,
        server_first: &[u8],
        extensions: &str,
    ) -> String {
        let server_first = std::str::from_utf8(server_first).unwrap();
        let mut nonce = "";
        let mut salt = Vec::new();
        let mut iterations = 0;
        for a in server_first.split(',') {
            match a.split_at(2) {
                ("r=", v) => nonce = v,
                ("s=", v) => salt = STANDARD.decode(v).unwrap(),
                ("i=", v) => iterations = v.parse().unwrap(),
                _ => {}
            }
        }
        let (flag, rest) = client_first.split_once(',').unwrap();
        let (authzid, bare) = rest.split_once(',').unwrap();
        let gs2 = format!("{flag},{authzid},");
        let without_proof = format!("c={},r={nonce}{extensions}", STANDARD.encode(gs2));
        let auth = format!("{bare},{server_first},{without_proof}");
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, &salt, iterations, &mut salted);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let signature = hmac(&stored_key, &[auth.as_bytes()]);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        format!("{without_proof},p={}", STANDARD.encode(proof))
    }

    /// A full exchange: the server's answer to the final message.
    fn exchange(
        credential: Option<&ScramCredential>,
        client_first_msg: &str,
        password: &[u8],
    ) -> Result<Vec<u8>, ScramError> {
        let mut s = ScramServer::new();
        s.client_first(client_first_msg.as_bytes())?;
        let sf = s.server_first(credential);
        s.client_final(client_final(password, client_first_msg, &sf).as_bytes())
    }

    #[test]
    fn rfc7677_test_vector() {
        let cred = rfc_credential();
        assert_eq!(cred.encode(), RFC_CREDENTIAL);
        let mut s = ScramServer::new().with_server_nonce(RFC_SERVER_NONCE);
        assert_eq!(s.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap(), "user");
        assert_eq!(s.server_first(Some(&cred)), RFC_SERVER_FIRST.as_bytes());
        let fin = s.client_final(RFC_CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(fin).unwrap(), RFC_SERVER_FINAL);
        // The test client computes the RFC's final message too.
        assert_eq!(
            client_final(b"pencil", RFC_CLIENT_FIRST, RFC_SERVER_FIRST.as_bytes()),
            RFC_CLIENT_FINAL
        );
    }

    #[test]
    fn credential_text_round_trip_and_password_check() {
        let cred = ScramCredential::parse(RFC_CREDENTIAL).unwrap();
        assert_eq!(cred, rfc_credential());
        assert_eq!(cred.encode(), RFC_CREDENTIAL);
        assert!(cred.verify_password(b"pencil"));
        assert!(!cred.verify_password(b"pencil "));
        assert!(!cred.verify_password(b""));
        assert!(!cred.verify_password(&[0xff, 0xfe]), "not utf-8");
        assert!(cred.is_weak(), "4096 iterations");
        assert_eq!(cred.iterations(), 4096);
        assert_eq!(cred.salt().len(), 16);
        let debug = format!("{cred:?}");
        assert!(
            !debug.contains("W22Z") && !debug.contains("WG5d"),
            "{debug}"
        );

        let fresh = ScramCredential::generate(b"s3cret", MIN_ITERATIONS).unwrap();
        assert_eq!(fresh.salt().len(), SALT_LEN);
        assert_ne!(
            fresh.salt(),
            ScramCredential::generate(b"s3cret", MIN_ITERATIONS)
                .unwrap()
                .salt()
        );
        assert!(fresh.verify_password(b"s3cret"));
        assert_eq!(ScramCredential::parse(&fresh.encode()).unwrap(), fresh);
        let again = ScramCredential::from_keys(
            fresh.iterations(),
            fresh.salt(),
            *fresh.stored_key(),
            *fresh.server_key(),
        )
        .unwrap();
        assert_eq!(again, fresh);
    }

    #[test]
    fn malformed_credentials() {
        let (salt, key) = ("W22ZaJ0SNY7soEsUEjb6gQ==", STANDARD.encode([7u8; 32]));
        let cases = [
            ("$7$4096$AAAA$AAAA".to_string(), CredentialError::NotScram),
            (
                "SCRAM-SHA-1$4096:AAAA$AAAA:AAAA".into(),
                CredentialError::NotScram,
            ),
            ("SCRAM-SHA-256$".into(), CredentialError::Malformed("")),
            (
                format!("SCRAM-SHA-256$4096:{salt}${key}"),
                CredentialError::Malformed(""),
            ),
            (
                format!("SCRAM-SHA-256$4096{salt}${key}:{key}"),
                CredentialError::Malformed(""),
            ),
            (
                format!("SCRAM-SHA-256$:{salt}${key}:{key}"),
                CredentialError::Malformed(""),
            ),
            (
                format!("SCRAM-SHA-256$04096:{salt}${key}:{key}"),
                CredentialError::Malformed(""),
            ),
            (
                format!("SCRAM-SHA-256$+4096:{salt}${key}:{key}"),
                CredentialError::Malformed(""),
            ),
            (
                format!("SCRAM-SHA-256$4095:{salt}${key}:{key}"),
                CredentialError::Iterations,
            ),
            (
                format!("SCRAM-SHA-256$99999999999:{salt}${key}:{key}"),
                CredentialError::Iterations,
            ),
            (
                format!("SCRAM-SHA-256$20000000:{salt}${key}:{key}"),
                CredentialError::Iterations,
            ),
            (
                format!("SCRAM-SHA-256$4096:${key}:{key}"),
                CredentialError::Malformed(""),
            ),
            (
                format!("SCRAM-SHA-256$4096:!!${key}:{key}"),
                CredentialError::Malformed(""),
            ),
            // Unpadded and non-canonical base64 would not encode back to the same text.
            (
                format!("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ${key}:{key}"),
                CredentialError::Malformed(""),
            ),
            (
                format!("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gR==${key}:{key}"),
                CredentialError::Malformed(""),
            ),
            (
                format!("SCRAM-SHA-256$4096:{salt}$AAAA:{key}"),
                CredentialError::Malformed(""),
            ),
            (
                format!("SCRAM-SHA-256$4096:{salt}${key}:{key}:{key}"),
                CredentialError::Malformed(""),
            ),
            (
                format!("SCRAM-SHA-256$4096:{salt}${key}:{key}$x"),
                CredentialError::Malformed(""),
            ),
            (
                format!("SCRAM-SHA-256$4096:{salt}${key}:{key} "),
                CredentialError::Malformed(""),
            ),
        ];
        for (text, want) in cases {
            let got = ScramCredential::parse(&text).unwrap_err();
            let same = match (&got, &want) {
                (CredentialError::Malformed(_), CredentialError::Malformed(_)) => true,
                (g, w) => g == w,
            };
            assert!(same, "{text}: {got:?}, expected {want:?}");
            assert!(!got.to_string().contains(&key[..8]), "no key in {got}");
        }
        assert!(ScramCredential::parse(&format!("SCRAM-SHA-256$4096:{salt}${key}:{key}")).is_ok());
    }

    #[test]
    fn iteration_bounds() {
        assert_eq!(
            ScramCredential::derive(b"p", b"salt", MIN_ITERATIONS - 1),
            Err(CredentialError::Iterations)
        );
        assert_eq!(
            ScramCredential::generate(b"p", MAX_ITERATIONS + 1),
            Err(CredentialError::Iterations)
        );
        assert!(matches!(
            ScramCredential::derive(b"p", b"", MIN_ITERATIONS),
            Err(CredentialError::Malformed(_))
        ));
        assert!(
            !ScramCredential::from_keys(WEAK_BELOW, b"s", [0; 32], [0; 32])
                .unwrap()
                .is_weak()
        );
    }

    #[test]
    fn passwords_are_prepared_with_saslprep() {
        // RFC 4013 §3's examples: a soft hyphen maps to nothing, compatibility characters
        // normalise (NFKC), a control character is prohibited.
        let c = ScramCredential::derive(b"IX", b"salt", MIN_ITERATIONS).unwrap();
        assert!(c.verify_password("I\u{00AD}X".as_bytes()));
        assert!(
            c.verify_password("\u{2168}".as_bytes()),
            "roman numeral nine"
        );
        let nbsp = ScramCredential::derive("a\u{00A0}b".as_bytes(), b"salt", MIN_ITERATIONS);
        assert!(nbsp.unwrap().verify_password(b"a b"), "non-ascii space");
        for bad in ["a\u{0007}b".as_bytes(), b"\xff", "\u{00AD}".as_bytes()] {
            let e = ScramCredential::derive(bad, b"salt", MIN_ITERATIONS).unwrap_err();
            assert!(matches!(e, CredentialError::Password(_)), "{e}");
            assert!(
                !e.to_string().contains('\u{0007}'),
                "never quotes the password"
            );
        }
        assert_eq!(check_user_name("alice"), Ok(()));
        assert_eq!(check_user_name("a,b=c"), Ok(()));
        assert_eq!(check_user_name("Ärger"), Ok(()));
        for bad in ["I\u{00AD}X", "\u{2168}", "a\u{0007}", "\u{00AD}"] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn user_names_are_unescaped_and_prepared() {
        let cred = ScramCredential::derive(b"pw", b"salt", MIN_ITERATIONS).unwrap();
        for (first, user) in [
            ("n,,n=a=2Cb=3Dc,r=abc", "a,b=c"),
            ("n,,n=I\u{00AD}X,r=abc", "IX"),
            ("n,,n=\u{00C4}rger,r=abc", "\u{00C4}rger"),
            ("n,a=user,n=user,r=abc", "user"),
            ("y,,n=user,r=abc,x=ignored", "user"),
        ] {
            let mut s = ScramServer::new();
            assert_eq!(s.client_first(first.as_bytes()).unwrap(), user, "{first}");
            let sf = s.server_first(Some(&cred));
            let fin = client_final(b"pw", first, &sf);
            assert!(s.client_final(fin.as_bytes()).is_ok(), "{first}");
        }
    }

    #[test]
    fn malformed_client_first_messages() {
        use ScramError::*;
        let cases: &[(&[u8], ScramError)] = &[
            (b"", Malformed("")),
            (b"n", Malformed("")),
            (b"n,", Malformed("")),
            (b"n,,", Malformed("")),
            (b"x,,n=user,r=abc", Malformed("")),
            (b"F,n,,n=user,r=abc", Malformed("")),
            (b"N,,n=user,r=abc", Malformed("")),
            (b"n,b=user,n=user,r=abc", Malformed("")),
            (b"n,,r=abc,n=user", Malformed("")),
            (b"n,,n=user", Malformed("")),
            (b"n,,n=user,r=", Malformed("")),
            (b"n,,n=user,r=a b", Malformed("")),
            (b"n,,n=user,r=abc,", Malformed("")),
            (b"n,,n=user,r=abc,1=x", Malformed("")),
            (b"n,,n=user,r=abc,x=", Malformed("")),
            (b"n,,n=user,r=\xc3\xa9", Malformed("")),
            (b"n,,n=\xff,r=abc", Malformed("")),
            (b"n,,n=,r=abc", InvalidUserName("")),
            (b"n,,n=a=2,r=abc", InvalidUserName("")),
            (b"n,,n=a=2c,r=abc", InvalidUserName("")),
            (b"n,,n=a=,r=abc", InvalidUserName("")),
            (b"n,,n=a\x07,r=abc", InvalidUserName("")),
            (b"n,,n=a\0b,r=abc", InvalidUserName("")),
            (b"p=tls-unique,,n=user,r=abc", ChannelBindingNotSupported),
            (
                b"p=tls-server-end-point,,n=user,r=abc",
                ChannelBindingNotSupported,
            ),
            (b"n,,m=ext,n=user,r=abc", ExtensionNotSupported),
            (b"n,,n=user,r=abc,m=ext", ExtensionNotSupported),
            (b"n,a=admin,n=user,r=abc", AuthzidMismatch),
            (b"n,a=,n=user,r=abc", InvalidUserName("")),
        ];
        for (msg, want) in cases {
            let mut s = ScramServer::new();
            let got = s.client_first(msg).unwrap_err();
            assert_eq!(
                std::mem::discriminant(&got),
                std::mem::discriminant(want),
                "{}: {got}",
                String::from_utf8_lossy(msg)
            );
            let line = got.to_string();
            assert!(
                !line.contains('\n') && line.starts_with(|c: char| c.is_ascii_lowercase()),
                "{line}"
            );
            // The exchange is over.
            assert_eq!(s.client_first(b"n,,n=user,r=abc"), Err(OutOfOrder));
        }
        let long = format!("n,,n=user,r={}", "x".repeat(MAX_CLIENT_NONCE_LEN + 1));
        assert!(matches!(
            ScramServer::new().client_first(long.as_bytes()),
            Err(Malformed(_))
        ));
    }

    #[test]
    fn malformed_client_final_messages() {
        let cred = rfc_credential();
        let good = RFC_CLIENT_FINAL;
        let proof = good.rsplit_once(",p=").unwrap().1;
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let cases = [
            (String::new(), "malformed"),
            ("c=biws".into(), "malformed"),
            (format!("c=biws,r={nonce}"), "malformed"),
            (format!("r={nonce},c=biws,p={proof}"), "malformed"),
            (format!("c=biws,p={proof},r={nonce}"), "malformed"),
            (format!("c=biws,r={nonce},p=AAAA"), "malformed"),
            (format!("c=biws,r={nonce},p=!!!"), "malformed"),
            (format!("c=b!ws,r={nonce},p={proof}"), "malformed"),
            (format!("c=biws,r={nonce},7=x,p={proof}"), "malformed"),
            (format!("c=biws,r={nonce},m=x,p={proof}"), "extension"),
            (format!("c=eSws,r={nonce},p={proof}"), "channel binding"),
            (
                format!("c=cD10bHMtdW5pcXVlLCw=,r={nonce},p={proof}"),
                "channel binding",
            ),
            (format!("c=biws,r={nonce}x,p={proof}"), "nonce"),
            (format!("c=biws,r=rOprNGfwEbeRWgbNEkqO,p={proof}"), "nonce"),
        ];
        for (msg, want) in cases {
            let mut s = ScramServer::new().with_server_nonce(RFC_SERVER_NONCE);
            s.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
            s.server_first(Some(&cred));
            let got = s.client_final(msg.as_bytes()).unwrap_err();
            assert!(got.to_string().contains(want), "{msg}: {got}");
            assert_eq!(s.client_final(good.as_bytes()), Err(ScramError::OutOfOrder));
        }
        // An extension before the proof is ignored (and part of the AuthMessage).
        let first = "n,,n=user,r=abc";
        let mut s = ScramServer::new();
        s.client_first(first.as_bytes()).unwrap();
        let sf = String::from_utf8(s.server_first(Some(&cred))).unwrap();
        let fin = client_final_with(b"pencil", first, sf.as_bytes(), ",x=1,y=a=b");
        assert!(fin.contains(",x=1,y=a=b,p="), "{fin}");
        assert!(s.client_final(fin.as_bytes()).is_ok());
    }

    #[test]
    fn channel_binding_flag_y_is_echoed() {
        let cred = rfc_credential();
        let first = "y,,n=user,r=abc";
        let mut s = ScramServer::new();
        s.client_first(first.as_bytes()).unwrap();
        let sf = s.server_first(Some(&cred));
        let fin = client_final(b"pencil", first, &sf);
        assert!(fin.starts_with("c=eSws,"), "{fin}");
        assert!(s.client_final(fin.as_bytes()).is_ok());
        // `c=biws` after `y,,` claims another header.
        let mut s = ScramServer::new();
        s.client_first(first.as_bytes()).unwrap();
        let sf = s.server_first(Some(&cred));
        let fin = client_final(b"pencil", first, &sf).replacen("c=eSws", "c=biws", 1);
        assert_eq!(
            s.client_final(fin.as_bytes()),
            Err(ScramError::ChannelBindingMismatch)
        );
    }

    #[test]
    fn wrong_password_fails_at_the_proof() {
        let cred = rfc_credential();
        let first = "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL";
        assert!(exchange(Some(&cred), first, b"pencil").is_ok());
        let e = exchange(Some(&cred), first, b"pencil2").unwrap_err();
        assert_eq!(e, ScramError::InvalidProof);
        assert_eq!(e.server_final(), b"e=invalid-proof");
        // A proof bit flipped in an otherwise right message.
        let mut s = ScramServer::new().with_server_nonce(RFC_SERVER_NONCE);
        s.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        s.server_first(Some(&cred));
        let flipped = RFC_CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
        assert_eq!(
            s.client_final(flipped.as_bytes()),
            Err(ScramError::InvalidProof)
        );
    }

    #[test]
    fn the_server_signature_proves_the_server() {
        let cred = rfc_credential();
        let first = "n,,n=user,r=abc";
        let mut s = ScramServer::new();
        s.client_first(first.as_bytes()).unwrap();
        let sf = String::from_utf8(s.server_first(Some(&cred))).unwrap();
        assert!(
            sf.starts_with("r=abc") && sf.len() > "r=abc".len() + 30,
            "{sf}"
        );
        let fin = client_final(b"pencil", first, sf.as_bytes());
        let v = String::from_utf8(s.client_final(fin.as_bytes()).unwrap()).unwrap();
        let without_proof = fin.rsplit_once(",p=").unwrap().0;
        let auth = format!("n=user,r=abc,{sf},{without_proof}");
        let expected = hmac(cred.server_key(), &[auth.as_bytes()]);
        assert_eq!(v, format!("v={}", STANDARD.encode(expected)));
    }

    #[test]
    fn unknown_users_look_like_known_ones_until_the_proof() {
        let key = [9u8; 32];
        let first_of = |user: &str| format!("n,,n={user},r=abc");
        let answer = |user: &str| {
            let mut s = ScramServer::new()
                .with_decoy_key(key)
                .with_decoy_iterations(4096);
            s.client_first(first_of(user).as_bytes()).unwrap();
            String::from_utf8(s.server_first(None)).unwrap()
        };
        let salt = |sf: &str| sf.split(',').nth(1).unwrap().to_string();
        let (a1, a2, b) = (answer("ghost"), answer("ghost"), answer("phantom"));
        assert_eq!(salt(&a1), salt(&a2), "the same made-up salt each time");
        assert_ne!(salt(&a1), salt(&b), "a salt per user");
        assert!(a1.ends_with(",i=4096"), "{a1}");
        let decoded = STANDARD.decode(&salt(&a1)[2..]).unwrap();
        assert_eq!(decoded.len(), SALT_LEN, "as long as real salts");
        assert_ne!(a1, a2, "fresh server nonces");
        // Another key makes other salts.
        let mut s = ScramServer::new().with_decoy_key([8u8; 32]);
        s.client_first(first_of("ghost").as_bytes()).unwrap();
        assert_ne!(
            salt(&String::from_utf8(s.server_first(None)).unwrap()),
            salt(&a1)
        );

        // Any password fails, with the same e= as a wrong password.
        let e = exchange(None, &first_of("ghost"), b"whatever").unwrap_err();
        assert_eq!(e, ScramError::UnknownUser);
        assert_eq!(e.server_final(), ScramError::InvalidProof.server_final());
        let iterations = |mut s: ScramServer| {
            s.client_first(first_of("ghost").as_bytes()).unwrap();
            let sf = String::from_utf8(s.server_first(None)).unwrap();
            sf.rsplit_once(",i=").unwrap().1.parse::<u32>().unwrap()
        };
        assert_eq!(iterations(ScramServer::new()), DEFAULT_ITERATIONS);
        assert_eq!(
            iterations(ScramServer::new().with_decoy_iterations(1)),
            MIN_ITERATIONS,
            "clamped"
        );
    }

    #[test]
    fn a_replayed_final_message_is_refused() {
        let cred = rfc_credential();
        let first = "n,,n=user,r=abc";
        let mut s = ScramServer::new();
        s.client_first(first.as_bytes()).unwrap();
        let sf = s.server_first(Some(&cred));
        let fin = client_final(b"pencil", first, &sf);
        assert!(s.client_final(fin.as_bytes()).is_ok());
        // Again on the same exchange.
        assert_eq!(s.client_final(fin.as_bytes()), Err(ScramError::OutOfOrder));
        assert_eq!(
            s.client_first(first.as_bytes()),
            Err(ScramError::OutOfOrder)
        );
        // On a new exchange with the same first message: the server nonce differs.
        let mut s = ScramServer::new();
        s.client_first(first.as_bytes()).unwrap();
        s.server_first(Some(&cred));
        assert_eq!(
            s.client_final(fin.as_bytes()),
            Err(ScramError::NonceMismatch)
        );
        // A final message before the server's first one ends the exchange.
        let mut s = ScramServer::new();
        assert_eq!(s.client_final(fin.as_bytes()), Err(ScramError::OutOfOrder));
        assert_eq!(
            s.client_first(first.as_bytes()),
            Err(ScramError::OutOfOrder)
        );
        let mut s = ScramServer::new();
        s.client_first(first.as_bytes()).unwrap();
        assert_eq!(s.client_final(fin.as_bytes()), Err(ScramError::OutOfOrder));
    }

    #[test]
    #[should_panic(expected = "without a successful client_first")]
    fn server_first_before_client_first_is_a_bug() {
        ScramServer::new().server_first(None);
    }

    #[test]
    fn debug_output_shows_no_keys() {
        let mut s = ScramServer::new();
        s.client_first(b"n,,n=user,r=abc").unwrap();
        s.server_first(Some(&rfc_credential()));
        let d = format!("{s:?}");
        assert!(
            d.contains("server-first sent") && !d.contains("W22Z"),
            "{d}"
        );
    }

    proptest! {
        #[test]
        fn any_input_is_answered_without_panicking(
            first in prop::collection::vec(any::<u8>(), 0..80),
            last in prop::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut s = ScramServer::new().with_decoy_iterations(MIN_ITERATIONS);
            if s.client_first(&first).is_ok() {
                s.server_first(None);
                prop_assert!(s.client_final(&last).is_err());
            }
        }

        #[test]
        fn any_credential_round_trips(
            salt in prop::collection::vec(any::<u8>(), 1..64),
            iterations in MIN_ITERATIONS..MAX_ITERATIONS,
            stored in any::<[u8; 32]>(),
            server in any::<[u8; 32]>(),
        ) {
            let c = ScramCredential::from_keys(iterations, &salt, stored, server).unwrap();
            let text = c.encode();
            prop_assert_eq!(ScramCredential::parse(&text).unwrap(), c);
        }
    }
}
