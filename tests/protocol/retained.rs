//! Retained messages: replace and delete, RETAIN=1 on subscription and RETAIN=0 live, matching by
//! wildcard filters at the subscription's QoS.

use rumqttc::QoS;

use crate::common::*;

#[test]
fn retained_set_and_clear() {
    let b = broker();
    let (mut publ, _) = SyncMqtt::connect(b.addr(), "pub", true);
    publ.publish("ret/sentinel", QoS::AtLeastOnce, true, "sentinel");
    publ.publish("ret/t", QoS::AtLeastOnce, true, "v1");
    publ.publish("ret/t", QoS::AtLeastOnce, true, "v2");
    // A retained PUBLISH replaced the previous one: a new subscriber gets only v2, flagged.
    let (mut s1, _) = SyncMqtt::connect(b.addr(), "s1", true);
    s1.subscribe("ret/t", QoS::AtLeastOnce);
    let p = s1.next_publish();
    assert_eq!(
        (&p.payload[..], p.retain, p.topic.as_str()),
        (&b"v2"[..], true, "ret/t")
    );
    // Retained messages follow their SUBACK: whatever comes before the second SUBACK belongs to
    // the first subscription, so "only v2" is checked without waiting.
    s1.subscribe("ret/sentinel", QoS::AtLeastOnce);
    assert!(
        s1.publishes.iter().all(|p| p.topic != "ret/t"),
        "{:?}",
        s1.publishes
    );
    assert_eq!(&s1.next_publish().payload[..], b"sentinel");
    // An empty retained payload deletes it.
    publ.publish("ret/t", QoS::AtLeastOnce, true, "");
    let (mut s2, _) = SyncMqtt::connect(b.addr(), "s2", true);
    s2.subscribe("ret/t", QoS::AtLeastOnce);
    s2.subscribe("ret/sentinel", QoS::AtLeastOnce);
    assert!(
        s2.publishes.iter().all(|p| p.topic != "ret/t"),
        "deleted, yet sent: {:?}",
        s2.publishes
    );
    assert_eq!(&s2.next_publish().payload[..], b"sentinel");
    // The live subscriber saw the delete as an ordinary empty message.
    let p = s1.next_publish();
    assert_eq!(
        (p.topic.as_str(), p.payload.len(), p.retain),
        ("ret/t", 0, false)
    );
}

#[tokio::test]
async fn retained_sent_with_retain_flag_and_live_with_retain_clear() {
    let b = broker();
    let mut early = Mqtt::connect(b.addr(), "early", true).await;
    early.subscribe("flag/t", QoS::AtLeastOnce).await;
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("flag/t", QoS::AtLeastOnce, true, "r").await;
    let live = early.next_publish().await;
    assert_eq!((&live.payload[..], live.retain), (&b"r"[..], false));
    let mut late = Mqtt::connect(b.addr(), "late", true).await;
    late.subscribe("flag/t", QoS::AtLeastOnce).await;
    let stored = late.next_publish().await;
    assert_eq!((&stored.payload[..], stored.retain), (&b"r"[..], true));
    // Once subscribed, further retained publishes reach it live: RETAIN=0.
    publ.publish("flag/t", QoS::AtLeastOnce, true, "r2").await;
    let live = late.next_publish().await;
    assert_eq!((&live.payload[..], live.retain), (&b"r2"[..], false));
    // Same for a persistent session.
    let mut durable = Mqtt::connect(b.addr(), "durable", false).await;
    durable.subscribe("flag/t", QoS::AtLeastOnce).await;
    let stored = durable.next_publish().await;
    assert_eq!((&stored.payload[..], stored.retain), (&b"r2"[..], true));
    publ.publish("flag/t", QoS::AtLeastOnce, true, "r3").await;
    let live = durable.next_publish().await;
    assert_eq!((&live.payload[..], live.retain), (&b"r3"[..], false));
}

#[tokio::test]
async fn retained_messages_match_wildcards_at_subscription_qos() {
    let b = broker();
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("w/a", QoS::ExactlyOnce, true, "a2").await;
    publ.publish("w/b/c", QoS::AtMostOnce, true, "bc0").await;
    publ.publish("w/b/d", QoS::AtLeastOnce, true, "bd1").await;
    publ.publish("x/a", QoS::AtLeastOnce, true, "x").await;
    let mut sub = Mqtt::connect(b.addr(), "sub", true).await;
    sub.subscribe("w/#", QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = sub.next_publish().await;
        assert!(p.retain, "{p:?}");
        got.push((p.topic, p.qos as u8));
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("w/a".to_string(), 1),
            ("w/b/c".to_string(), 0),
            ("w/b/d".to_string(), 1)
        ]
    );
    sub.assert_no_publish(std::time::Duration::from_millis(300))
        .await;
}
