//! The [`Authorizer`]: one consistent snapshot of the password file and the ACL file.
//!
//! The broker holds the current snapshot behind a lock it reads briefly, and replaces it as a
//! whole when the files are reloaded (SIGHUP): a connection never sees a password file from one
//! version and an ACL from another.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::acl::{AclError, AclFile, ClientAcl};
use crate::password::{PasswordFile, PasswordFileError, PasswordHash, VerifyCache};
use crate::scram::{self, ScramCredential, ScramServer};

/// Users whose successful verification is remembered.
const CACHE_CAPACITY: usize = 100_000;

/// The outcome of checking a user name and password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The password matches.
    Accepted,
    /// The user is not in the password file.
    UnknownUser,
    /// The user is there, the password is wrong or missing.
    BadPassword,
}

/// A security file cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The password file is malformed.
    #[error("password file {path}: {source}")]
    Passwords {
        /// The file.
        path: PathBuf,
        /// Where and what.
        source: PasswordFileError,
    },
    /// The ACL file is malformed.
    #[error("acl file {path}: {source}")]
    Acl {
        /// The file.
        path: PathBuf,
        /// Where and what.
        source: AclError,
    },
}

/// Passwords and ACLs, as loaded at one moment.
#[derive(Debug, Default)]
pub struct Authorizer {
    passwords: Option<PasswordFile>,
    cache: Option<VerifyCache>,
    /// Hashed for unknown users, so that "no such user" takes as long as "wrong password".
    decoy: Option<PasswordHash>,
    /// Iteration count a SCRAM exchange announces for users without a SCRAM credential: the
    /// one most SCRAM users in the file have.
    scram_decoy_iterations: u32,
    acl: Option<AclFile>,
}

impl Authorizer {
    /// An authorizer from parsed files; `None` turns that check off.
    pub fn new(passwords: Option<PasswordFile>, acl: Option<AclFile>) -> Authorizer {
        Authorizer {
            cache: passwords.as_ref().map(|_| VerifyCache::new(CACHE_CAPACITY)),
            decoy: passwords.as_ref().map(decoy),
            scram_decoy_iterations: passwords
                .as_ref()
                .map_or(scram::DEFAULT_ITERATIONS, usual_scram_iterations),
            passwords,
            acl,
        }
    }

    /// Reads and parses the files (`None`: that check is off).
    ///
    /// # Errors
    /// A file that cannot be read or parsed.
    pub fn load(password_file: Option<&Path>, acl_file: Option<&Path>) -> Result<Self, LoadError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| LoadError::Read {
                path: p.into(),
                source,
            })
        };
        let passwords = match password_file {
            Some(p) => {
                Some(
                    PasswordFile::parse(&read(p)?).map_err(|source| LoadError::Passwords {
                        path: p.into(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let acl = match acl_file {
            Some(p) => Some(AclFile::parse(&read(p)?).map_err(|source| LoadError::Acl {
                path: p.into(),
                source,
            })?),
            None => None,
        };
        Ok(Authorizer::new(passwords, acl))
    }

    /// True when user names and passwords are checked against a password file.
    pub fn checks_passwords(&self) -> bool {
        self.passwords.is_some()
    }

    /// True when an ACL file is in force.
    pub fn has_acl(&self) -> bool {
        self.acl.is_some()
    }

    /// The password file, if any.
    pub fn password_file(&self) -> Option<&PasswordFile> {
        self.passwords.as_ref()
    }

    /// The ACL file, if any.
    pub fn acl_file(&self) -> Option<&AclFile> {
        self.acl.as_ref()
    }

    /// Answers without hashing when it can: `Some(Accepted)` for a pair verified before (or when
    /// no password file is configured), `Some(BadPassword)` when no password was sent. `None`
    /// means [`Authorizer::verify`] must run (slow: off the caller's thread).
    pub fn quick_verify(&self, user: &str, password: Option<&[u8]>) -> Option<Verdict> {
        let Some(file) = &self.passwords else {
            return Some(Verdict::Accepted);
        };
        let Some(password) = password else {
            return Some(if file.get(user).is_some() {
                Verdict::BadPassword
            } else {
                Verdict::UnknownUser
            });
        };
        match &self.cache {
            Some(c) if c.check(user, password) => Some(Verdict::Accepted),
            _ => None,
        }
    }

    /// Checks a user name and password against the file (slow: PBKDF2). Unknown users cost the
    /// same as wrong passwords. A success is remembered for [`Authorizer::quick_verify`].
    pub fn verify(&self, user: &str, password: &[u8]) -> Verdict {
        let Some(file) = &self.passwords else {
            return Verdict::Accepted;
        };
        match file.get(user) {
            Some(hash) => {
                if hash.verify(password) {
                    if let Some(c) = &self.cache {
                        c.remember(user, password);
                    }
                    Verdict::Accepted
                } else {
                    Verdict::BadPassword
                }
            }
            None => {
                if let Some(d) = &self.decoy {
                    let _ = d.verify(password);
                }
                Verdict::UnknownUser
            }
        }
    }

    /// The SCRAM credential of `user`; `None` for an unknown user, a user with a `$7$` or `$6$`
    /// hash, or no password file. Either way, hand it to [`ScramServer::server_first`].
    pub fn scram_credential(&self, user: &str) -> Option<&ScramCredential> {
        self.passwords.as_ref()?.scram(user)
    }

    /// A SCRAM exchange for this file: a user without a credential is answered with the
    /// iteration count most of the file's SCRAM users have (and a made-up salt), so that the
    /// answer does not stand out.
    pub fn scram_server(&self) -> ScramServer {
        ScramServer::new().with_decoy_iterations(self.scram_decoy_iterations)
    }

    /// The ACL of a client, or `None` when no ACL file is configured (everything allowed).
    pub fn client_acl(&self, username: Option<&str>, client_id: &str) -> Option<ClientAcl> {
        self.acl.as_ref().map(|a| a.for_client(username, client_id))
    }
}

/// The hash verified for unknown users: as costly as a real user's check. It mirrors the kind
/// most users have (`$7$` or SCRAM) with that kind's highest iteration count; its key of zeros
/// is one no password produces in practice, and nothing is hashed at load time. (In a file that
/// mixes kinds, the minority's users cost a little more or less than the decoy.)
fn decoy(file: &PasswordFile) -> PasswordHash {
    let (mut pbkdf2_users, mut pbkdf2_max, mut scram_users, mut scram_max) = (0, 1, 0, 0);
    for user in file.users() {
        match file.get(user) {
            Some(PasswordHash::Pbkdf2Sha512 { iterations, .. }) => {
                pbkdf2_users += 1;
                pbkdf2_max = pbkdf2_max.max(*iterations);
            }
            Some(PasswordHash::ScramSha256(c)) => {
                scram_users += 1;
                scram_max = scram_max.max(c.iterations());
            }
            Some(PasswordHash::Sha512 { .. }) | None => {}
        }
    }
    if scram_users > pbkdf2_users {
        let salt: [u8; 16] = rand::random();
        let c = ScramCredential::from_keys(scram_max, &salt, [0; 32], [0; 32])
            .expect("an iteration count read from the file is in range");
        return PasswordHash::ScramSha256(c);
    }
    PasswordHash::Pbkdf2Sha512 {
        iterations: pbkdf2_max,
        salt: rand::random::<[u8; 12]>().to_vec(),
        hash: vec![0; 64],
    }
}

/// The most common iteration count of the file's SCRAM credentials (the higher on a tie), or
/// the default without any.
fn usual_scram_iterations(file: &PasswordFile) -> u32 {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for c in file.users().filter_map(|u| file.scram(u)) {
        *counts.entry(c.iterations()).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|&(iterations, users)| (users, iterations))
        .map_or(scram::DEFAULT_ITERATIONS, |(iterations, _)| iterations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authorizer {
        let mut f = PasswordFile::default();
        f.set("alice", PasswordHash::new(b"wonderland", 3)).unwrap();
        let acl = AclFile::parse("user alice\ntopic alice/#\n").unwrap();
        Authorizer::new(Some(f), Some(acl))
    }

    #[test]
    fn verdicts_and_cache() {
        let a = auth();
        assert_eq!(a.quick_verify("alice", None), Some(Verdict::BadPassword));
        assert_eq!(a.quick_verify("nobody", None), Some(Verdict::UnknownUser));
        assert_eq!(a.quick_verify("alice", Some(b"wonderland")), None);
        assert_eq!(a.verify("alice", b"wrong"), Verdict::BadPassword);
        assert_eq!(a.verify("nobody", b"x"), Verdict::UnknownUser);
        assert_eq!(a.verify("alice", b"wonderland"), Verdict::Accepted);
        assert_eq!(
            a.quick_verify("alice", Some(b"wonderland")),
            Some(Verdict::Accepted),
            "remembered"
        );
        assert_eq!(a.quick_verify("alice", Some(b"wrong")), None);
    }

    #[test]
    fn scram_users_log_in_with_a_password_too() {
        let mut f = PasswordFile::default();
        let cred = ScramCredential::generate(b"pencil", scram::MIN_ITERATIONS).unwrap();
        f.set("user", PasswordHash::ScramSha256(cred.clone()))
            .unwrap();
        f.set("alice", PasswordHash::new(b"wonderland", 3)).unwrap();
        let a = Authorizer::new(Some(f), None);
        assert_eq!(a.verify("user", b"pencil"), Verdict::Accepted);
        assert_eq!(a.verify("user", b"wonderland"), Verdict::BadPassword);
        assert_eq!(
            a.quick_verify("user", Some(b"pencil")),
            Some(Verdict::Accepted)
        );
        assert_eq!(a.scram_credential("user"), Some(&cred));
        assert_eq!(a.scram_credential("alice"), None);
        assert_eq!(a.scram_credential("nobody"), None);
        assert_eq!(Authorizer::default().scram_credential("user"), None);
    }

    #[test]
    fn decoys_follow_the_users() {
        let scram = |i| {
            PasswordHash::ScramSha256(
                ScramCredential::from_keys(i, b"s", [1; 32], [2; 32]).unwrap(),
            )
        };
        let pbkdf2 = |i| PasswordHash::Pbkdf2Sha512 {
            iterations: i,
            salt: vec![1],
            hash: vec![2; 64],
        };
        let file = |hashes: Vec<PasswordHash>| {
            let mut f = PasswordFile::default();
            for (n, h) in hashes.into_iter().enumerate() {
                f.set(&format!("u{n}"), h).unwrap();
            }
            f
        };
        let f = file(vec![scram(5000), scram(5000), scram(9000), pbkdf2(7000)]);
        assert!(matches!(decoy(&f), PasswordHash::ScramSha256(c) if c.iterations() == 9000));
        assert_eq!(usual_scram_iterations(&f), 5000);
        let f = file(vec![scram(5000), pbkdf2(7000), pbkdf2(8000)]);
        assert!(matches!(
            decoy(&f),
            PasswordHash::Pbkdf2Sha512 {
                iterations: 8000,
                ..
            }
        ));
        assert_eq!(usual_scram_iterations(&f), 5000);
        assert_eq!(
            usual_scram_iterations(&file(vec![scram(4096), scram(8192)])),
            8192
        );
        assert_eq!(
            usual_scram_iterations(&file(vec![pbkdf2(1)])),
            scram::DEFAULT_ITERATIONS
        );

        // The server of a file announces that count for users it does not have.
        let a = Authorizer::new(Some(file(vec![scram(5000), scram(5000)])), None);
        let mut s = a.scram_server();
        s.client_first(b"n,,n=ghost,r=abc").unwrap();
        let first = String::from_utf8(s.server_first(a.scram_credential("ghost"))).unwrap();
        assert!(first.ends_with(",i=5000"), "{first}");
        assert!(!decoy(&file(vec![scram(5000)])).verify(b""));
    }

    #[test]
    fn no_files_means_no_checks() {
        let a = Authorizer::default();
        assert_eq!(a.quick_verify("x", None), Some(Verdict::Accepted));
        assert!(a.client_acl(Some("x"), "c").is_none());
        assert!(!a.checks_passwords() && !a.has_acl());
    }

    #[test]
    fn load_reports_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let acl = dir.path().join("acl");
        std::fs::write(&acl, "user a\ntopic read a/#/b\n").unwrap();
        let e = Authorizer::load(None, Some(&acl)).unwrap_err().to_string();
        assert!(e.contains("acl") && e.contains("line 2"), "{e}");
        let missing = dir.path().join("nope");
        assert!(matches!(
            Authorizer::load(Some(&missing), None),
            Err(LoadError::Read { .. })
        ));
        let a = auth();
        let c = a.client_acl(Some("alice"), "c").unwrap();
        assert!(c.can_write("alice/x"));
    }
}
