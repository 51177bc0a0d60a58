//! Interoperability with real MQTT clients: Mosquitto's command-line clients (`mosquitto_pub`,
//! `mosquitto_sub`, MQTT 3.1 and 3.1.1) and paho-mqtt for Python (`paho_check.py` beside this
//! file), each against a `starling` broker the test starts.
//!
//! A test whose tool is not installed prints `SKIPPED (tool missing): ...` and passes, unless
//! `STARLING_REQUIRE_INTEROP=1` is set (CI sets it), in which case it fails.

use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use starling_testkit::{wait_until, BrokerBuilder, BrokerProcess};

/// Set to `1` to turn a missing client tool into a test failure.
const REQUIRE_ENV: &str = "STARLING_REQUIRE_INTEROP";
/// How long a client process may run.
const PROC_TIMEOUT: Duration = Duration::from_secs(30);
/// `mosquitto_sub -W`: it exits on its own after this many seconds.
const SUB_WAIT_SECS: &str = "15";
/// Wait for a broker log line.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);
/// `mosquitto_sub -F`: topic, QoS, RETAIN flag and the payload in hex (exact for any bytes).
const SUB_FORMAT: &str = "%t|%q|%r|%x";

fn broker() -> BrokerProcess {
    BrokerBuilder::new(env!("CARGO_BIN_EXE_starling")).start()
}

// ---- the gate -----------------------------------------------------------------------------

/// An external program a test needs.
#[derive(Clone, Copy, Debug)]
enum Tool {
    MosquittoPub,
    MosquittoSub,
    Paho,
}

impl Tool {
    /// `None` if usable, else what is missing and how to get it.
    fn missing(self) -> Option<String> {
        let runs = |prog: &str, args: &[&str]| {
            Command::new(prog)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        };
        match self {
            // `--help` exits non-zero; only "cannot execute" means missing.
            Tool::MosquittoPub | Tool::MosquittoSub => {
                let prog = if matches!(self, Tool::MosquittoPub) {
                    "mosquitto_pub"
                } else {
                    "mosquitto_sub"
                };
                runs(prog, &["--help"])
                    .err()
                    .map(|e| format!("{prog} ({e}; apt-get install mosquitto-clients)"))
            }
            Tool::Paho => match runs("python3", &["-c", "import paho.mqtt.client"]) {
                Err(e) => Some(format!("python3 ({e})")),
                Ok(s) if !s.success() => {
                    Some("python3 module paho.mqtt (pip install paho-mqtt)".into())
                }
                Ok(_) => None,
            },
        }
    }
}

/// True if all `tools` are there. Otherwise prints a loud SKIPPED line (bypassing the test
/// harness's output capture) and returns false, or panics if `STARLING_REQUIRE_INTEROP=1`.
fn tools_available(test: &str, tools: &[Tool]) -> bool {
    let missing: Vec<String> = tools.iter().filter_map(|t| t.missing()).collect();
    if missing.is_empty() {
        return true;
    }
    let what = missing.join(", ");
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{test}: required tool missing: {what} ({REQUIRE_ENV}=1)");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n******** SKIPPED (tool missing): {test}: {what}; set {REQUIRE_ENV}=1 to fail instead ********"
    );
    false
}

// ---- child processes ----------------------------------------------------------------------

/// A client process whose output is collected while it runs.
struct Proc {
    what: String,
    child: Child,
    readers: Vec<JoinHandle<()>>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// What a finished process did; `status` is `None` if it had to be killed.
struct Finished {
    what: String,
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self
            .status
            .map_or("killed after timeout".to_string(), |s| s.to_string());
        write!(
            f,
            "`{}`: {status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.stdout, self.stderr
        )
    }
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    })
}

impl Proc {
    fn spawn(prog: &str, args: &[String], stdin: Option<Vec<u8>>) -> Proc {
        let what = format!("{prog} {}", args.join(" "));
        let mut child = Command::new(prog)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(&input)
                .unwrap_or_else(|e| panic!("`{what}`: writing stdin: {e}"));
            // Dropping the pipe closes it: end of input.
        }
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), stdout.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Proc {
            what,
            child,
            readers,
            stdout,
            stderr,
        }
    }

    /// Waits for the process to exit (killing it after [`PROC_TIMEOUT`]).
    fn finish(mut self) -> Finished {
        let deadline = Instant::now() + PROC_TIMEOUT;
        let mut status = None;
        wait_until(
            PROC_TIMEOUT * 2,
            &format!("`{}` to exit", self.what),
            || match self.child.try_wait() {
                Ok(Some(s)) => {
                    status = Some(s);
                    true
                }
                Ok(None) => Instant::now() >= deadline,
                Err(_) => true,
            },
        );
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let text = |b: &Arc<Mutex<Vec<u8>>>| {
            String::from_utf8_lossy(&b.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
        };
        Finished {
            what: self.what.clone(),
            status,
            stdout: text(&self.stdout),
            stderr: text(&self.stderr),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---- mosquitto_pub / mosquitto_sub --------------------------------------------------------

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One line of `mosquitto_sub -F '%t|%q|%r|%x'`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Received {
    topic: String,
    qos: u8,
    retain: bool,
    payload: Vec<u8>,
}

impl Received {
    fn new(topic: &str, qos: u8, retain: bool, payload: &[u8]) -> Received {
        Received {
            topic: topic.into(),
            qos,
            retain,
            payload: payload.to_vec(),
        }
    }

    fn parse(line: &str) -> Option<Received> {
        let mut it = line.rsplitn(4, '|');
        let payload = unhex(it.next()?)?;
        let retain = match it.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let qos = it.next()?.parse().ok()?;
        let topic = it.next()?.to_string();
        Some(Received {
            topic,
            qos,
            retain,
            payload,
        })
    }
}

impl std::fmt::Display for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = String::from_utf8_lossy(&self.payload);
        let shown: String = p.chars().take(60).collect();
        let more = if p.chars().count() > 60 { "..." } else { "" };
        write!(
            f,
            "topic={:?} q{} r{} {} bytes {:?}{more}",
            self.topic,
            self.qos,
            u8::from(self.retain),
            self.payload.len(),
            shown
        )
    }
}

/// Common connection arguments.
fn conn_args(b: &BrokerProcess, version: &str, client_id: &str) -> Vec<String> {
    [
        "-h",
        "127.0.0.1",
        "-p",
        &b.addr().port().to_string(),
        "-V",
        version,
        "-i",
        client_id,
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect()
}

/// How a `mosquitto_pub` invocation gets its message(s).
#[derive(Clone, Copy)]
enum Payload<'a> {
    /// `-m`
    Message(&'a str),
    /// `-l`: one message per line of stdin.
    Lines(&'a [&'a str]),
    /// `-f`: a file's bytes.
    File(&'a [u8]),
    /// `-n`: zero-length.
    Null,
}

/// Runs `mosquitto_pub` to completion and asserts it succeeded.
fn mosquitto_pub(
    b: &BrokerProcess,
    version: &str,
    client_id: &str,
    topic: &str,
    qos: u8,
    retain: bool,
    payload: Payload<'_>,
) {
    let mut args = conn_args(b, version, client_id);
    args.extend(["-t".into(), topic.into(), "-q".into(), qos.to_string()]);
    if retain {
        args.push("-r".into());
    }
    let mut stdin = None;
    let _file; // lives until the process has finished
    match payload {
        Payload::Message(m) => args.extend(["-m".into(), m.into()]),
        Payload::Lines(lines) => {
            args.push("-l".into());
            stdin = Some(
                lines
                    .iter()
                    .flat_map(|l| format!("{l}\n").into_bytes())
                    .collect(),
            );
        }
        Payload::File(bytes) => {
            let mut f = tempfile::NamedTempFile::new().expect("temp file");
            f.write_all(bytes).expect("write payload file");
            args.extend(["-f".into(), f.path().display().to_string()]);
            _file = f;
        }
        Payload::Null => args.push("-n".into()),
    }
    let done = Proc::spawn("mosquitto_pub", &args, stdin).finish();
    assert!(
        done.status.is_some_and(|s| s.success()),
        "mosquitto_pub failed\n{done}\n--- broker log ---\n{}",
        b.log_text()
    );
}

/// Starts `mosquitto_sub` for `count` messages (`-C`), giving up after [`SUB_WAIT_SECS`] (`-W`),
/// and waits until the broker has sent it SUBACK number `subacks` (counting earlier sessions of
/// the same client id), so that what is published next reaches it.
#[allow(clippy::too_many_arguments)]
fn mosquitto_sub(
    b: &BrokerProcess,
    version: &str,
    client_id: &str,
    topic: &str,
    qos: u8,
    count: usize,
    persistent: bool,
    subacks: usize,
) -> Proc {
    let mut args = conn_args(b, version, client_id);
    args.extend(
        [
            "-t",
            topic,
            "-q",
            &qos.to_string(),
            "-C",
            &count.to_string(),
            "-W",
            SUB_WAIT_SECS,
            "-F",
            SUB_FORMAT,
        ]
        .iter()
        .map(|s| (*s).to_string()),
    );
    if persistent {
        args.push("-c".into());
    }
    let p = Proc::spawn("mosquitto_sub", &args, None);
    wait_log_count(b, &format!("Sending SUBACK to {client_id}"), subacks);
    p
}

/// Waits until `n` broker log lines contain `needle`.
fn wait_log_count(b: &BrokerProcess, needle: &str, n: usize) {
    wait_until(
        LOG_TIMEOUT,
        &format!("{n} broker log line(s) containing {needle:?}"),
        || b.log_lines().iter().filter(|l| l.contains(needle)).count() >= n,
    );
}

/// Waits for `sub` to exit and returns what it printed; panics with the evidence if it did not
/// exit 0 or printed something that is not a `-F` line.
fn sub_output(b: &BrokerProcess, case: &str, sub: Proc) -> Vec<Received> {
    let done = sub.finish();
    let parsed: Option<Vec<Received>> = done.stdout.lines().map(Received::parse).collect();
    match (done.status.is_some_and(|s| s.success()), parsed) {
        (true, Some(r)) => r,
        _ => panic!(
            "{case}: mosquitto_sub did not receive what it waited for (exit 27 = timed out)\n\
             {done}\n--- broker log ---\n{}",
            b.log_text()
        ),
    }
}

fn assert_received(b: &BrokerProcess, case: &str, got: &[Received], want: &[Received]) {
    if got == want {
        return;
    }
    let mut report = format!(
        "{case}: received messages differ\n  expected ({}):\n",
        want.len()
    );
    for w in want {
        let _ = writeln!(report, "    {w}");
    }
    let _ = writeln!(report, "  received ({}):", got.len());
    for g in got {
        let mark = if want.contains(g) { " " } else { "!" };
        let _ = writeln!(report, "  {mark} {g}");
    }
    panic!("{report}--- broker log ---\n{}", b.log_text());
}

/// Short name of a `-V` value for client ids and topics.
fn short(version: &str) -> &'static str {
    match version {
        "mqttv31" => "v31",
        "mqttv311" => "v311",
        "mqttv5" => "v5",
        other => panic!("unknown protocol version {other}"),
    }
}

/// Text payloads that exercise UTF-8, `|` (the -F separator) and a long message.
fn text_payloads(case: &str) -> Vec<String> {
    vec![
        format!("{case} first"),
        "h\u{e9}llo w\u{f6}rld \u{6f22}\u{5b57} | pipes | too".into(),
        format!("{case} long {}", "0123456789".repeat(300)),
        format!("{case} last"),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

// ---- mosquitto_pub -> Starling -> mosquitto_sub ---------------------------------------------

/// QoS `qos` from `mosquitto_pub -V version` to a `mosquitto_sub -V version` subscribed at the
/// same QoS: every payload exactly once, in order, at that QoS, RETAIN 0, and nothing else.
fn pub_sub_case(version: &str, qos: u8) {
    let case = format!("mosquitto_pub -> mosquitto_sub, -V {version}, QoS {qos}");
    if !tools_available(&case, &[Tool::MosquittoPub, Tool::MosquittoSub]) {
        return;
    }
    let b = broker();
    let v = short(version);
    let topic = format!("interop/{v}/q{qos}");
    let text = text_payloads(&format!("{v}-q{qos}"));
    let binary: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    // The last message marks the end: anything duplicated or unexpected shows before it.
    let end = format!("end of {v}-q{qos}");
    let mut want: Vec<Received> = text
        .iter()
        .map(|t| Received::new(&topic, qos, false, t.as_bytes()))
        .collect();
    want.push(Received::new(&topic, qos, false, &binary));
    want.push(Received::new(&topic, qos, false, end.as_bytes()));

    let sub_id = format!("sub-{v}-q{qos}");
    let sub = mosquitto_sub(&b, version, &sub_id, &topic, qos, want.len(), false, 1);
    let pub_id = format!("pub-{v}-q{qos}");
    let lines = strs(&text);
    mosquitto_pub(
        &b,
        version,
        &pub_id,
        &topic,
        qos,
        false,
        Payload::Lines(&lines),
    );
    mosquitto_pub(
        &b,
        version,
        &pub_id,
        &topic,
        qos,
        false,
        Payload::File(&binary),
    );
    mosquitto_pub(
        &b,
        version,
        &pub_id,
        &topic,
        qos,
        false,
        Payload::Message(&end),
    );
    let got = sub_output(&b, &case, sub);
    assert_received(&b, &case, &got, &want);
}

#[test]
fn mosquitto_clients_v31_qos0() {
    pub_sub_case("mqttv31", 0);
}

#[test]
fn mosquitto_clients_v31_qos1() {
    pub_sub_case("mqttv31", 1);
}

#[test]
fn mosquitto_clients_v31_qos2() {
    pub_sub_case("mqttv31", 2);
}

#[test]
fn mosquitto_clients_v311_qos0() {
    pub_sub_case("mqttv311", 0);
}

#[test]
fn mosquitto_clients_v311_qos1() {
    pub_sub_case("mqttv311", 1);
}

#[test]
fn mosquitto_clients_v311_qos2() {
    pub_sub_case("mqttv311", 2);
}

#[test]
fn mosquitto_clients_v5_qos0() {
    pub_sub_case("mqttv5", 0);
}

#[test]
fn mosquitto_clients_v5_qos1() {
    pub_sub_case("mqttv5", 1);
}

#[test]
fn mosquitto_clients_v5_qos2() {
    pub_sub_case("mqttv5", 2);
}

// ---- persistent subscriber ---------------------------------------------------------------------

/// `mosquitto_sub -c -i id` subscribed at QoS 2 disconnects; QoS 1 and QoS 2 messages published
/// meanwhile reach it when it comes back, each exactly once and in order per QoS, at their QoS.
fn persistent_case(version: &str) {
    let case = format!("persistent mosquitto_sub -c, -V {version}");
    if !tools_available(&case, &[Tool::MosquittoPub, Tool::MosquittoSub]) {
        return;
    }
    let b = broker();
    let v = short(version);
    let topic = format!("interop/persist/{v}");
    let sub_id = format!("persist-{v}");
    let pub_id = format!("persist-pub-{v}");

    // First session: subscribe, receive one message, DISCONNECT (session kept).
    let sub = mosquitto_sub(&b, version, &sub_id, &topic, 2, 1, true, 1);
    mosquitto_pub(
        &b,
        version,
        &pub_id,
        &topic,
        1,
        false,
        Payload::Message("online"),
    );
    let got = sub_output(&b, &format!("{case}, first session"), sub);
    assert_received(
        &b,
        &format!("{case}, first session"),
        &got,
        &[Received::new(&topic, 1, false, b"online")],
    );
    wait_log_count(&b, &format!("Received DISCONNECT from {sub_id}"), 1);

    // Offline: QoS 1 and QoS 2 messages.
    let q1: Vec<String> = (0..3).map(|i| format!("offline q1 #{i}")).collect();
    let q2: Vec<String> = (0..3).map(|i| format!("offline q2 #{i}")).collect();
    mosquitto_pub(
        &b,
        version,
        &pub_id,
        &topic,
        1,
        false,
        Payload::Lines(&strs(&q1)),
    );
    mosquitto_pub(
        &b,
        version,
        &pub_id,
        &topic,
        2,
        false,
        Payload::Lines(&strs(&q2)),
    );

    // Second session: the queued messages, then one published live.
    let sub = mosquitto_sub(&b, version, &sub_id, &topic, 2, 7, true, 2);
    mosquitto_pub(
        &b,
        version,
        &pub_id,
        &topic,
        2,
        false,
        Payload::Message("back online"),
    );
    let got = sub_output(&b, &format!("{case}, second session"), sub);
    // Order is only promised per publisher, topic and QoS: compare per QoS, then the whole set.
    let case2 = format!("{case}, second session");
    let queued: Vec<Received> = got.iter().take(6).cloned().collect();
    let per_qos =
        |q: u8| -> Vec<Received> { queued.iter().filter(|r| r.qos == q).cloned().collect() };
    let want_q1: Vec<Received> = q1
        .iter()
        .map(|p| Received::new(&topic, 1, false, p.as_bytes()))
        .collect();
    let want_q2: Vec<Received> = q2
        .iter()
        .map(|p| Received::new(&topic, 2, false, p.as_bytes()))
        .collect();
    assert_eq!(
        got.len(),
        7,
        "{case2}: expected 7 messages, got {}",
        got.len()
    );
    assert_received(
        &b,
        &format!("{case2} (queued QoS 1, in order)"),
        &per_qos(1),
        &want_q1,
    );
    assert_received(
        &b,
        &format!("{case2} (queued QoS 2, in order)"),
        &per_qos(2),
        &want_q2,
    );
    assert_received(
        &b,
        &format!("{case2} (live message after the queue)"),
        &got[6..],
        &[Received::new(&topic, 2, false, b"back online")],
    );
}

#[test]
fn mosquitto_persistent_subscriber_v31() {
    persistent_case("mqttv31");
}

#[test]
fn mosquitto_persistent_subscriber_v311() {
    persistent_case("mqttv311");
}

/// `mosquitto_sub -c -V mqttv5` asks for a session that never expires.
#[test]
fn mosquitto_persistent_subscriber_v5() {
    persistent_case("mqttv5");
}

// ---- retained messages ----------------------------------------------------------------------

/// `mosquitto_pub -r` sets (and replaces) a retained message that a later `mosquitto_sub`
/// receives with RETAIN 1; a live retained publish reaches a connected subscriber with RETAIN 0;
/// `mosquitto_pub -r -n` clears it, so a later subscriber gets nothing before a live message.
fn retained_case(version: &str) {
    let case = format!("retained messages, -V {version}");
    if !tools_available(&case, &[Tool::MosquittoPub, Tool::MosquittoSub]) {
        return;
    }
    let b = broker();
    let v = short(version);
    let topic = format!("interop/retained/{v}");
    let pub_id = format!("ret-pub-{v}");
    mosquitto_pub(
        &b,
        version,
        &pub_id,
        &topic,
        1,
        true,
        Payload::Message("first value"),
    );
    mosquitto_pub(
        &b,
        version,
        &pub_id,
        &topic,
        1,
        true,
        Payload::Message("retained value"),
    );

    let sub_id = format!("ret-sub-{v}");
    let sub = mosquitto_sub(&b, version, &sub_id, &topic, 1, 3, false, 1);
    mosquitto_pub(
        &b,
        version,
        &pub_id,
        &topic,
        1,
        true,
        Payload::Message("replaced live"),
    );
    mosquitto_pub(
        &b,
        version,
        &pub_id,
        &topic,
        1,
        false,
        Payload::Message("live end"),
    );
    let got = sub_output(&b, &case, sub);
    assert_received(
        &b,
        &format!("{case}: later subscriber"),
        &got,
        &[
            Received::new(&topic, 1, true, b"retained value"),
            Received::new(&topic, 1, false, b"replaced live"),
            Received::new(&topic, 1, false, b"live end"),
        ],
    );

    // The retained message is now "replaced live"; a later subscriber gets it first.
    let sub_id = format!("ret-sub2-{v}");
    let sub = mosquitto_sub(&b, version, &sub_id, &topic, 0, 1, false, 1);
    let got = sub_output(&b, &case, sub);
    assert_received(
        &b,
        &format!("{case}: retained message replaced by a live retained publish"),
        &got,
        &[Received::new(&topic, 0, true, b"replaced live")],
    );

    mosquitto_pub(&b, version, &pub_id, &topic, 0, true, Payload::Null);
    let sub_id = format!("ret-sub3-{v}");
    let sub = mosquitto_sub(&b, version, &sub_id, &topic, 1, 1, false, 1);
    // A retained message would be sent right after the SUBACK, before this live one.
    mosquitto_pub(
        &b,
        version,
        &pub_id,
        &topic,
        1,
        false,
        Payload::Message("after clear"),
    );
    let got = sub_output(&b, &case, sub);
    assert_received(
        &b,
        &format!("{case}: cleared with -r -n"),
        &got,
        &[Received::new(&topic, 1, false, b"after clear")],
    );
}

#[test]
fn mosquitto_retained_set_and_cleared_v31() {
    retained_case("mqttv31");
}

#[test]
fn mosquitto_retained_set_and_cleared_v5() {
    retained_case("mqttv5");
}

#[test]
fn mosquitto_retained_set_and_cleared_v311() {
    retained_case("mqttv311");
}

// ---- paho-mqtt ------------------------------------------------------------------------------

fn paho_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/paho_check.py")
}

/// `paho_check.py`: MQTT 3.1 and 3.1.1 clients exchange QoS 0/1/2 both ways, retained message
/// and its clearing, will on abnormal disconnect; it exits 0 only if everything matched.
#[test]
fn paho_mqtt_clients() {
    let case = "paho-mqtt (tests/interop/paho_check.py)";
    if !tools_available(case, &[Tool::Paho]) {
        return;
    }
    let b = broker();
    let script = paho_script();
    assert!(script.is_file(), "{} missing", script.display());
    let args = vec![
        script.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        b.addr().port().to_string(),
    ];
    let done = Proc::spawn("python3", &args, None).finish();
    assert!(
        done.status.is_some_and(|s| s.success()),
        "{case} failed\n{done}\n--- broker log ---\n{}",
        b.log_text()
    );
    assert!(
        done.stdout.contains("PASS: all paho-mqtt checks matched"),
        "{case}: exit 0 without its PASS line\n{done}"
    );
}

/// paho-mqtt speaking MQTT 5 (`protocol=MQTTv5`): assigned client id, QoS 0/1/2 with User
/// Properties (tests/interop/paho_v5_check.py).
#[test]
fn paho_mqtt_v5_clients() {
    let case = "paho-mqtt MQTT 5 (tests/interop/paho_v5_check.py)";
    if !tools_available(case, &[Tool::Paho]) {
        return;
    }
    let b = broker();
    let script = paho_script().with_file_name("paho_v5_check.py");
    assert!(script.is_file(), "{} missing", script.display());
    let args = vec![
        script.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        b.addr().port().to_string(),
    ];
    let done = Proc::spawn("python3", &args, None).finish();
    assert!(
        done.status.is_some_and(|s| s.success()),
        "{case} failed\n{done}\n--- broker log ---\n{}",
        b.log_text()
    );
    assert!(
        done.stdout
            .contains("PASS: all paho-mqtt MQTT 5 checks matched"),
        "{case}: exit 0 without its PASS line\n{done}"
    );
}

// ---- the helpers themselves -------------------------------------------------------------------

#[test]
fn sub_format_lines_parse_exactly() {
    let r = Received::parse("a/b|c|2|1|00ff7c").expect("parses");
    assert_eq!(r, Received::new("a/b|c", 2, true, &[0, 0xff, b'|']));
    assert_eq!(
        Received::parse("t|1|0|"),
        Some(Received::new("t", 1, false, b""))
    );
    assert_eq!(Received::parse("t|1|0|0"), None);
    assert_eq!(Received::parse("t|1|2|00"), None);
    assert_eq!(Received::parse("garbage"), None);
    assert_eq!(hex(&[0, 0x7c, 0xff]), "007cff");
}
