"""paho-mqtt over WebSocket against a starling listener: connect, subscribe, publish at QoS 1,
receive the message back. Usage: paho_ws.py PORT [CA_FILE] (with a CA file: wss).

Prints OK and exits 0 on success; prints what went wrong and exits 1 otherwise."""

import sys
import threading

import paho.mqtt.client as mqtt

port = int(sys.argv[1])
ca = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None
got = threading.Event()
subscribed = threading.Event()
result = {}


def on_connect(client, userdata, flags, reason_code, properties=None):
    result["connack"] = str(reason_code)
    client.subscribe("paho/ws/#", qos=1)


def on_subscribe(client, userdata, mid, reason_codes, properties=None):
    result["suback"] = [str(c) for c in reason_codes]
    subscribed.set()


def on_message(client, userdata, msg):
    result["message"] = (msg.topic, msg.payload)
    got.set()


client = mqtt.Client(
    mqtt.CallbackAPIVersion.VERSION2,
    client_id="paho-ws",
    transport="websockets",
    protocol=mqtt.MQTTv311,
)
client.ws_set_options(path="/mqtt")
if ca:
    client.tls_set(ca_certs=ca)
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect("127.0.0.1", port, keepalive=30)
client.loop_start()
if not subscribed.wait(10):
    print("no SUBACK", result)
    sys.exit(1)
client.publish("paho/ws/1", b"hello over websocket", qos=1)
if not got.wait(10):
    print("no message", result)
    sys.exit(1)
client.disconnect()
client.loop_stop()
if result["message"] != ("paho/ws/1", b"hello over websocket"):
    print("wrong message", result)
    sys.exit(1)
print("OK", result["connack"], result["suback"])
