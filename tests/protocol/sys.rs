//! `$SYS`: the broker topics Mosquitto publishes, at the configured interval, retained.

use std::collections::HashMap;

use rumqttc::QoS;

use crate::common::*;

const REQUIRED: [&str; 12] = [
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/clients/total",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained messages/count",
    "$SYS/broker/load/messages/received/1min",
    "$SYS/broker/load/messages/sent/5min",
    "$SYS/broker/load/bytes/received/15min",
    "$SYS/cluster/nodes",
];

fn number(v: &str) -> u64 {
    v.parse().unwrap_or_else(|_| panic!("not a count: {v:?}"))
}

#[tokio::test]
async fn sys_topics_are_published() {
    let b = broker_env(&[("STARLING_MQTT_SYS_INTERVAL_SECS", "1")]);
    let mut c = Mqtt::connect(b.addr(), "sys", true).await;
    c.publish("keep/me", QoS::AtLeastOnce, true, "retained")
        .await;
    c.subscribe("$SYS/#", QoS::AtMostOnce).await;
    // Retained copies come at once; after that every interval brings fresh values. Collect until
    // every required topic has been seen with the state above (1 client, 1 subscription,
    // 1 retained message) and the uptime has advanced. A value that never gets there fails.
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut uptimes: Vec<u64> = Vec::new();
    let deadline = tokio::time::Instant::now() + PROMPT;
    loop {
        let p = c.next_publish().await;
        assert!(p.retain || p.qos == QoS::AtMostOnce, "{p:?}");
        let value = String::from_utf8(p.payload.to_vec()).expect("UTF-8 value");
        if p.topic == "$SYS/broker/uptime" {
            let secs = value
                .strip_suffix(" seconds")
                .unwrap_or_else(|| panic!("uptime {value:?}"));
            uptimes.push(number(secs));
        }
        seen.insert(p.topic, value);
        let settled = REQUIRED.iter().all(|t| seen.contains_key(*t))
            && seen["$SYS/broker/clients/connected"] == "1"
            && seen["$SYS/broker/clients/total"] == "1"
            && seen["$SYS/broker/subscriptions/count"] == "1"
            && seen["$SYS/broker/retained messages/count"] == "1"
            // CONNECT, PUBLISH, SUBSCRIBE and CONNACK, PUBACK, SUBACK at least.
            && number(&seen["$SYS/broker/messages/received"]) >= 3
            && number(&seen["$SYS/broker/messages/sent"]) >= 3
            && uptimes.first() < uptimes.last();
        if settled {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "$SYS did not settle: {seen:#?}"
        );
    }
    assert!(
        seen["$SYS/broker/version"].starts_with("starling "),
        "{}",
        seen["$SYS/broker/version"]
    );
    for t in REQUIRED.iter().filter(|t| t.contains("/load/")) {
        let v: f64 = seen[*t]
            .parse()
            .unwrap_or_else(|_| panic!("{t}: {:?}", seen[*t]));
        assert!(v >= 0.0, "{t}: {v}");
    }
    assert_eq!(seen["$SYS/cluster/nodes"], "1");
}
