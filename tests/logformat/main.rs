//! Log formats. With `log_format = "mosquitto"` the broker must write exactly the lines of
//! `brief/protocol.md` ("Logs in Mosquitto's format", explained in `seeds/000_*.txt`) for a
//! scripted scenario; the `json` and `text` formats must carry the same message texts with the
//! client id as a field.
//!
//! Several actors log concurrently, so lines are compared per client (each client's lines exactly
//! and in order) and as a whole (the same multiset: nothing missing, nothing unexpected).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use regex::Regex;
use serde_json::Value;
use starling_codec::{
    ConnectReasonCode, Disconnect, Packet, ProtocolVersion, PubComp, PubRec, PubRel, QoS,
    SubAckReasonCode,
};
use starling_testkit::raw::connect_packet;
use starling_testkit::{wait_until, BrokerBuilder, BrokerProcess, RawClient};

/// The scenario's client ids (from the brief's example lines; none contains another).
const ZHOUJING: &str = "zhoujing";
const PUSHER: &str = "JY_API_PUSH_CLIENT";
const PINGER: &str = "36383A64663A6464003V0";
const SILENT: &str = "33303A33393A3236003V0";
const DROPPER: &str = "351BBJKFX62C1";
const CLIENTS: [&str; 5] = [ZHOUJING, PUSHER, PINGER, SILENT, DROPPER];
/// Pseudo-actor of the `New connection from` lines, which name no client.
const LISTENER: &str = "<listener>";
/// Lines naming no known client.
const UNATTRIBUTED: &str = "<unattributed>";

const TOPIC: &str = "jiji/chat/9";
const PAYLOAD_LEN: usize = 396;
const WAIT: Duration = Duration::from_secs(10);

fn broker(format: &str) -> BrokerProcess {
    BrokerBuilder::new(env!("CARGO_BIN_EXE_starling"))
        .log_format(format)
        .log_level("debug")
        .start()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn payload() -> Vec<u8> {
    let text = "{\"from\":\"JY_API_PUSH_CLIENT\",\"to\":\"jiji/chat/9\",\"body\":\"";
    let mut p = text.as_bytes().to_vec();
    p.extend(
        (0..)
            .map(|i| b'a' + (i % 26) as u8)
            .take(PAYLOAD_LEN - p.len() - 2),
    );
    p.extend_from_slice(b"\"}");
    assert_eq!(p.len(), PAYLOAD_LEN);
    p
}

// ---- the scenario ---------------------------------------------------------------------------

/// Connects and asserts CONNACK 0.
async fn connect(
    b: &BrokerProcess,
    id: &str,
    protocol: ProtocolVersion,
    clean: bool,
    keep_alive: u16,
    user: Option<&str>,
) -> RawClient {
    let mut c = connect_packet(id, clean, protocol, keep_alive, None);
    c.username = user.map(Into::into);
    let (client, ack) = RawClient::connect_with(b.addr(), c).await;
    assert_eq!(ack.code, ConnectReasonCode::Success, "CONNACK for {id}");
    client
}

/// `zhoujing` (clean-session 0, keep-alive 60, user `joyo`) subscribes `jiji/chat/9` at QoS 2.
async fn zhoujing_subscribes(b: &BrokerProcess) -> RawClient {
    let mut z = connect(
        b,
        ZHOUJING,
        ProtocolVersion::V3_1_1,
        false,
        60,
        Some("joyo"),
    )
    .await;
    let codes = z.subscribe(1, &[(TOPIC, QoS::ExactlyOnce)]).await;
    assert_eq!(codes, vec![SubAckReasonCode::GrantedQoS2]);
    z
}

/// `JY_API_PUSH_CLIENT` publishes the 396-byte QoS 2 message with packet id 1 and completes the
/// handshake; `zhoujing` receives it and completes its side.
async fn push_and_receive(b: &BrokerProcess, z: &mut RawClient) -> RawClient {
    let mut p = connect(b, PUSHER, ProtocolVersion::V3_1, true, 60, None).await;
    p.publish(TOPIC, &payload(), QoS::ExactlyOnce, false, 1)
        .await;
    assert_eq!(
        p.recv().await,
        Ok(Packet::PubRec(PubRec::new(1))),
        "PUBREC to {PUSHER}"
    );
    p.send(&Packet::PubRel(PubRel::new(1))).await;
    assert_eq!(
        p.recv().await,
        Ok(Packet::PubComp(PubComp::new(1))),
        "PUBCOMP to {PUSHER}"
    );

    let m = z.next_publish().await.expect("PUBLISH to zhoujing");
    assert_eq!(
        (m.qos, &*m.topic, &m.payload[..]),
        (QoS::ExactlyOnce, TOPIC, &payload()[..])
    );
    z.send(&Packet::PubRec(PubRec::new(m.packet_id))).await;
    assert_eq!(
        z.recv().await,
        Ok(Packet::PubRel(PubRel::new(m.packet_id))),
        "PUBREL to zhoujing"
    );
    z.send(&Packet::PubComp(PubComp::new(m.packet_id))).await;
    p
}

/// Runs the whole scenario of the brief's example; returns the clients that must stay connected
/// until the log has been read (so that they add no line).
async fn full_scenario(b: &BrokerProcess) -> Vec<RawClient> {
    let mut z = zhoujing_subscribes(b).await;
    let mut p = push_and_receive(b, &mut z).await;
    p.send(&Packet::Disconnect(Disconnect::default())).await;
    assert!(
        p.closed_within(WAIT).await,
        "{PUSHER} not closed after DISCONNECT"
    );

    let mut pinger = connect(b, PINGER, ProtocolVersion::V3_1_1, true, 60, None).await;
    pinger.send(&Packet::PingReq).await;
    assert_eq!(pinger.recv().await, Ok(Packet::PingResp));

    // Takeover: a second connection with a connected client's id.
    let mut old = connect(b, PUSHER, ProtocolVersion::V3_1, true, 60, None).await;
    let new = connect(b, PUSHER, ProtocolVersion::V3_1, true, 60, None).await;
    assert!(
        old.closed_within(WAIT).await,
        "old {PUSHER} connection not closed on takeover"
    );

    // Keep-alive 1 s, then silence: disconnected after 1.5 s.
    let mut silent = connect(b, SILENT, ProtocolVersion::V3_1_1, true, 1, None).await;
    // A socket that just closes.
    let dropper = connect(b, DROPPER, ProtocolVersion::V3_1_1, true, 60, None).await;
    drop(dropper);
    assert!(
        silent.closed_within(WAIT).await,
        "{SILENT} (keep-alive 1) not disconnected"
    );
    vec![z, pinger, new]
}

/// The brief's lines for [`full_scenario`], in the order each actor produces them.
fn expected_full(port: u16) -> Vec<(&'static str, String)> {
    let new_conn = || {
        (
            LISTENER,
            format!("New connection from 127.0.0.1 on port {port}."),
        )
    };
    let connected = |id: &'static str, c: u8, k: u16, user: &str| {
        (
            id,
            format!("New client connected from 127.0.0.1 as {id} (c{c}, k{k}{user})."),
        )
    };
    let l = |id: &'static str, text: String| (id, text);
    let publish = |dir: &str, id: &str| {
        format!(
            "{dir} PUBLISH {} {id} (d0, q2, r0, m1, '{TOPIC}', ... ({PAYLOAD_LEN} bytes))",
            if dir == "Sending" { "to" } else { "from" }
        )
    };
    vec![
        new_conn(),
        connected(ZHOUJING, 0, 60, ", ujoyo"),
        l(ZHOUJING, format!("Sending CONNACK to {ZHOUJING} (0)")),
        l(ZHOUJING, format!("Received SUBSCRIBE from {ZHOUJING}")),
        l(ZHOUJING, format!("\t{TOPIC} (QoS 2)")),
        l(ZHOUJING, format!("{ZHOUJING} 2 {TOPIC}")),
        l(ZHOUJING, format!("Sending SUBACK to {ZHOUJING}")),
        new_conn(),
        connected(PUSHER, 1, 60, ""),
        l(PUSHER, format!("Sending CONNACK to {PUSHER} (0)")),
        l(PUSHER, publish("Received", PUSHER)),
        l(PUSHER, format!("Sending PUBREC to {PUSHER} (Mid: 1)")),
        l(PUSHER, format!("Received PUBREL from {PUSHER} (Mid: 1)")),
        l(PUSHER, format!("Sending PUBCOMP to {PUSHER} (Mid: 1)")),
        l(ZHOUJING, publish("Sending", ZHOUJING)),
        l(
            ZHOUJING,
            format!("Received PUBREC from {ZHOUJING} (Mid: 1)"),
        ),
        l(ZHOUJING, format!("Sending PUBREL to {ZHOUJING} (Mid: 1)")),
        l(
            ZHOUJING,
            format!("Received PUBCOMP from {ZHOUJING} (Mid: 1)"),
        ),
        l(PUSHER, format!("Received DISCONNECT from {PUSHER}")),
        new_conn(),
        connected(PINGER, 1, 60, ""),
        l(PINGER, format!("Sending CONNACK to {PINGER} (0)")),
        l(PINGER, format!("Received PINGREQ from {PINGER}")),
        l(PINGER, format!("Sending PINGRESP to {PINGER}")),
        new_conn(),
        connected(PUSHER, 1, 60, ""),
        l(PUSHER, format!("Sending CONNACK to {PUSHER} (0)")),
        new_conn(),
        l(
            PUSHER,
            format!("Client {PUSHER} already connected, closing old connection."),
        ),
        connected(PUSHER, 1, 60, ""),
        l(PUSHER, format!("Sending CONNACK to {PUSHER} (0)")),
        new_conn(),
        connected(SILENT, 1, 1, ""),
        l(SILENT, format!("Sending CONNACK to {SILENT} (0)")),
        new_conn(),
        connected(DROPPER, 1, 60, ""),
        l(DROPPER, format!("Sending CONNACK to {DROPPER} (0)")),
        l(
            DROPPER,
            format!("Socket error on client {DROPPER}, disconnecting."),
        ),
        l(
            SILENT,
            format!("Client {SILENT} has exceeded timeout, disconnecting."),
        ),
    ]
}

// ---- reading and comparing Mosquitto-format lines ------------------------------------------

/// The broker's lines from the first `New connection from` on, each `<unix seconds>: ` prefix
/// checked (format, and a time within `since..=now`) and stripped.
fn mosquitto_lines(raw: &[String], since: u64) -> Result<Vec<String>, String> {
    let re = Regex::new(r"^(\d{10,}): (.*)$").expect("regex");
    let now = unix_now();
    let Some(first) = raw.iter().position(|l| l.contains("New connection from ")) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut bad = String::new();
    for l in &raw[first..] {
        match re.captures(l) {
            Some(c) => {
                let secs: u64 = c[1].parse().map_err(|e| format!("{l:?}: {e}"))?;
                if !(since..=now).contains(&secs) {
                    let _ = writeln!(bad, "  timestamp {secs} not in {since}..={now}: {l:?}");
                }
                out.push(c[2].to_string());
            }
            None => {
                let _ = writeln!(bad, "  no `<unix seconds>: ` prefix: {l:?}");
            }
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(format!("malformed Mosquitto-format lines:\n{bad}"))
    }
}

/// Which actor a line is about: the client it names; `\t<filter> (QoS n)` belongs to the last
/// client whose SUBSCRIBE was logged.
fn attribute(lines: &[String]) -> Vec<(&'static str, String)> {
    let mut last_subscriber = UNATTRIBUTED;
    lines
        .iter()
        .map(|l| {
            let named: Vec<&'static str> = CLIENTS
                .iter()
                .copied()
                .filter(|id| l.contains(id))
                .collect();
            let actor = if l.starts_with("New connection from ") {
                LISTENER
            } else if named.len() == 1 {
                if l.starts_with("Received SUBSCRIBE from ") {
                    last_subscriber = named[0];
                }
                named[0]
            } else if l.starts_with('\t') {
                last_subscriber
            } else {
                UNATTRIBUTED
            };
            (actor, l.clone())
        })
        .collect()
}

/// A line diff (longest common subsequence): `  ` same, `- ` expected but missing at this
/// place, `+ ` present but not expected here.
fn diff(expected: &[String], observed: &[String]) -> Vec<String> {
    let (n, m) = (expected.len(), observed.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == observed[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && expected[i] == observed[j] {
            out.push(format!("  {:?}", expected[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("+ {:?}", observed[j]));
            j += 1;
        } else {
            out.push(format!("- {:?}", expected[i]));
            i += 1;
        }
    }
    out
}

fn multiset<'a>(lines: impl Iterator<Item = &'a String>) -> BTreeMap<&'a str, usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        *m.entry(l.as_str()).or_insert(0) += 1;
    }
    m
}

/// Every difference between the expected and the observed lines; empty if they match.
fn compare(expected: &[(&'static str, String)], observed: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    let attributed = attribute(observed);

    // The whole set.
    let want = multiset(expected.iter().map(|(_, l)| l));
    let got = multiset(observed.iter());
    for (l, n) in &want {
        let g = got.get(l).copied().unwrap_or(0);
        if g < *n {
            problems.push(format!("missing ({} of {n}): {l:?}", n - g));
        }
    }
    for (l, n) in &got {
        let w = want.get(l).copied().unwrap_or(0);
        if w < *n {
            problems.push(format!("unexpected ({} of {n}): {l:?}", n - w));
        }
    }

    // Each actor's lines, in order.
    let mut actors: Vec<&'static str> = expected.iter().map(|(a, _)| *a).collect();
    actors.extend(attributed.iter().map(|(a, _)| *a));
    actors.sort_unstable();
    actors.dedup();
    for actor in actors {
        let e: Vec<String> = expected
            .iter()
            .filter(|(a, _)| *a == actor)
            .map(|(_, l)| l.clone())
            .collect();
        let o: Vec<String> = attributed
            .iter()
            .filter(|(a, _)| *a == actor)
            .map(|(_, l)| l.clone())
            .collect();
        if e != o {
            problems.push(format!(
                "lines about {actor} differ (- expected, + logged):\n    {}",
                diff(&e, &o).join("\n    ")
            ));
        }
    }

    // Connections are made one after the other: each `New connection from` precedes the
    // `New client connected` of that connection and follows the previous one's.
    let conn: Vec<&str> = observed
        .iter()
        .filter_map(|l| {
            if l.starts_with("New connection from ") {
                Some("New connection")
            } else if l.starts_with("New client connected from ") {
                Some("New client connected")
            } else {
                None
            }
        })
        .collect();
    let alternating = conn
        .chunks(2)
        .all(|c| c == ["New connection", "New client connected"]);
    if !alternating || !conn.len().is_multiple_of(2) {
        problems.push(format!(
            "`New connection from` and `New client connected` lines do not alternate: {conn:?}"
        ));
    }
    problems
}

fn show(attributed: &[(&'static str, String)]) -> String {
    attributed
        .iter()
        .map(|(a, l)| format!("    [{a}] {l:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until every expected line has been logged (or a soft deadline passed, so that what is
/// missing is reported as a difference rather than as a timeout).
fn wait_for_lines(b: &BrokerProcess, expected: &[(&'static str, String)], since: u64) {
    let soft = Instant::now() + WAIT;
    wait_until(WAIT * 2, "the expected log lines", || {
        let got = mosquitto_lines(&b.log_lines(), since).unwrap_or_default();
        let got = multiset(got.iter());
        let all = multiset(expected.iter().map(|(_, l)| l))
            .iter()
            .all(|(l, n)| got.get(l).copied().unwrap_or(0) >= *n);
        all || Instant::now() >= soft
    });
}

/// The brief's Mosquitto log lines, exactly, for connect (c0, k60, user), SUBSCRIBE, QoS 2 in and
/// out, PINGREQ, DISCONNECT, takeover, keep-alive timeout and socket error.
#[tokio::test]
async fn mosquitto_format_lines_match_the_brief() {
    let since = unix_now();
    let b = broker("mosquitto");
    let held = full_scenario(&b).await;
    let expected = expected_full(b.addr().port());
    wait_for_lines(&b, &expected, since);
    let raw = b.log_lines();
    drop(held);
    let observed = match mosquitto_lines(&raw, since) {
        Ok(l) => l,
        Err(e) => panic!("{e}\n--- broker log ---\n{}", raw.join("\n")),
    };
    let problems = compare(&expected, &observed);
    assert!(
        problems.is_empty(),
        "Starling's Mosquitto-format log differs from brief/protocol.md:\n\n{}\n\n\
         --- logged, from the first `New connection from` (actor attributed) ---\n{}",
        problems.join("\n"),
        show(&attribute(&observed))
    );
}

/// The comparison finds what is missing, unexpected or out of order (a check of the check).
#[test]
fn comparison_reports_missing_unexpected_and_misordered_lines() {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_string()).collect::<Vec<_>>();
    let expected = vec![
        (
            LISTENER,
            "New connection from 127.0.0.1 on port 1.".to_string(),
        ),
        (
            ZHOUJING,
            format!("New client connected from 127.0.0.1 as {ZHOUJING} (c1, k60)."),
        ),
        (ZHOUJING, format!("Received SUBSCRIBE from {ZHOUJING}")),
        (ZHOUJING, "\ta (QoS 0)".to_string()),
        (ZHOUJING, format!("Sending SUBACK to {ZHOUJING}")),
        (PINGER, format!("Received PINGREQ from {PINGER}")),
        (PINGER, format!("Sending PINGRESP to {PINGER}")),
    ];
    let exact: Vec<String> = expected.iter().map(|(_, l)| l.clone()).collect();
    assert_eq!(compare(&expected, &exact), Vec::<String>::new());
    // Other actors' lines interleaved differently: still a match.
    let mut interleaved = exact.clone();
    interleaved.swap(4, 5);
    interleaved.swap(3, 4);
    assert_eq!(attribute(&interleaved)[3].0, PINGER);
    assert_eq!(attribute(&interleaved)[4].0, ZHOUJING);
    assert_eq!(compare(&expected, &interleaved), Vec::<String>::new());

    let mut swapped = exact.clone();
    swapped.swap(5, 6);
    assert_eq!(
        compare(&expected, &swapped).len(),
        1,
        "{:?}",
        compare(&expected, &swapped)
    );

    let mut extra = exact.clone();
    extra.push(format!("Client {PINGER} disconnected."));
    let p = compare(&expected, &extra);
    assert!(
        p.iter().any(|x| x.starts_with("unexpected (1 of 1)")),
        "{p:?}"
    );

    let missing = s(&exact[..6].iter().map(String::as_str).collect::<Vec<_>>());
    let p = compare(&expected, &missing);
    assert!(p.iter().any(|x| x.starts_with("missing (1 of 1)")), "{p:?}");

    let mut reordered = exact.clone();
    reordered.swap(0, 1);
    let p = compare(&expected, &reordered);
    assert!(p.iter().any(|x| x.contains("do not alternate")), "{p:?}");

    assert_eq!(
        diff(&s(&["a", "b", "c"]), &s(&["a", "c", "d"])),
        s(&["  \"a\"", "- \"b\"", "  \"c\"", "+ \"d\""])
    );
    assert!(mosquitto_lines(&s(&["x", "New connection from y"]), 0).is_err());
    assert_eq!(
        mosquitto_lines(
            &s(&[
                "1700000000: a",
                "1700000001: New connection from y",
                "1700000001: \tz"
            ]),
            0
        ),
        Ok(s(&["New connection from y", "\tz"]))
    );
}

// ---- the same messages in json and text formats ---------------------------------------------

/// A shorter scenario whose messages are the same in every run: connect, SUBSCRIBE, QoS 2 both
/// ways, PINGREQ, DISCONNECT, socket error. Returns when the last line has been logged.
async fn small_scenario(b: &BrokerProcess) {
    let mut z = zhoujing_subscribes(b).await;
    let mut p = push_and_receive(b, &mut z).await;
    z.send(&Packet::PingReq).await;
    assert_eq!(z.recv().await, Ok(Packet::PingResp));
    p.send(&Packet::Disconnect(Disconnect::default())).await;
    assert!(
        p.closed_within(WAIT).await,
        "{PUSHER} not closed after DISCONNECT"
    );
    drop(z);
    b.wait_for_log(&format!("Socket error on client {ZHOUJING}"), WAIT);
}

/// The client a message is about, as [`attribute`] decides it for Mosquitto lines.
fn client_of(message: &str) -> Option<&'static str> {
    if message.starts_with('\t') {
        return Some(ZHOUJING); // the scenario's only subscriber
    }
    CLIENTS.iter().copied().find(|id| message.contains(id))
}

/// The message texts of the small scenario in Mosquitto format, port replaced by `PORT`.
async fn reference_messages() -> Vec<String> {
    let since = unix_now();
    let b = broker("mosquitto");
    small_scenario(&b).await;
    let port = format!("on port {}.", b.addr().port());
    let mut lines = mosquitto_lines(&b.log_lines(), since)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|l| l.replace(&port, "on port PORT."))
        .collect::<Vec<_>>();
    assert!(lines.len() >= 20, "too few lines: {lines:?}");
    lines.sort();
    lines
}

/// The level Mosquitto logs a message at (its NOTICE is `tracing`'s INFO), for the lines of
/// [`small_scenario`].
fn mosquitto_level(message: &str) -> &'static str {
    let notice = [
        "New connection from ",
        "New client connected from ",
        "Socket error on client ",
    ];
    if notice.iter().any(|p| message.starts_with(p))
        || (message.starts_with("Client ") && message.ends_with(" disconnected."))
    {
        "INFO"
    } else {
        // Sending/Received lines, the subscription lines.
        "DEBUG"
    }
}

/// `json`: every line is one JSON object with `timestamp`, `level`, `target` and the message (at
/// `message` or `fields.message`); each `mqtt` event about a client has its `client_id` and the
/// level Mosquitto uses; and the messages are the same as in the Mosquitto format.
#[tokio::test]
async fn json_format_has_one_object_per_line_with_message_and_client_id() {
    let reference = reference_messages().await;
    let b = broker("json");
    small_scenario(&b).await;
    let port = format!("on port {}.", b.addr().port());
    let field = |o: &serde_json::Map<String, Value>, k: &str| -> Option<String> {
        o.get(k)
            .or_else(|| o.get("fields").and_then(|f| f.get(k)))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let mut messages = Vec::new();
    let mut started = false;
    for line in b.log_lines() {
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        let o = v
            .as_object()
            .unwrap_or_else(|| panic!("not a JSON object: {line:?}"));
        for k in ["timestamp", "level", "target"] {
            assert!(field(o, k).is_some(), "no {k:?} in {line}");
        }
        let message = field(o, "message").unwrap_or_else(|| panic!("no message in {line}"));
        if field(o, "target").as_deref() != Some("mqtt") {
            continue;
        }
        started |= message.starts_with("New connection from ");
        if !started {
            continue;
        }
        assert_eq!(
            field(o, "level").as_deref(),
            Some(mosquitto_level(&message)),
            "level of {line}"
        );
        if let Some(id) = client_of(&message) {
            assert_eq!(
                field(o, "client_id").as_deref(),
                Some(id),
                "client_id of {line}"
            );
        }
        messages.push(message.replace(&port, "on port PORT."));
    }
    messages.sort();
    assert_eq!(
        messages, reference,
        "json messages (left) differ from the Mosquitto-format lines (right)"
    );
}

/// `text`: the `mqtt` lines carry the same message texts as the Mosquitto format, followed by
/// the fields, including `client_id=` for lines about a client.
#[tokio::test]
async fn text_format_carries_the_same_messages() {
    let reference = reference_messages().await;
    let b = broker("text");
    small_scenario(&b).await;
    let port = format!("on port {}.", b.addr().port());
    let re = Regex::new(r"^\S+\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s+(\S+?): (.*)$").expect("regex");
    let mut left = reference.clone();
    let mut unmatched = Vec::new();
    let mut started = false;
    for line in b.log_lines() {
        let c = re.captures(&line).unwrap_or_else(|| {
            panic!("not `<time> <LEVEL> <target>: <message> <fields>`: {line:?}")
        });
        let rest = c[3].replace(&port, "on port PORT.");
        if &c[2] != "mqtt" {
            continue;
        }
        started |= rest.starts_with("New connection from ");
        if !started {
            continue;
        }
        // The longest reference message this line starts with, then only fields.
        let found = left
            .iter()
            .enumerate()
            .filter(|(_, m)| rest == **m || rest.starts_with(&format!("{m} ")))
            .max_by_key(|(_, m)| m.len())
            .map(|(i, m)| (i, m.clone()));
        match found {
            Some((i, m)) => {
                if let Some(id) = client_of(&m) {
                    assert!(
                        rest[m.len()..].contains(&format!(" client_id={id}")),
                        "no client_id={id} field: {line:?}"
                    );
                }
                left.remove(i);
            }
            None => unmatched.push(line),
        }
    }
    assert!(
        left.is_empty() && unmatched.is_empty(),
        "text format vs Mosquitto format:\n  messages not found in text lines: {left:#?}\n  \
         text lines with no Mosquitto-format message: {unmatched:#?}"
    );
}
