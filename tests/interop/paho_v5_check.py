#!/usr/bin/env python3
"""MQTT 5 interoperability check of a Starling broker with the paho-mqtt Python client.

Run by tests/interop/main.rs against a broker it starts:

    python3 paho_v5_check.py --host 127.0.0.1 --port 1883

A subscriber and a publisher, both speaking MQTT 5 (protocol=MQTTv5), exchange QoS 0, 1 and 2
messages; the subscriber must receive each once, in order, at its QoS, with the publisher's
User Properties. A client with an empty client id must be given one in the CONNACK. Exit
status 0 when everything matched; otherwise a line starting with "FAIL:" says what differed and
the status is 1 (2 for a setup error). Works with paho-mqtt 1.5+ and 2.x.
"""

import argparse
import queue
import sys
import time

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.properties import Properties
    from paho.mqtt.packettypes import PacketTypes
except ImportError as e:  # pragma: no cover - the Rust test gates on this import
    print(f"FAIL: cannot import paho.mqtt: {e}", flush=True)
    sys.exit(2)

TIMEOUT = 10.0


def new_client(client_id):
    if hasattr(mqtt, "CallbackAPIVersion"):
        return mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
    return mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5)


def connect(host, port, client_id):
    """Connects and returns (client, CONNACK properties, message queue)."""
    c = new_client(client_id)
    connacks = queue.Queue()
    messages = queue.Queue()
    subacks = queue.Queue()

    def on_connect(client, userdata, flags, reason, properties=None):
        connacks.put((reason, properties))

    def on_message(client, userdata, msg):
        messages.put(msg)

    def on_subscribe(client, userdata, mid, reasons, properties=None):
        subacks.put(reasons)

    c.on_connect = on_connect
    c.on_message = on_message
    c.on_subscribe = on_subscribe
    c.connect(host, port, keepalive=30)
    c.loop_start()
    try:
        reason, props = connacks.get(timeout=TIMEOUT)
    except queue.Empty:
        print(f"FAIL: {client_id!r}: no CONNACK", flush=True)
        sys.exit(1)
    if getattr(reason, "value", reason) != 0:
        print(f"FAIL: {client_id!r}: CONNACK {reason}", flush=True)
        sys.exit(1)
    return c, props, messages, subacks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    a = ap.parse_args()

    _, props, _, _ = connect(a.host, a.port, "")
    assigned = getattr(props, "AssignedClientIdentifier", None)
    if not assigned:
        print(f"FAIL: no Assigned Client Identifier for an empty client id: {props}", flush=True)
        return 1

    sub, _, messages, subacks = connect(a.host, a.port, "paho5-sub")
    sub.subscribe("paho5/#", qos=2)
    try:
        subacks.get(timeout=TIMEOUT)
    except queue.Empty:
        print("FAIL: no SUBACK", flush=True)
        return 1

    pub, _, _, _ = connect(a.host, a.port, "paho5-pub")
    for qos in (0, 1, 2):
        p = Properties(PacketTypes.PUBLISH)
        p.UserProperty = [("k", f"v{qos}"), ("k", "again")]
        info = pub.publish(f"paho5/q{qos}", f"m{qos}".encode(), qos=qos, properties=p)
        info.wait_for_publish(timeout=TIMEOUT)

    got = []
    deadline = time.monotonic() + TIMEOUT
    while len(got) < 3 and time.monotonic() < deadline:
        try:
            got.append(messages.get(timeout=0.2))
        except queue.Empty:
            pass
    if len(got) != 3:
        print(f"FAIL: received {len(got)} of 3 messages", flush=True)
        return 1
    got.sort(key=lambda m: m.topic)
    for qos, m in enumerate(got):
        want = (f"paho5/q{qos}", qos, f"m{qos}".encode())
        have = (m.topic, m.qos, m.payload)
        if have != want:
            print(f"FAIL: received {have}, expected {want}", flush=True)
            return 1
        users = getattr(m.properties, "UserProperty", None)
        if users != [("k", f"v{qos}"), ("k", "again")]:
            print(f"FAIL: {m.topic}: User Properties {users}", flush=True)
            return 1
    print("PASS: all paho-mqtt MQTT 5 checks matched", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
