//! Client security at run time: the current [`Authorizer`] (password file and ACL file, see
//! `starling-auth`), replaced as a whole on reload, and the threads that verify passwords.
//!
//! ```text
//!  Connection ──quick_verify (cache hit, no password, no file)──▶ answer at once
//!      │ otherwise
//!      └──job──▶ VerifyPool (auth_threads threads, max_pending_auth queue) ──Verdict──▶ Connection
//!  SIGHUP ──reload()──▶ new Authorizer; generation += 1 ──▶ connections recompute their ACL
//!                                                          at their next check
//! ```
//!
//! PBKDF2 takes hundreds of milliseconds by design, so it never runs on an actor thread; the
//! pool is small and its queue bounded, so a flood of bad logins costs a bounded amount of CPU
//! and is refused (CONNACK 3) beyond that, instead of growing threads without limit.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use bytestring::ByteString;
use starling_auth::{Authorizer, LoadError, Verdict};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::BrokerConfig;

/// The security files cannot be loaded, or the verification threads cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A file is unreadable or malformed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A verification thread could not be started.
    #[error("cannot start password verification threads: {0}")]
    Thread(std::io::Error),
}

/// What a (re)load found, for the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecuritySummary {
    /// Users in the password file (`None`: no password file).
    pub users: Option<usize>,
    /// Rules in the ACL file (`None`: no ACL file).
    pub acl_rules: Option<usize>,
    /// Users whose hash is weak (`$6$`, or few PBKDF2 iterations).
    pub weak_hashes: usize,
}

type Job = Box<dyn FnOnce() + Send>;

/// A few threads running password verifications from a bounded queue.
struct VerifyPool {
    tx: SyncSender<Job>,
}

impl VerifyPool {
    fn new(threads: usize, capacity: usize) -> std::io::Result<VerifyPool> {
        let (tx, rx) = sync_channel::<Job>(capacity);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("starling-auth-{i}"))
                .spawn(move || loop {
                    // One thread waits in `recv`, the others on the lock: either way idle.
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return, // the broker is gone
                    }
                })?;
        }
        Ok(VerifyPool { tx })
    }
}

/// The broker's security state, shared by every connection.
pub struct Security {
    current: RwLock<Arc<Authorizer>>,
    generation: AtomicU64,
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    pool: VerifyPool,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("password_file", &self.password_file)
            .field("acl_file", &self.acl_file)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

fn summarize(a: &Authorizer) -> SecuritySummary {
    let weak = a.password_file().map_or(0, |f| {
        f.users()
            .filter(|u| f.get(u).is_some_and(|h| h.is_weak()))
            .count()
    });
    SecuritySummary {
        users: a.password_file().map(|f| f.len()),
        acl_rules: a.acl_file().map(|f| f.len()),
        weak_hashes: weak,
    }
}

impl Security {
    /// Loads the files named by `config` and starts the verification threads.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, or threads that cannot be started.
    pub fn load(config: &BrokerConfig) -> Result<Security, SecurityError> {
        let password_file = config.password_file().map(PathBuf::from);
        let acl_file = config.acl_file().map(PathBuf::from);
        let auth = Authorizer::load(password_file.as_deref(), acl_file.as_deref())?;
        let summary = summarize(&auth);
        Self::log_summary(&summary, "loaded");
        let pool = VerifyPool::new(config.auth_thread_count(), config.max_pending_auth)
            .map_err(SecurityError::Thread)?;
        Ok(Security {
            current: RwLock::new(Arc::new(auth)),
            generation: AtomicU64::new(1),
            password_file,
            acl_file,
            pool,
        })
    }

    fn log_summary(s: &SecuritySummary, what: &str) {
        info!(
            users = s.users,
            acl_rules = s.acl_rules,
            "security files {what}: {}, {}",
            s.users
                .map_or("no password file".into(), |n| format!("{n} users")),
            s.acl_rules
                .map_or("no ACL file".into(), |n| format!("{n} ACL rules")),
        );
        if s.weak_hashes > 0 {
            warn!(
                users = s.weak_hashes,
                "{} password hashes are weak ($6$ or under 10000 PBKDF2 iterations): set them \
                 again with `starling passwd FILE add USER`",
                s.weak_hashes
            );
        }
    }

    /// The current authorizer (a brief read lock).
    pub fn authorizer(&self) -> Arc<Authorizer> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Incremented by every successful reload; connections compare it with the one their ACL
    /// was computed from.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// True if an ACL file is configured (fixed for the life of the broker: a reload re-reads the
    /// files, the configuration stays).
    pub fn has_acl(&self) -> bool {
        self.acl_file.is_some()
    }

    /// True if a password file is configured.
    pub fn checks_passwords(&self) -> bool {
        self.password_file.is_some()
    }

    /// Re-reads the files. On error the current rules stay in force.
    ///
    /// # Errors
    /// A file that cannot be read or parsed.
    pub fn reload(&self) -> Result<SecuritySummary, LoadError> {
        let auth = Authorizer::load(self.password_file.as_deref(), self.acl_file.as_deref())?;
        let summary = summarize(&auth);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(auth);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Self::log_summary(&summary, "reloaded");
        Ok(summary)
    }

    /// Verifies on a pool thread; `None` if the queue is full.
    pub(crate) fn verify(
        &self,
        auth: Arc<Authorizer>,
        user: ByteString,
        password: Bytes,
    ) -> Option<oneshot::Receiver<Verdict>> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(auth.verify(&user, &password));
        });
        match self.pool.tx.try_send(job) {
            Ok(()) => Some(rx),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_auth::{PasswordFile, PasswordHash};

    #[test]
    fn reload_swaps_rules_and_bumps_the_generation() {
        let dir = std::env::temp_dir().join(format!("starling-sec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (pw, acl) = (dir.join("pw"), dir.join("acl"));
        let mut f = PasswordFile::default();
        f.set("u", PasswordHash::new(b"p", 2)).unwrap();
        std::fs::write(&pw, f.to_text()).unwrap();
        std::fs::write(&acl, "user u\ntopic read a\n").unwrap();
        let config = BrokerConfig {
            password_file: pw.clone(),
            acl_file: acl.clone(),
            ..BrokerConfig::default()
        };
        let s = Security::load(&config).unwrap();
        assert!(s.has_acl() && s.checks_passwords());
        let g = s.generation();
        let acl_of = |s: &Security| s.authorizer().client_acl(Some("u"), "c").unwrap();
        assert!(acl_of(&s).can_read("a") && !acl_of(&s).can_read("b"));
        std::fs::write(&acl, "user u\ntopic read b\n").unwrap();
        assert_eq!(s.reload().unwrap().acl_rules, Some(1));
        assert_eq!(s.generation(), g + 1);
        assert!(acl_of(&s).can_read("b") && !acl_of(&s).can_read("a"));
        std::fs::write(&acl, "bogus line\n").unwrap();
        assert!(s.reload().is_err());
        assert_eq!(s.generation(), g + 1, "a failed reload keeps the rules");
        assert!(acl_of(&s).can_read("b"));
        let rx = s
            .verify(s.authorizer(), "u".into(), Bytes::from_static(b"p"))
            .unwrap();
        assert_eq!(rx.blocking_recv().unwrap(), Verdict::Accepted);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
