//! What is set through one node is the state of every node.

use starling_codec::{Packet, PubAck, QoS};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_and_persistent_subscription_set_on_one_node_are_visible_on_all() {
    visible_on_all(3).await;
    visible_on_all(5).await;
}

/// Sets state through node 1 of `n` and reads it back through every node.
async fn visible_on_all(n: u64) {
    let c = blocking(|| cluster(n).start());
    blocking(|| c.wait_for_leader(ELECTION));
    let ids = c.ids();

    // Through node 1: a persistent session subscribes, goes away; a retained message is set.
    park_persistent_subscriber(c.addr(1), "vis-sub", "vis/p/#").await;
    let (mut publ, _) = connect(c.addr(1), "vis-pub", true).await;
    publish_acked(&mut publ, "vis/r", "retained-1", true).await;

    let conv = blocking(|| c.wait_converged(CONVERGE));
    for id in &ids {
        let s = blocking(|| c.status(*id));
        assert_eq!(
            s["sessions"], 1,
            "node {id}: the persistent session is replicated: {s}"
        );
        assert_eq!(
            s["retained"], 1,
            "node {id}: the retained message is replicated: {s}"
        );
        assert_eq!(s["state_digest"].as_str(), Some(conv.state_digest.as_str()));
    }

    // Every node serves the retained message to a fresh subscriber, RETAIN set.
    for id in &ids {
        let got = retained_on(c.addr(*id), "vis/#", 1).await;
        assert_eq!(&got[0].topic[..], "vis/r", "node {id}");
        assert_eq!(&got[0].payload[..], b"retained-1", "node {id}");
    }

    // While the session is away, node 2 takes a message for it: committed before the PUBACK.
    let (mut publ2, _) = connect(c.addr(2), "vis-pub2", true).await;
    publish_acked(&mut publ2, "vis/p/away", "while-away", false).await;

    // The session resumes on node 3 (not where it subscribed, nor where the message came in).
    let (mut sub, present) = connect(c.addr(3), "vis-sub", false).await;
    assert!(
        present,
        "the session subscribed on node 1 is present on node 3"
    );
    let p = sub
        .next_publish()
        .await
        .expect("the message queued while away");
    assert_eq!(
        (&p.topic[..], &p.payload[..], p.qos),
        ("vis/p/away", &b"while-away"[..], QoS::AtLeastOnce)
    );
    assert!(!p.retain);
    sub.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;

    // Its subscription is in every node's router: a message through each reaches it on node n.
    for id in &ids {
        let (mut p, _) = connect(c.addr(*id), &format!("vis-live-{id}"), true).await;
        let payload = format!("live-via-{id}");
        publish_acked(&mut p, "vis/p/live", &payload, false).await;
        let got = sub.next_publish().await.expect("live message");
        assert_eq!(
            (&got.topic[..], &got.payload[..]),
            ("vis/p/live", payload.as_bytes()),
            "via node {id}"
        );
        sub.send(&Packet::PubAck(PubAck::new(got.packet_id))).await;
        disconnect(p).await;
    }
    disconnect(sub).await;
    disconnect(publ).await;
    disconnect(publ2).await;
    let end = blocking(|| c.wait_converged(CONVERGE));
    assert!(end.applied_index > conv.applied_index);
}
