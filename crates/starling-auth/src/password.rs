//! Password files: one `user:hash` per line, in the formats Mosquitto's `mosquitto_passwd`
//! writes, so that files move between the two brokers in both directions.
//!
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512 (Mosquitto 2), base64 salt and 64-byte
//!   derived key. `starling passwd` writes this format with a 12-byte random salt and
//!   [`DEFAULT_ITERATIONS`] iterations (Mosquitto's own default is 101, far too few today; a file
//!   written by either is read by both, since the count is stored in each line).
//! - `$6$<salt>$<hash>`: one salted SHA-512 (Mosquitto 1.x). Read for migration only: fast to
//!   brute-force, so [`PasswordHash::is_weak`] flags it and the broker logs a warning; re-set such
//!   passwords with `starling passwd`.
//! - `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`: a SCRAM-SHA-256 credential
//!   (RFC 5803, [`crate::scram`]), written by `starling passwd FILE add USER --scram`. Such a
//!   user can log in with SCRAM and with a plain password; a `$7$`/`$6$` user only with a plain
//!   password ([`PasswordFile::scram`] is `None` for them), since SCRAM keys cannot be derived
//!   from those hashes. Mosquitto does not read SCRAM lines: a file with any is Starling's only.
//!
//! Blank lines and lines starting with `#` are kept as they are when a file is rewritten.
//! Verification compares in constant time ([`subtle`]); slow by design (hundreds of milliseconds
//! at the default count), so the broker runs it off its actor threads and caches successes in a
//! [`VerifyCache`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::scram::{CredentialError, ScramCredential};

/// PBKDF2 iterations of new hashes (OWASP's 2023 figure for PBKDF2-HMAC-SHA512).
pub const DEFAULT_ITERATIONS: u32 = 210_000;
/// Most iterations accepted when reading a file (a bigger count is a typo or an attack on CPU).
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Salt length of new hashes, in bytes: 12, as Mosquitto writes them (Mosquitto 2 refuses other
/// lengths, and files should move both ways).
const SALT_LEN: usize = 12;
/// Derived key length (SHA-512 output, as Mosquitto).
const KEY_LEN: usize = 64;

/// Base64 as Mosquitto writes it (standard alphabet, padded), read with or without padding.
const B64_READ: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A stored password hash.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        /// Iteration count.
        iterations: u32,
        /// Salt.
        salt: Vec<u8>,
        /// Derived key.
        hash: Vec<u8>,
    },
    /// `$6$`: SHA-512 of password and salt (Mosquitto 1.x; weak).
    Sha512 {
        /// Salt.
        salt: Vec<u8>,
        /// Digest.
        hash: Vec<u8>,
    },
    /// `SCRAM-SHA-256$`: a SCRAM credential (RFC 5803); Starling only.
    ScramSha256(ScramCredential),
}

impl fmt::Debug for PasswordHash {
    // Never print hash material, not even in debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Pbkdf2Sha512 { iterations, .. } => {
                write!(f, "PasswordHash($7$, {iterations} iterations)")
            }
            PasswordHash::Sha512 { .. } => f.write_str("PasswordHash($6$)"),
            PasswordHash::ScramSha256(c) => {
                write!(
                    f,
                    "PasswordHash(SCRAM-SHA-256, {} iterations)",
                    c.iterations()
                )
            }
        }
    }
}

/// A hash that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashError {
    /// Not `$7$...`, `$6$...` or `SCRAM-SHA-256$...`.
    #[error(
        "unknown password hash format (expected $7$ PBKDF2-SHA512, $6$ SHA-512 or SCRAM-SHA-256)"
    )]
    UnknownFormat,
    /// A field is missing or not base64 / a number.
    #[error("malformed {0} password hash")]
    Malformed(&'static str),
    /// Iteration count out of range.
    #[error("iteration count must be between 1 and {MAX_ITERATIONS}")]
    Iterations,
    /// A SCRAM-SHA-256 credential that cannot be read.
    #[error(transparent)]
    Scram(CredentialError),
}

impl PasswordHash {
    /// Hashes `password` with PBKDF2-HMAC-SHA512, a random salt and `iterations`.
    ///
    /// # Panics
    /// If `iterations` is 0.
    pub fn new(password: &[u8], iterations: u32) -> PasswordHash {
        assert!(iterations > 0, "PBKDF2 needs at least one iteration");
        let salt: [u8; SALT_LEN] = rand::random();
        let mut hash = vec![0u8; KEY_LEN];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut hash);
        PasswordHash::Pbkdf2Sha512 {
            iterations,
            salt: salt.to_vec(),
            hash,
        }
    }

    /// Parses the hash part of a password-file line.
    ///
    /// # Errors
    /// An unknown format, a malformed field, or an iteration count out of range.
    pub fn parse(s: &str) -> Result<PasswordHash, HashError> {
        let b64 = |field: &str, what| {
            B64_READ
                .decode(field)
                .map_err(|_| HashError::Malformed(what))
        };
        if s.starts_with("SCRAM-SHA-256$") {
            return ScramCredential::parse(s)
                .map(PasswordHash::ScramSha256)
                .map_err(HashError::Scram);
        }
        if let Some(rest) = s.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(it), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(HashError::Malformed("$7$"));
            };
            let iterations: u32 = it.parse().map_err(|_| HashError::Malformed("$7$"))?;
            if iterations == 0 || iterations > MAX_ITERATIONS {
                return Err(HashError::Iterations);
            }
            let (salt, hash) = (b64(salt, "$7$")?, b64(hash, "$7$")?);
            if salt.is_empty() || hash.is_empty() || hash.len() > 1024 {
                return Err(HashError::Malformed("$7$"));
            }
            return Ok(PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            });
        }
        if let Some(rest) = s.strip_prefix("$6$") {
            let mut parts = rest.split('$');
            let (Some(salt), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(HashError::Malformed("$6$"));
            };
            let (salt, hash) = (b64(salt, "$6$")?, b64(hash, "$6$")?);
            if hash.len() != 64 {
                return Err(HashError::Malformed("$6$"));
            }
            return Ok(PasswordHash::Sha512 { salt, hash });
        }
        Err(HashError::UnknownFormat)
    }

    /// The hash as written in a password file.
    pub fn encode(&self) -> String {
        match self {
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => format!(
                "$7${iterations}${}${}",
                STANDARD.encode(salt),
                STANDARD.encode(hash)
            ),
            PasswordHash::Sha512 { salt, hash } => {
                format!("$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
            }
            PasswordHash::ScramSha256(c) => c.encode(),
        }
    }

    /// Whether `password` matches. Slow for PBKDF2 (that is the point): call it off latency-
    /// sensitive threads. The comparison itself is constant-time.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut derived = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut derived);
                derived.ct_eq(hash).into()
            }
            PasswordHash::Sha512 { salt, hash } => {
                let mut d = Sha512::new();
                d.update(password);
                d.update(salt);
                d.finalize().as_slice().ct_eq(hash).into()
            }
            PasswordHash::ScramSha256(c) => c.verify_password(password),
        }
    }

    /// True for formats that are cheap to brute-force (`$6$`) or too few iterations (< 10 000).
    pub fn is_weak(&self) -> bool {
        match self {
            PasswordHash::Pbkdf2Sha512 { iterations, .. } => *iterations < 10_000,
            PasswordHash::Sha512 { .. } => true,
            PasswordHash::ScramSha256(c) => c.is_weak(),
        }
    }

    /// The SCRAM credential, if this is one (`None` for `$7$` and `$6$` hashes: those users
    /// can log in with a password, not with SCRAM).
    pub fn scram(&self) -> Option<&ScramCredential> {
        match self {
            PasswordHash::ScramSha256(c) => Some(c),
            PasswordHash::Pbkdf2Sha512 { .. } | PasswordHash::Sha512 { .. } => None,
        }
    }
}

/// A line of a password file.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Line {
    User {
        name: String,
        hash: PasswordHash,
    },
    /// Blank or comment, kept verbatim.
    Other(String),
}

/// A password file cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct PasswordFileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong (never contains the hash).
    pub reason: String,
}

/// A user name that cannot be stored in a password file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid user name: must be non-empty, without ':' or line breaks")]
pub struct InvalidUserName;

/// A parsed password file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PasswordFile {
    lines: Vec<Line>,
    index: HashMap<String, usize>,
}

impl PasswordFile {
    /// Parses a password file.
    ///
    /// # Errors
    /// A line without `:`, an empty user name, a user listed twice, or an unreadable hash (a
    /// user without a hash is refused too: it would let anyone in under that name).
    pub fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut f = PasswordFile::default();
        for (n, raw) in text.lines().enumerate() {
            let err = |reason: String| PasswordFileError {
                line: n + 1,
                reason,
            };
            let line = raw.trim_end_matches(['\r', '\n']);
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                f.lines.push(Line::Other(line.to_string()));
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                return Err(err("expected user:hash".into()));
            };
            if name.is_empty() {
                return Err(err("empty user name".into()));
            }
            let hash = hash.trim();
            if hash.is_empty() {
                return Err(err(format!("user {name:?} has no password hash")));
            }
            let hash = PasswordHash::parse(hash).map_err(|e| err(format!("user {name:?}: {e}")))?;
            if f.index.contains_key(name) {
                return Err(err(format!("user {name:?} appears twice")));
            }
            f.index.insert(name.to_string(), f.lines.len());
            f.lines.push(Line::User {
                name: name.to_string(),
                hash,
            });
        }
        Ok(f)
    }

    /// The hash stored for `user`.
    pub fn get(&self, user: &str) -> Option<&PasswordHash> {
        match self.lines.get(*self.index.get(user)?) {
            Some(Line::User { hash, .. }) => Some(hash),
            _ => None,
        }
    }

    /// The SCRAM credential of `user`: `None` for an unknown user and for a user with a `$7$` or
    /// `$6$` hash (who can log in with a password but not with SCRAM).
    pub fn scram(&self, user: &str) -> Option<&ScramCredential> {
        self.get(user)?.scram()
    }

    /// Adds `user` or replaces their hash. Returns true if the user was new.
    ///
    /// # Errors
    /// A user name that a password file cannot hold.
    pub fn set(&mut self, user: &str, hash: PasswordHash) -> Result<bool, InvalidUserName> {
        if user.is_empty() || user.contains([':', '\n', '\r']) {
            return Err(InvalidUserName);
        }
        if let Some(&i) = self.index.get(user) {
            self.lines[i] = Line::User {
                name: user.to_string(),
                hash,
            };
            return Ok(false);
        }
        self.index.insert(user.to_string(), self.lines.len());
        self.lines.push(Line::User {
            name: user.to_string(),
            hash,
        });
        Ok(true)
    }

    /// Removes `user`. Returns true if they were there.
    pub fn remove(&mut self, user: &str) -> bool {
        let Some(i) = self.index.remove(user) else {
            return false;
        };
        self.lines.remove(i);
        for v in self.index.values_mut() {
            if *v > i {
                *v -= 1;
            }
        }
        true
    }

    /// User names, in file order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(|l| match l {
            Line::User { name, .. } => Some(name.as_str()),
            Line::Other(_) => None,
        })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True if there is no user.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            match l {
                Line::User { name, hash } => {
                    out.push_str(name);
                    out.push(':');
                    out.push_str(&hash.encode());
                }
                Line::Other(s) => out.push_str(s),
            }
            out.push('\n');
        }
        out
    }
}

/// Remembers (user, password) pairs that verified, so that a reconnecting client costs a keyed
/// hash instead of a PBKDF2 run. What is kept is HMAC-SHA256 under a key drawn at random for
/// this cache: a memory dump does not give an attacker a fast hash to brute-force offline.
/// Bounded: cleared when full.
pub struct VerifyCache {
    key: [u8; 32],
    capacity: usize,
    entries: Mutex<HashMap<String, [u8; 32]>>,
}

impl fmt::Debug for VerifyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl VerifyCache {
    /// A cache of at most `capacity` users.
    pub fn new(capacity: usize) -> VerifyCache {
        VerifyCache {
            key: rand::random(),
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn tag(&self, user: &str, password: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        mac.update(&(user.len() as u64).to_be_bytes());
        mac.update(user.as_bytes());
        mac.update(password);
        mac.finalize().into_bytes().into()
    }

    /// True if this pair verified before.
    pub fn check(&self, user: &str, password: &[u8]) -> bool {
        let tag = self.tag(user, password);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(user)
            .is_some_and(|t| bool::from(t.as_slice().ct_eq(&tag)))
    }

    /// Records a pair that verified.
    pub fn remember(&self, user: &str, password: &[u8]) {
        let tag = self.tag(user, password);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(user) {
            entries.clear();
        }
        entries.insert(user.to_string(), tag);
    }

    /// Pairs remembered.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pbkdf2_round_trip() {
        let h = PasswordHash::new(b"s3cret", 1000);
        assert!(h.verify(b"s3cret"));
        assert!(!h.verify(b"s3cret "));
        assert!(!h.verify(b""));
        let back = PasswordHash::parse(&h.encode()).unwrap();
        assert_eq!(back, h);
        assert!(back.verify(b"s3cret"));
        assert!(h.is_weak(), "1000 iterations is weak");
        let PasswordHash::Pbkdf2Sha512 { salt, .. } = &h else {
            unreachable!()
        };
        assert!(
            !format!("{h:?}").contains(&STANDARD.encode(salt)),
            "debug output hides salt"
        );
    }

    /// RFC-style known answer: PBKDF2-HMAC-SHA512("password", "salt", 1) (first 16 bytes), as
    /// published in the common PBKDF2 test vectors.
    #[test]
    fn pbkdf2_known_answer() {
        let salt = STANDARD.encode(b"salt");
        let mut full = vec![0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(b"password", b"salt", 1, &mut full);
        assert_eq!(
            &full[..8],
            &[0x86, 0x7f, 0x70, 0xcf, 0x1a, 0xde, 0x02, 0xcf]
        );
        let line = format!("$7$1${salt}${}", STANDARD.encode(&full));
        assert!(PasswordHash::parse(&line).unwrap().verify(b"password"));
    }

    #[test]
    fn sha512_legacy_format() {
        let salt = b"0123456789ab";
        let mut d = Sha512::new();
        d.update(b"pw");
        d.update(salt);
        let line = format!(
            "$6${}${}",
            STANDARD.encode(salt),
            STANDARD.encode(d.finalize())
        );
        let h = PasswordHash::parse(&line).unwrap();
        assert!(h.verify(b"pw") && !h.verify(b"px"));
        assert!(h.is_weak());
        assert_eq!(h.encode(), line);
    }

    #[test]
    fn malformed_hashes() {
        for s in [
            "plain",
            "$7$",
            "$7$x$AAAA$AAAA",
            "$7$0$AAAA$AAAA",
            "$7$20000000$AAAA$AAAA",
            "$7$10$!!$AAAA",
            "$7$10$AAAA$AAAA$x",
            "$6$AAAA$AAAA",
        ] {
            assert!(PasswordHash::parse(s).is_err(), "{s}");
        }
        // Unpadded base64 is accepted.
        let h = PasswordHash::new(b"p", 1);
        let unpadded = h.encode().replace('=', "");
        assert!(PasswordHash::parse(&unpadded).unwrap().verify(b"p"));
    }

    #[test]
    fn file_edit_keeps_comments_and_order() {
        let a = PasswordHash::new(b"a", 1).encode();
        let text = format!("# users\nalice:{a}\n\nbob:{a}\n");
        let mut f = PasswordFile::parse(&text).unwrap();
        assert_eq!(f.users().collect::<Vec<_>>(), vec!["alice", "bob"]);
        assert!(f.get("alice").unwrap().verify(b"a"));
        assert!(f.set("carol", PasswordHash::new(b"c", 1)).unwrap());
        assert!(!f.set("alice", PasswordHash::new(b"a2", 1)).unwrap());
        assert!(f.remove("bob"));
        assert!(!f.remove("bob"));
        let again = PasswordFile::parse(&f.to_text()).unwrap();
        assert_eq!(again.users().collect::<Vec<_>>(), vec!["alice", "carol"]);
        assert!(again.get("alice").unwrap().verify(b"a2"));
        assert!(again.get("carol").unwrap().verify(b"c"));
        assert!(again.to_text().starts_with("# users\n"));
        assert_eq!(
            f.set("a:b", PasswordHash::new(b"x", 1)),
            Err(InvalidUserName)
        );
    }

    #[test]
    fn file_errors() {
        let a = PasswordHash::new(b"a", 1).encode();
        assert_eq!(PasswordFile::parse("nocolon\n").unwrap_err().line, 1);
        assert_eq!(PasswordFile::parse("u:\n").unwrap_err().line, 1);
        let dup = format!("u:{a}\nu:{a}\n");
        assert_eq!(PasswordFile::parse(&dup).unwrap_err().line, 2);
        let e = PasswordFile::parse("u:$7$10$AAAA$AAAA$x\n").unwrap_err();
        assert!(!e.to_string().contains("AAAA"), "errors never echo hashes");
    }

    #[test]
    fn scram_lines_sit_beside_pbkdf2_lines() {
        let scram = ScramCredential::generate(b"pencil", crate::scram::MIN_ITERATIONS).unwrap();
        let a = PasswordHash::new(b"a", 1).encode();
        let text = format!("# mixed\nalice:{a}\nuser:{}\n", scram.encode());
        let f = PasswordFile::parse(&text).unwrap();
        assert_eq!(f.to_text(), text, "both kinds re-encode unchanged");
        assert!(f.get("user").unwrap().verify(b"pencil"));
        assert!(!f.get("user").unwrap().verify(b"a"));
        assert!(f.get("alice").unwrap().verify(b"a"));
        assert_eq!(f.scram("user"), Some(&scram));
        assert_eq!(f.scram("alice"), None, "a $7$ user has no SCRAM credential");
        assert_eq!(f.scram("nobody"), None);
        assert!(f.get("user").unwrap().is_weak(), "4096 iterations");
        let h = f.get("user").unwrap();
        assert_eq!(PasswordHash::parse(&h.encode()).unwrap(), *h);
        assert_eq!(
            format!("{h:?}"),
            "PasswordHash(SCRAM-SHA-256, 4096 iterations)"
        );

        let bad = format!(
            "user:{}\n",
            scram
                .encode()
                .replace("SCRAM-SHA-256$4096", "SCRAM-SHA-256$40")
        );
        let e = PasswordFile::parse(&bad).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.reason.contains("iteration count"), "{e}");
        let key = STANDARD.encode(scram.stored_key());
        let bad = format!("user:{}\n", scram.encode().replace(&key, "AAAA"));
        let e = PasswordFile::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("StoredKey") && !e.contains("AAAA"), "{e}");
        assert_eq!(
            PasswordHash::parse("SCRAM-SHA-1$4096:AAAA$AAAA:AAAA"),
            Err(HashError::UnknownFormat)
        );
    }

    #[test]
    fn cache_remembers_only_the_right_password() {
        let c = VerifyCache::new(2);
        assert!(!c.check("u", b"p"));
        c.remember("u", b"p");
        assert!(c.check("u", b"p"));
        assert!(!c.check("u", b"q"));
        assert!(!c.check("v", b"p"));
        c.remember("v", b"p");
        c.remember("w", b"p");
        assert!(c.len() <= 2, "bounded");
    }

    proptest! {
        #[test]
        fn any_password_round_trips(pw in prop::collection::vec(any::<u8>(), 0..40)) {
            let h = PasswordHash::new(&pw, 2);
            let parsed = PasswordHash::parse(&h.encode()).unwrap();
            prop_assert!(parsed.verify(&pw));
            // (Not a trailing 0: HMAC pads keys with zeros, so `p` and `p\0` are one key.)
            let mut other = pw.clone();
            other.push(b'x');
            prop_assert!(!parsed.verify(&other));
        }
    }
}
