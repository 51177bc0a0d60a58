//! SCRAM-SHA-256 against an independent implementation: PyPI's `scramp` plays the client
//! (`scram_client.py` beside this file, a child process spoken to one message a line) against
//! our [`ScramServer`], and derives credentials that must equal ours.
//!
//! Without python3 or scramp (`pip install scramp`) the tests print `SKIPPED (tool missing):
//! ...` and pass, unless `STARLING_REQUIRE_INTEROP=1` is set (CI sets it), in which case they
//! fail, as the broker's interop suites do.

use std::io::{BufRead, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use starling_auth::scram::MIN_ITERATIONS;
use starling_auth::{ScramCredential, ScramError, ScramServer};

/// Set to `1` to turn a missing python3 or scramp into a test failure.
const REQUIRE_ENV: &str = "STARLING_REQUIRE_INTEROP";
/// How long the client process may run before it is killed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scram_client.py")
}

/// True if python3 can import scramp. Otherwise prints a loud SKIPPED line (bypassing the test
/// harness's output capture) and returns false, or panics if `STARLING_REQUIRE_INTEROP=1`.
fn scramp_available(test: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", "import scramp"])
        .stdin(Stdio::null())
        .output();
    let missing = match found {
        Ok(o) if o.status.success() => return true,
        Ok(_) => "scramp for python3 (pip install scramp)",
        Err(_) => "python3 (and scramp: pip install scramp)",
    };
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{test}: required tool missing: {missing} ({REQUIRE_ENV}=1)");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n******** SKIPPED (tool missing): {test}: {missing}; set {REQUIRE_ENV}=1 to fail instead ********"
    );
    false
}

/// The scramp client process: lines in, lines out; killed if it outlives [`CLIENT_TIMEOUT`].
struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Dropped when the client is: tells the watchdog to stand down.
    _watchdog: mpsc::Sender<()>,
}

impl Client {
    fn start(args: &[&str]) -> Client {
        let mut child = Command::new("python3")
            .arg(script())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3 scram_client.py");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel::<()>();
        let pid = child.id();
        std::thread::spawn(move || {
            if rx.recv_timeout(CLIENT_TIMEOUT) == Err(mpsc::RecvTimeoutError::Timeout) {
                // Its stdout then closes, and the test's next read fails with this message.
                eprintln!("scram_client.py (pid {pid}) ran for {CLIENT_TIMEOUT:?}: killing it");
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        });
        Client {
            child,
            stdin,
            stdout,
            _watchdog: tx,
        }
    }

    fn read(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read from the client");
        assert!(
            line.ends_with('\n'),
            "the client stopped early (its error is above)"
        );
        line.pop();
        line
    }

    fn write(&mut self, msg: &[u8]) {
        self.stdin.write_all(msg).unwrap();
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
    }

    fn finish(mut self) {
        drop(self.stdin);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "scram_client.py exited with {status}");
    }
}

/// What one exchange came to on either side.
struct Outcome {
    /// The user name the server read.
    user: String,
    /// The server's verdict on the final message.
    server: Result<(), ScramError>,
    /// The client's last line: `ok` or `refused: ...`.
    client: String,
}

/// Runs an exchange for `user` and `password` (the client's), the server holding `credential`;
/// `tamper` may change the server-final message before the client sees it.
fn exchange(
    user: &str,
    password: &str,
    credential: Option<&ScramCredential>,
    tamper: impl FnOnce(Vec<u8>) -> Vec<u8>,
) -> Outcome {
    let mut client = Client::start(&["exchange", user, password]);
    let mut server = ScramServer::new();
    let first = client.read();
    let user = server
        .client_first(first.as_bytes())
        .unwrap_or_else(|e| panic!("scramp's client-first {first:?}: {e}"));
    let server_first = server.server_first(credential);
    client.write(&server_first);
    let last = client.read();
    let (server_final, verdict) = match server.client_final(last.as_bytes()) {
        Ok(v) => (tamper(v), Ok(())),
        Err(e) => (e.server_final(), Err(e)),
    };
    client.write(&server_final);
    let answer = client.read();
    client.finish();
    Outcome {
        user,
        server: verdict,
        client: answer,
    }
}

#[test]
fn scramp_logs_in_with_the_right_password_and_checks_the_server() {
    if !scramp_available("scramp_logs_in_with_the_right_password_and_checks_the_server") {
        return;
    }
    let cred = ScramCredential::generate(b"pencil", MIN_ITERATIONS).unwrap();
    let o = exchange("user", "pencil", Some(&cred), |v| v);
    assert_eq!(o.user, "user");
    assert_eq!(o.server, Ok(()));
    assert_eq!(o.client, "ok", "scramp verified the server's signature");

    // A server that does not hold the keys cannot sign: scramp notices.
    let o = exchange("user", "pencil", Some(&cred), |_| {
        format!("v={}", STANDARD.encode([0u8; 32])).into_bytes()
    });
    assert_eq!(o.server, Ok(()));
    assert!(o.client.starts_with("refused"), "{}", o.client);
}

#[test]
fn scramp_is_refused_with_a_wrong_password_or_an_unknown_user() {
    if !scramp_available("scramp_is_refused_with_a_wrong_password_or_an_unknown_user") {
        return;
    }
    let cred = ScramCredential::generate(b"pencil", MIN_ITERATIONS).unwrap();
    let o = exchange("user", "pencil2", Some(&cred), |v| v);
    assert_eq!(o.server, Err(ScramError::InvalidProof));
    assert!(o.client.starts_with("refused"), "{}", o.client);
    assert!(o.client.contains("invalid-proof"), "{}", o.client);

    let o = exchange("ghost", "pencil", None, |v| v);
    assert_eq!(o.server, Err(ScramError::UnknownUser));
    assert!(
        o.client.contains("invalid-proof"),
        "same answer: {}",
        o.client
    );
}

#[test]
fn scramp_and_we_prepare_names_and_passwords_alike() {
    if !scramp_available("scramp_and_we_prepare_names_and_passwords_alike") {
        return;
    }
    // ',' and '=' travel escaped (=2C, =3D); SASLprep drops the soft hyphen and maps U+2168
    // ROMAN NUMERAL NINE to "IX" on both sides.
    let user = "a,b=\u{00C4}rger";
    let cred = ScramCredential::generate("IXIX".as_bytes(), MIN_ITERATIONS).unwrap();
    let o = exchange(user, "I\u{00AD}X\u{2168}", Some(&cred), |v| v);
    assert_eq!(o.user, user);
    assert_eq!(o.server, Ok(()));
    assert_eq!(o.client, "ok");
}

#[test]
fn credentials_derived_by_scramp_and_hashlib_equal_ours() {
    if !scramp_available("credentials_derived_by_scramp_and_hashlib_equal_ours") {
        return;
    }
    let salt = b"0123456789abcdef";
    for (password, iterations) in [
        ("pencil", MIN_ITERATIONS),
        ("correct horse battery staple", 10_000),
        ("\u{00C4}rger \u{00A0}mit \u{2168}", MIN_ITERATIONS),
    ] {
        let ours = ScramCredential::derive(password.as_bytes(), salt, iterations)
            .unwrap()
            .encode();
        let it = iterations.to_string();
        let mut client = Client::start(&["derive", password, &STANDARD.encode(salt), &it]);
        let (by_scramp, by_hashlib) = (client.read(), client.read());
        client.finish();
        assert_eq!(by_scramp, ours, "scramp, {password:?}");
        assert_eq!(by_hashlib, ours, "hashlib, {password:?}");
        assert!(ScramCredential::parse(&by_scramp).is_ok());
    }
}
