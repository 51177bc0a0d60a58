//! Backpressure on inbound PUBLISHes: a client is read no faster than what it sent is done with.
//!
//! A retained QoS 0 PUBLISH goes to the replicated state like a durable one, so it waits for its
//! commit as a QoS 1/2 PUBLISH does and counts against `max_inflight_in`: a client streaming
//! large retained messages must not make the broker hold more than that many uncommitted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use starling_codec::{Packet, QoS};
use starling_testkit::cluster::http;
use starling_testkit::{wait_until_async, BrokerBuilder, BrokerProcess, RawClient};

use crate::common::{plain, BIN, PROMPT};

/// The admin endpoint's address, from its start line (the broker binds port 0).
fn admin_addr(b: &BrokerProcess) -> SocketAddr {
    const NEEDLE: &str = "Admin endpoint on ";
    b.wait_for_log(NEEDLE, PROMPT);
    let line = b
        .log_lines()
        .iter()
        .map(|l| plain(l))
        .find(|l| l.contains(NEEDLE))
        .unwrap_or_default();
    let rest = line.split(NEEDLE).nth(1).unwrap_or_default();
    let addr = rest.split_whitespace().next().unwrap_or_default();
    addr.trim_end_matches('.')
        .parse()
        .unwrap_or_else(|e| panic!("admin address in {line:?}: {e}"))
}

/// A sample without labels, or with exactly `labels`, from a `/metrics` body.
fn sample(body: &str, name: &str, labels: &str) -> Option<u64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// QoS 0 PUBLISHes read so far and retained messages committed, from one `/metrics` answer.
/// The endpoint reads its counters before it asks the store, so `received` is never newer
/// than `retained`: `received - retained` can only overstate what was outstanding.
fn received_and_retained(admin: SocketAddr) -> Option<(u64, u64)> {
    let (code, body) = http(admin, "GET", "/metrics", None).ok()?;
    if code != 200 {
        return None;
    }
    Some((
        sample(&body, "starling_messages_received_total", "qos=\"0\"")?,
        sample(&body, "starling_retained_messages", "")?,
    ))
}

#[tokio::test]
async fn retained_qos0_publishes_are_read_no_faster_than_they_commit() {
    const MAX_INFLIGHT_IN: u64 = 4;
    const MESSAGES: u64 = 40;
    let b = BrokerBuilder::new(BIN)
        .env("STARLING_MQTT_MAX_INFLIGHT_IN", MAX_INFLIGHT_IN.to_string())
        .env("STARLING_MQTT_SYS_INTERVAL_SECS", "0")
        .arg("--admin-listen")
        .arg("127.0.0.1:0")
        .start();
    let admin = admin_addr(&b);
    let (mut c, _) = RawClient::connect(b.addr(), "streamer", true).await;

    // Sample "read but not committed" for as long as the client streams.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut worst, mut samples) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                if let Some((received, retained)) = received_and_retained(admin) {
                    worst = worst.max(received.saturating_sub(retained));
                    samples += 1;
                }
            }
            (worst, samples)
        })
    };

    // 40 retained messages of 256 KiB, each on its own topic (so each commit adds one to the
    // retained count), nobody subscribed; then PINGREQ, answered once everything is read.
    let payload = vec![0x5a_u8; 256 * 1024];
    for i in 0..MESSAGES {
        c.publish(&format!("bp/{i}"), &payload, QoS::AtMostOnce, true, 0)
            .await;
    }
    c.send(&Packet::PingReq).await;
    loop {
        match c.recv_within(PROMPT).await {
            Ok(Packet::PingResp) => break,
            Ok(_) => continue,
            Err(e) => panic!("no PINGRESP after the retained messages: {e:?}"),
        }
    }
    wait_until_async(PROMPT, "every retained message committed", || async move {
        tokio::task::spawn_blocking(move || received_and_retained(admin))
            .await
            .ok()
            .flatten()
            .is_some_and(|(_, retained)| retained == MESSAGES)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (worst, samples) = sampler.join().expect("sampler");

    // Reading paused at the limit: counted (and logged) as max_inflight_in biting. Before
    // retained QoS 0 PUBLISHes waited for their commit, nothing ever counted against it.
    let (_, body) = http(admin, "GET", "/metrics", None).expect("metrics");
    let paused = sample(
        &body,
        "starling_limit_hits_total",
        "limit=\"max_inflight_in\"",
    );
    assert!(
        paused.is_some_and(|n| n >= 1),
        "reading never paused at max_inflight_in: {paused:?}"
    );
    assert!(samples > 0, "no metrics sample taken");
    assert!(
        worst <= MAX_INFLIGHT_IN,
        "{worst} retained PUBLISHes read and not yet committed (max_inflight_in = \
         {MAX_INFLIGHT_IN}; {samples} samples)"
    );
    // Nothing was dropped, and the client is still served.
    c.send(&Packet::PingReq).await;
    assert_eq!(
        c.recv_within(Duration::from_secs(5)).await,
        Ok(Packet::PingResp)
    );
}
