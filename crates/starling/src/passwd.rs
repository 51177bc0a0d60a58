//! `starling passwd FILE add|delete|verify USER`: manages a password file without ever printing a
//! password or a hash. The password is read from standard input (one line), e.g.
//! `read -rs PW && printf '%s\n' "$PW" | starling passwd users.txt add alice`.
//! `add --scram` stores a SCRAM-SHA-256 credential instead of a `$7$` hash (docs/security.md).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use starling_auth::{scram, PasswordFile, PasswordHash, ScramCredential, DEFAULT_ITERATIONS};

/// What to do with the password file.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum PasswdOp {
    /// Add a user, or set a new password for one (read from standard input). Creates the file
    /// (mode 0600) if missing.
    Add {
        /// User name (no ':').
        user: String,
        /// PBKDF2 iterations of the new entry [default: 210000 for a $7$ hash, 600000 with
        /// --scram].
        #[arg(long)]
        iterations: Option<u32>,
        /// Store a SCRAM-SHA-256 credential (for SCRAM logins as well as passwords; Starling
        /// only: Mosquitto does not read such lines) instead of a $7$ PBKDF2-SHA512 hash.
        #[arg(long)]
        scram: bool,
    },
    /// Remove a user.
    Delete {
        /// User name.
        user: String,
    },
    /// Check a password read from standard input: exit code 0 if it matches, 1 if not.
    Verify {
        /// User name.
        user: String,
    },
}

/// How a `passwd` run ended.
pub(crate) enum Outcome {
    /// Done (exit 0).
    Done(String),
    /// A negative answer: no match, no such user (exit 1).
    No(String),
}

fn read_password() -> Result<Vec<u8>, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        // No echo control here (no terminal library): say so, and how to avoid it.
        eprint!("Password (echoed; use `read -rs` and a pipe to hide it): ");
        let _ = std::io::stderr().flush();
    }
    let mut line = Vec::new();
    stdin
        .lock()
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    if line.is_empty() {
        return Err("empty password (give it on standard input)".into());
    }
    Ok(line)
}

fn load(file: &Path, create: bool) -> Result<PasswordFile, String> {
    match std::fs::read_to_string(file) {
        Ok(text) => PasswordFile::parse(&text).map_err(|e| format!("{}: {e}", file.display())),
        Err(e) if create && e.kind() == std::io::ErrorKind::NotFound => Ok(PasswordFile::default()),
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    }
}

/// Writes the file through a temporary file and a rename, so that a broker reloading it never
/// reads half a file; new files get mode 0600.
fn save(file: &Path, f: &PasswordFile) -> Result<(), String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp: PathBuf = {
        let mut name = file.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".tmp-{}", std::process::id()));
        file.with_file_name(name)
    };
    let mode = std::fs::metadata(file).map_or(0o600, |m| m.permissions().mode() & 0o777);
    let write = || -> std::io::Result<()> {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        out.write_all(f.to_text().as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&tmp, file)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", file.display())
    })
}

/// Runs one operation.
///
/// # Errors
/// An unreadable or malformed file, a bad user name, no password on standard input.
pub(crate) fn run(file: &Path, op: &PasswdOp) -> Result<Outcome, String> {
    match op {
        PasswdOp::Add {
            user,
            iterations,
            scram,
        } => {
            let default = if *scram {
                scram::DEFAULT_ITERATIONS
            } else {
                DEFAULT_ITERATIONS
            };
            let iterations = iterations.unwrap_or(default);
            if *scram {
                if iterations < scram::MIN_ITERATIONS {
                    return Err(format!(
                        "--iterations must be at least {} for SCRAM-SHA-256 (RFC 7677)",
                        scram::MIN_ITERATIONS
                    ));
                }
                scram::check_user_name(user).map_err(|e| e.to_string())?;
            } else if iterations == 0 {
                return Err("--iterations must be at least 1".into());
            }
            let mut f = load(file, true)?;
            let password = read_password()?;
            let hash = if *scram {
                let c =
                    ScramCredential::generate(&password, iterations).map_err(|e| e.to_string())?;
                PasswordHash::ScramSha256(c)
            } else {
                PasswordHash::new(&password, iterations)
            };
            let new = f.set(user, hash).map_err(|e| e.to_string())?;
            save(file, &f)?;
            if iterations < 10_000 {
                eprintln!("warning: {iterations} iterations make a weak hash (default {default})");
            }
            let kind = if *scram { " (SCRAM-SHA-256)" } else { "" };
            Ok(Outcome::Done(if new {
                format!("added user {user}{kind}")
            } else {
                format!("changed the password of user {user}{kind}")
            }))
        }
        PasswdOp::Delete { user } => {
            let mut f = load(file, false)?;
            if !f.remove(user) {
                return Ok(Outcome::No(format!("no user {user} in {}", file.display())));
            }
            save(file, &f)?;
            Ok(Outcome::Done(format!("deleted user {user}")))
        }
        PasswdOp::Verify { user } => {
            let f = load(file, false)?;
            let password = read_password()?;
            match f.get(user) {
                None => Ok(Outcome::No(format!("no user {user} in {}", file.display()))),
                Some(h) if h.verify(&password) => Ok(Outcome::Done("password matches".into())),
                Some(_) => Ok(Outcome::No("password does not match".into())),
            }
        }
    }
}
