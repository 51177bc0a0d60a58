//! The [`Authorizer`]: one consistent snapshot of the password file and the ACL file.
//!
//! The broker holds the current snapshot behind a lock it reads briefly, and replaces it as a
//! whole when the files are reloaded (SIGHUP): a connection never sees a password file from one
//! version and an ACL from another.

use std::path::{Path, PathBuf};

use crate::acl::{AclError, AclFile, ClientAcl};
use crate::password::{PasswordFile, PasswordFileError, PasswordHash, VerifyCache};

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
    acl: Option<AclFile>,
}

impl Authorizer {
    /// An authorizer from parsed files; `None` turns that check off.
    pub fn new(passwords: Option<PasswordFile>, acl: Option<AclFile>) -> Authorizer {
        let decoy = passwords.as_ref().map(|p| {
            let iterations = p
                .users()
                .filter_map(|u| match p.get(u) {
                    Some(PasswordHash::Pbkdf2Sha512 { iterations, .. }) => Some(*iterations),
                    _ => None,
                })
                .max()
                .unwrap_or(1);
            // Same cost as a real check; a derived key of zeros that no password produces in
            // practice (and no hashing at load time).
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt: rand::random::<[u8; 12]>().to_vec(),
                hash: vec![0; 64],
            }
        });
        Authorizer {
            cache: passwords.as_ref().map(|_| VerifyCache::new(CACHE_CAPACITY)),
            passwords,
            decoy,
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

    /// The ACL of a client, or `None` when no ACL file is configured (everything allowed).
    pub fn client_acl(&self, username: Option<&str>, client_id: &str) -> Option<ClientAcl> {
        self.acl.as_ref().map(|a| a.for_client(username, client_id))
    }
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
