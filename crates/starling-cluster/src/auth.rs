//! Peer authentication: every gRPC call between nodes proves knowledge of the cluster secret,
//! and so does every node a call is made to.
//!
//! ```text
//!  caller (node A)                                     callee (node B)
//!  ───────────────                                     ───────────────
//!  every call: metadata x-starling-peer-auth =
//!    v1.<A>.<B>.<unix ms>.<nonce>.<HMAC(secret, "call", A, B, ms, nonce)>
//!                         ──────────────────────────▶  interceptor, before any body is
//!                                                      decoded: MAC (constant time), B is me,
//!                                                      |now - ms| <= WINDOW, nonce not seen
//!                                                      in the window; else UNAUTHENTICATED
//!  Hello{from A, to B, challenge}  ──────────────────▶
//!                         ◀──────────────────────────  HelloReply{B, HMAC(secret, "hello",
//!  verify, then open the Raft / Forward streams                    B, A, challenge)}
//! ```
//!
//! The caller's proof stops strangers from calling (joining, injecting Raft messages, feeding
//! forwards) and from reaching the Raft decoder at all: raft-rs decodes with rust-protobuf 2,
//! which is under RUSTSEC-2024-0437. The callee's proof stops a node from sending Raft messages
//! (the replicated state) to an address that is not a member holding the secret, and a member
//! from being added unless the new node holds it. Nothing is encrypted: see docs/security.md.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tonic::metadata::MetadataValue;
use tracing::warn;

type HmacSha256 = Hmac<Sha256>;

/// The metadata key that carries a call's credentials.
pub const AUTH_HEADER: &str = "x-starling-peer-auth";

/// How far a call's timestamp may be from the callee's clock (either way). Nonces are
/// remembered this long, so a captured header cannot be replayed.
pub const WINDOW: Duration = Duration::from_secs(30);

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Bytes of a call nonce and of a Hello challenge.
pub const NONCE_LEN: usize = 16;

/// Nonces remembered at most; beyond this (only authenticated callers add entries) calls are
/// refused until old ones expire.
const MAX_REMEMBERED: usize = 1 << 16;

/// Rejected calls are logged at most once per this interval (with the count in between).
const LOG_INTERVAL: Duration = Duration::from_secs(10);

const CALL_DOMAIN: &[u8] = b"starling/peer-call/v1\0";
const HELLO_DOMAIN: &[u8] = b"starling/peer-hello/v1\0";

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials in the call.
    #[error("no peer credentials (metadata {AUTH_HEADER})")]
    Missing,
    /// Credentials that do not parse.
    #[error("malformed peer credentials")]
    Malformed,
    /// The MAC does not match: another secret, or tampered fields.
    #[error("bad peer credentials (wrong cluster secret?)")]
    BadMac,
    /// Meant for another node.
    #[error("credentials for node {0}, this is another node")]
    WrongRecipient(u64),
    /// Timestamp outside the window (clocks apart, or an old capture).
    #[error("stale peer credentials ({0} ms from this node's clock)")]
    Stale(i64),
    /// Nonce seen before within the window.
    #[error("replayed peer credentials")]
    Replayed,
    /// Too many calls in one window.
    #[error("too many peer calls; retry later")]
    Busy,
}

/// The authenticated caller of a call, put into its extensions by [`PeerAuth::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthenticatedPeer(pub u64);

/// This node's cluster credentials: signs outgoing calls, checks incoming ones.
pub struct PeerAuth {
    node_id: u64,
    key: HmacSha256,
    seen: Mutex<Seen>,
    rejections: Mutex<RejectionLog>,
}

/// Nonces of accepted calls (by caller) with the time they expire from, in Unix ms.
#[derive(Default)]
struct Seen {
    nonces: HashMap<(u64, [u8; NONCE_LEN]), u64>,
    pruned_at: u64,
}

#[derive(Default)]
struct RejectionLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl std::fmt::Debug for PeerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerAuth")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(())
}

impl PeerAuth {
    /// Credentials of node `node_id` from the cluster secret.
    ///
    /// # Panics
    /// Never: HMAC takes keys of any length (the length rule is enforced by the config).
    pub fn new(node_id: u64, secret: &[u8]) -> PeerAuth {
        PeerAuth {
            node_id,
            key: HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length"),
            seen: Mutex::default(),
            rejections: Mutex::default(),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    fn call_mac(&self, from: u64, to: u64, ts: u64, nonce: &[u8; NONCE_LEN]) -> HmacSha256 {
        let mut m = self.key.clone();
        m.update(CALL_DOMAIN);
        m.update(&from.to_be_bytes());
        m.update(&to.to_be_bytes());
        m.update(&ts.to_be_bytes());
        m.update(nonce);
        m
    }

    fn hello_mac(&self, callee: u64, caller: u64, challenge: &[u8]) -> HmacSha256 {
        let mut m = self.key.clone();
        m.update(HELLO_DOMAIN);
        m.update(&callee.to_be_bytes());
        m.update(&caller.to_be_bytes());
        m.update(challenge);
        m
    }

    /// The credentials of one call from this node to node `to` (fresh nonce, current time).
    pub fn sign_call(&self, to: u64) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        self.sign_call_at(to, now_ms(), nonce)
    }

    fn sign_call_at(&self, to: u64, ts: u64, nonce: [u8; NONCE_LEN]) -> String {
        let mac = self.call_mac(self.node_id, to, ts, &nonce).finalize();
        format!(
            "v1.{}.{to}.{ts}.{}.{}",
            self.node_id,
            hex(&nonce),
            hex(&mac.into_bytes())
        )
    }

    /// Checks a call's credentials (the value of [`AUTH_HEADER`]); returns the caller's id.
    ///
    /// # Errors
    /// Why the call must be refused.
    pub fn verify_call(&self, value: Option<&str>) -> Result<u64, AuthError> {
        self.verify_call_at(value, now_ms())
    }

    fn verify_call_at(&self, value: Option<&str>, now: u64) -> Result<u64, AuthError> {
        let value = value.ok_or(AuthError::Missing)?;
        let mut parts = value.split('.');
        if parts.next() != Some("v1") {
            return Err(AuthError::Malformed);
        }
        let mut num = || -> Result<u64, AuthError> {
            parts
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or(AuthError::Malformed)
        };
        let (from, to, ts) = (num()?, num()?, num()?);
        let mut nonce = [0u8; NONCE_LEN];
        let mut mac = [0u8; 32];
        unhex(parts.next().ok_or(AuthError::Malformed)?, &mut nonce).ok_or(AuthError::Malformed)?;
        unhex(parts.next().ok_or(AuthError::Malformed)?, &mut mac).ok_or(AuthError::Malformed)?;
        if parts.next().is_some() {
            return Err(AuthError::Malformed);
        }
        // Constant-time comparison.
        self.call_mac(from, to, ts, &nonce)
            .verify_slice(&mac)
            .map_err(|_| AuthError::BadMac)?;
        if to != self.node_id {
            return Err(AuthError::WrongRecipient(to));
        }
        let skew = now as i64 - ts as i64;
        if skew.unsigned_abs() > WINDOW.as_millis() as u64 {
            return Err(AuthError::Stale(skew));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let n = seen.nonces.len();
        // Forget nonces older than the window (a replay of them is stale anyway): at most once
        // a second while the table is half full, at every call once it is full.
        if n >= MAX_REMEMBERED || (n >= MAX_REMEMBERED / 2 && now >= seen.pruned_at + 1000) {
            let horizon = now.saturating_sub(2 * WINDOW.as_millis() as u64);
            seen.nonces.retain(|_, at| *at >= horizon);
            seen.pruned_at = now;
        }
        if seen.nonces.contains_key(&(from, nonce)) {
            return Err(AuthError::Replayed);
        }
        if seen.nonces.len() >= MAX_REMEMBERED {
            return Err(AuthError::Busy);
        }
        seen.nonces.insert((from, nonce), ts.max(now));
        Ok(from)
    }

    /// The callee's answer to a Hello: proves this node (`self`) holds the secret to `caller`.
    pub fn hello_proof(&self, caller: u64, challenge: &[u8]) -> Vec<u8> {
        self.hello_mac(self.node_id, caller, challenge)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Checks a Hello answer from node `callee` to this node's `challenge`.
    pub fn verify_hello(&self, callee: u64, challenge: &[u8], proof: &[u8]) -> bool {
        self.hello_mac(callee, self.node_id, challenge)
            .verify_slice(proof)
            .is_ok()
    }

    /// A fresh Hello challenge.
    pub fn challenge() -> Vec<u8> {
        let mut c = vec![0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut c);
        c
    }

    /// Logs a refused call with the caller's address, at most once per `LOG_INTERVAL`.
    pub fn log_rejection(&self, remote: Option<SocketAddr>, error: &AuthError) {
        let mut log = self.rejections.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if log
            .last
            .is_some_and(|t| now.duration_since(t) < LOG_INTERVAL)
        {
            log.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut log.suppressed);
        log.last = Some(now);
        drop(log);
        let remote = remote.map_or_else(|| "unknown".to_string(), |a| a.to_string());
        warn!(
            remote = %remote,
            error = %error,
            suppressed_since_last = suppressed,
            "peer call refused: not authenticated with the cluster secret"
        );
    }

    /// The interceptor of the peer service: refuses calls without valid credentials before
    /// their body is read or decoded.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` with the reason.
    pub fn check(&self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = req
            .metadata()
            .get(AUTH_HEADER)
            .map(|v| v.to_str().map_err(|_| AuthError::Malformed));
        let result = match value {
            None => self.verify_call(None),
            Some(Err(e)) => Err(e),
            Some(Ok(v)) => self.verify_call(Some(v)),
        };
        match result {
            Ok(from) => {
                req.extensions_mut().insert(AuthenticatedPeer(from));
                Ok(req)
            }
            Err(e) => {
                self.log_rejection(req.remote_addr(), &e);
                Err(tonic::Status::unauthenticated(format!(
                    "peer authentication failed: {e}"
                )))
            }
        }
    }

    /// Adds this node's credentials for a call to node `to`.
    pub fn sign(&self, to: u64, req: &mut tonic::Request<()>) {
        if let Ok(v) = MetadataValue::try_from(self.sign_call(to)) {
            req.metadata_mut().insert(AUTH_HEADER, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signed_call_verifies_once() {
        let a = PeerAuth::new(1, SECRET);
        let b = PeerAuth::new(2, SECRET);
        let h = a.sign_call(2);
        assert_eq!(b.verify_call(Some(&h)), Ok(1));
        assert_eq!(b.verify_call(Some(&h)), Err(AuthError::Replayed));
    }

    #[test]
    fn wrong_secret_recipient_or_tampering_is_refused() {
        let a = PeerAuth::new(1, SECRET);
        let b = PeerAuth::new(2, SECRET);
        let stranger = PeerAuth::new(1, b"another secret of the same length");
        assert_eq!(
            b.verify_call(Some(&stranger.sign_call(2))),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            b.verify_call(Some(&a.sign_call(3))),
            Err(AuthError::WrongRecipient(3))
        );
        // Claiming to be node 5 with node 1's MAC.
        let h = a.sign_call(2).replacen("v1.1.", "v1.5.", 1);
        assert_eq!(b.verify_call(Some(&h)), Err(AuthError::BadMac));
        assert_eq!(b.verify_call(None), Err(AuthError::Missing));
        for bad in [
            "",
            "v1",
            "v2.1.2.3.00.00",
            "v1.1.2.x.00.00",
            "v1.1.2.3.zz.00",
        ] {
            assert_eq!(b.verify_call(Some(bad)), Err(AuthError::Malformed), "{bad}");
        }
    }

    #[test]
    fn stale_timestamps_are_refused_both_ways() {
        let a = PeerAuth::new(1, SECRET);
        let b = PeerAuth::new(2, SECRET);
        let now = now_ms();
        let w = WINDOW.as_millis() as u64;
        let old = a.sign_call_at(2, now - w - 1000, [1; NONCE_LEN]);
        assert!(matches!(
            b.verify_call_at(Some(&old), now),
            Err(AuthError::Stale(_))
        ));
        let future = a.sign_call_at(2, now + w + 1000, [2; NONCE_LEN]);
        assert!(matches!(
            b.verify_call_at(Some(&future), now),
            Err(AuthError::Stale(_))
        ));
        let fine = a.sign_call_at(2, now - w + 1000, [3; NONCE_LEN]);
        assert_eq!(b.verify_call_at(Some(&fine), now), Ok(1));
    }

    #[test]
    fn hello_proves_the_callee() {
        let a = PeerAuth::new(1, SECRET);
        let b = PeerAuth::new(2, SECRET);
        let stranger = PeerAuth::new(2, b"another secret of the same length");
        let c = PeerAuth::challenge();
        assert!(a.verify_hello(2, &c, &b.hello_proof(1, &c)));
        assert!(!a.verify_hello(2, &c, &stranger.hello_proof(1, &c)));
        // Bound to the challenge, the callee and the caller.
        assert!(!a.verify_hello(2, &PeerAuth::challenge(), &b.hello_proof(1, &c)));
        assert!(!a.verify_hello(3, &c, &b.hello_proof(1, &c)));
        assert!(!a.verify_hello(2, &c, &b.hello_proof(4, &c)));
        assert!(!a.verify_hello(2, &c, &[]));
    }

    #[test]
    fn remembered_nonces_are_bounded() {
        let a = PeerAuth::new(1, SECRET);
        let b = PeerAuth::new(2, SECRET);
        let now = now_ms();
        for i in 0..MAX_REMEMBERED as u64 {
            let mut nonce = [0u8; NONCE_LEN];
            nonce[..8].copy_from_slice(&i.to_be_bytes());
            let h = a.sign_call_at(2, now, nonce);
            assert_eq!(b.verify_call_at(Some(&h), now), Ok(1));
        }
        let h = a.sign_call_at(2, now, [0xff; NONCE_LEN]);
        assert_eq!(b.verify_call_at(Some(&h), now), Err(AuthError::Busy));
        // Once the window has passed, old nonces are forgotten.
        let later = now + 3 * WINDOW.as_millis() as u64;
        let h = a.sign_call_at(2, later, [0xff; NONCE_LEN]);
        assert_eq!(b.verify_call_at(Some(&h), later), Ok(1));
    }
}
