#!/usr/bin/env python3
"""Interoperability check of a Starling broker with the paho-mqtt Python client.

Run by tests/interop/main.rs against a broker it starts:

    python3 paho_check.py --host 127.0.0.1 --port 1883

Two clients, A speaking MQTT 3.1 (MQIsdp, level 3) and B speaking MQTT 3.1.1, exchange QoS 0, 1
and 2 messages in both directions; then a retained message is set, received by a later
subscriber, cleared and checked gone; then a will is published on an abnormal disconnect and
not on a clean DISCONNECT. Every check compares exactly (topic, QoS, RETAIN flag, payload bytes,
count, order per publisher/topic/QoS). Exit status 0 when everything matched; otherwise a line
starting with "FAIL:" says what differed and the status is 1 (2 for a setup error).
Works with paho-mqtt 1.x and 2.x.
"""

import argparse
import socket
import sys
import threading
import time

try:
    import paho.mqtt
    import paho.mqtt.client as mqtt
except ImportError as e:  # pragma: no cover - the Rust test gates on this import
    print(f"FAIL: cannot import paho.mqtt: {e}", flush=True)
    sys.exit(2)

TIMEOUT = 10.0


class CheckFailed(Exception):
    pass


def fail(msg):
    raise CheckFailed(msg)


def code_of(rc):
    """paho 1.x passes ints, 2.x ReasonCode objects."""
    return getattr(rc, "value", rc)


class Peer:
    """One paho client with a network thread and a record of what it received."""

    def __init__(self, client_id, protocol, clean_session=True, threaded=True):
        self.name = client_id
        self.proto = {mqtt.MQTTv31: "3.1", mqtt.MQTTv311: "3.1.1"}[protocol]
        self.cond = threading.Condition()
        self.connack = None
        self.granted = {}
        self.received = []
        self.threaded = threaded
        kwargs = dict(client_id=client_id, protocol=protocol, clean_session=clean_session)
        if hasattr(mqtt, "CallbackAPIVersion"):
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        else:
            self.client = mqtt.Client(**kwargs)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # callbacks (signatures of both callback API versions)
    def _on_connect(self, client, userdata, flags, rc, *rest):
        with self.cond:
            self.connack = code_of(rc)
            self.cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, granted, *rest):
        with self.cond:
            self.granted[mid] = [code_of(g) for g in granted]
            self.cond.notify_all()

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.received.append((msg.topic, msg.qos, bool(msg.retain), bytes(msg.payload)))
            self.cond.notify_all()

    def wait(self, what, pred, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    fail(f"{self.name}: timed out after {timeout}s waiting for {what}; "
                         f"received so far: {self.received!r}")
                if self.threaded:
                    self.cond.wait(min(left, 0.1))
                else:
                    self.cond.release()
                    try:
                        self.client.loop(timeout=0.05)
                    finally:
                        self.cond.acquire()

    def connect(self, host, port, keepalive=60):
        self.client.connect(host, port, keepalive=keepalive)
        if self.threaded:
            self.client.loop_start()
        self.wait("CONNACK", lambda: self.connack is not None)
        if self.connack != 0:
            fail(f"{self.name}: CONNACK return code {self.connack}, expected 0")

    def subscribe(self, topic, qos):
        rc, mid = self.client.subscribe(topic, qos)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            fail(f"{self.name}: subscribe({topic!r}) returned {rc}")
        self.wait(f"SUBACK for {topic!r}", lambda: mid in self.granted)
        if self.granted[mid] != [qos]:
            fail(f"{self.name}: SUBACK for {topic!r} granted {self.granted[mid]}, expected [{qos}]")

    def publish(self, topic, payload, qos, retain=False):
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            fail(f"{self.name}: publish to {topic!r} returned {info.rc}")
        info.wait_for_publish(TIMEOUT)
        if not info.is_published():
            fail(f"{self.name}: publish to {topic!r} at QoS {qos} not acknowledged in {TIMEOUT}s")

    def messages_on(self, topic):
        with self.cond:
            return [m for m in self.received if m[0] == topic]

    def wait_for_payload(self, topic, payload):
        self.wait(f"{payload!r} on {topic!r}",
                  lambda: any(m[0] == topic and m[3] == payload for m in self.received))

    def stop(self):
        try:
            self.client.disconnect()
        finally:
            if self.threaded:
                self.client.loop_stop()


def expect_equal(what, got, want):
    if got != want:
        lines = [f"{what}: mismatch", f"  expected ({len(want)}):"]
        lines += [f"    {w!r}" for w in want]
        lines.append(f"  received ({len(got)}):")
        lines += [f"    {g!r}" for g in got]
        fail("\n".join(lines))
    print(f"ok: {what} ({len(got)} message(s))", flush=True)


def exchange(sender, receiver, prefix):
    """sender publishes at QoS 0, 1, 2 to prefix/q<N>; receiver (subscribed to prefix/# at QoS 2)
    must get exactly those messages, in order per topic, at the publish QoS, RETAIN 0."""
    expected = {}
    for qos in (0, 1, 2):
        topic = f"{prefix}/q{qos}"
        payloads = [
            f"{sender.name}->{receiver.name} q{qos} #0".encode(),
            "h\u00e9llo w\u00f6rld \u6f22\u5b57".encode("utf-8"),
            bytes(range(256)),
            b"x" * 5000,
            b"",
            b"END",
        ]
        for p in payloads:
            sender.publish(topic, p, qos)
        expected[topic] = [(topic, qos, False, p) for p in payloads]
    for topic, want in expected.items():
        receiver.wait_for_payload(topic, b"END")
    for topic, want in expected.items():
        expect_equal(f"{sender.name} (MQTT {sender.proto}) -> {receiver.name} (MQTT {receiver.proto})"
                     f" on {topic}", receiver.messages_on(topic), want)


def run(host, port):
    print(f"paho-mqtt {paho.mqtt.__version__} against {host}:{port}", flush=True)

    # --- QoS 0/1/2 in both directions, 3.1 <-> 3.1.1 ---
    a = Peer("paho-a-31", mqtt.MQTTv31)
    b = Peer("paho-b-311", mqtt.MQTTv311)
    a.connect(host, port)
    b.connect(host, port)
    a.subscribe("paho/to-a/#", 2)
    b.subscribe("paho/to-b/#", 2)
    exchange(b, a, "paho/to-a")
    exchange(a, b, "paho/to-b")

    # --- retained message, its replacement and its clearing ---
    b.publish("paho/retained", b"first value", 1, retain=True)
    b.publish("paho/retained", b"keep-me", 1, retain=True)
    c = Peer("paho-c-ret-311", mqtt.MQTTv311)
    c.connect(host, port)
    c.subscribe("paho/retained", 1)
    c.wait_for_payload("paho/retained", b"keep-me")
    # A live publish to a connected subscriber is forwarded with RETAIN 0.
    b.publish("paho/retained", b"live-end", 1)
    c.wait_for_payload("paho/retained", b"live-end")
    expect_equal("retained message received by a later 3.1.1 subscriber",
                 c.messages_on("paho/retained"),
                 [("paho/retained", 1, True, b"keep-me"), ("paho/retained", 1, False, b"live-end")])
    c.stop()
    b.publish("paho/retained", b"", 1, retain=True)  # clears it
    d = Peer("paho-d-ret-31", mqtt.MQTTv31)
    d.connect(host, port)
    d.subscribe("paho/retained", 1)
    # A retained message would be sent right after the SUBACK, before this live one.
    b.publish("paho/retained", b"after-clear", 1)
    d.wait_for_payload("paho/retained", b"after-clear")
    expect_equal("retained message cleared (3.1 subscriber gets only the live message)",
                 d.messages_on("paho/retained"), [("paho/retained", 1, False, b"after-clear")])
    d.stop()

    # --- will: discarded on DISCONNECT, published on abnormal disconnect ---
    a.subscribe("paho/will", 1)
    polite = Peer("paho-will-ok-311", mqtt.MQTTv311)
    polite.client.will_set("paho/will", b"polite client's will must not be published", qos=1)
    polite.connect(host, port)
    polite.stop()
    dying = Peer("paho-will-dies-31", mqtt.MQTTv31, threaded=False)
    dying.client.will_set("paho/will", b"dying client's will", qos=1, retain=False)
    dying.connect(host, port)
    sock = dying.client.socket()
    sock.shutdown(socket.SHUT_RDWR)  # no DISCONNECT: the broker sees the connection lost
    sock.close()
    a.wait_for_payload("paho/will", b"dying client's will")
    b.publish("paho/will", b"will-check-end", 1)
    a.wait_for_payload("paho/will", b"will-check-end")
    expect_equal("will published on abnormal disconnect only",
                 a.messages_on("paho/will"),
                 [("paho/will", 1, False, b"dying client's will"),
                  ("paho/will", 1, False, b"will-check-end")])

    a.stop()
    b.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    try:
        run(args.host, args.port)
    except CheckFailed as e:
        print(f"FAIL: {e}", flush=True)
        return 1
    except Exception as e:  # connection refused, socket errors, ...
        print(f"FAIL: unexpected {type(e).__name__}: {e}", flush=True)
        raise
    print("PASS: all paho-mqtt checks matched", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
