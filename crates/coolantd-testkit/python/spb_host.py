"""A Sparkplug B primary host application built on pysparkplug (an independent
implementation from PyPI), driven by tests/sparkplug_host.rs.

It publishes its STATE (`spBv1.0/STATE/<host_id>`, retained JSON, with a will saying
offline), subscribes to the group, decodes every message with pysparkplug and prints one
JSON line per message on stdout. It also listens to coolantd's native command replies, so
the test can compare the Sparkplug and JSON paths. It reads requests from stdin, one JSON
object per line:
  {"ncmd": [{"name": ..., "datatype": "DOUBLE", "value": ...}]}  publish an NCMD
  {"dcmd": "<device>", "metrics": [...]}                           publish a DCMD
  {"state": true|false}                                            publish STATE
  {"json": {...}, "topic": "..."}                                  publish raw JSON (native path)
Output lines: {"type": "ready"}, {"type": "NBIRTH"|..., "device": ..., "seq": ...,
"metrics": [...]}, {"type": "reply", "payload": ...}, {"type": "error", ...}.
"""

import argparse
import json
import sys
import threading
import traceback

import pysparkplug as psp
from pysparkplug._protobuf import Payload as PbPayload

LOCK = threading.Lock()


def emit(obj):
    with LOCK:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def metric_json(m):
    return {
        "name": m.name,
        "alias": m.alias,
        "datatype": m.datatype.name,
        "value": m.value,
        "is_null": m.is_null,
    }


def units(raw):
    """engUnit properties from the raw protobuf (pysparkplug's Metric drops properties)."""
    pb = PbPayload.FromString(raw)
    out = {}
    for m in pb.metrics:
        if m.HasField("properties"):
            props = dict(zip(m.properties.keys, m.properties.values))
            if "engUnit" in props:
                out[m.name] = props["engUnit"].string_value
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--host-id", required=True)
    ap.add_argument("--reply-topic", required=True)
    args = ap.parse_args()

    state_topic = psp.Topic(
        message_type=psp.MessageType.STATE, sparkplug_host_id=args.host_id
    )

    def state_message(online):
        return psp.Message(
            topic=state_topic,
            payload=psp.State(timestamp=psp.get_current_timestamp(), online=online),
            qos=psp.QoS.AT_LEAST_ONCE,
            retain=True,
        )

    client = psp.Client(client_id=f"spb-host-{args.host_id}")
    client.set_will(state_message(False))
    node_of = {}

    def on_message(_client, message):
        try:
            t = message.topic
            kind = str(t.message_type)
            p = message.payload
            line = {
                "type": kind,
                "node": t.edge_node_id,
                "device": t.device_id,
            }
            if isinstance(p, psp.NDeath):
                line["bd_seq"] = p.bd_seq_metric.value
            elif kind in ("NCMD", "DCMD", "STATE"):
                return
            else:
                line["seq"] = getattr(p, "seq", None)
                line["timestamp"] = getattr(p, "timestamp", None)
                line["metrics"] = [metric_json(m) for m in getattr(p, "metrics", ())]
            node_of[t.edge_node_id] = True
            emit(line)
        except Exception as e:  # a decode failure is what the test is looking for
            emit({"type": "error", "topic": str(message.topic), "error": repr(e),
                  "trace": traceback.format_exc()})

    raw_births = {}

    def on_raw(_c, _u, mqtt_message):
        # The births' units, read from the protobuf itself.
        if "/NBIRTH/" in mqtt_message.topic or "/DBIRTH/" in mqtt_message.topic:
            raw_births[mqtt_message.topic] = units(mqtt_message.payload)
            emit({"type": "units", "topic": mqtt_message.topic,
                  "units": raw_births[mqtt_message.topic]})

    def on_reply(_c, _u, mqtt_message):
        emit({"type": "reply", "payload": json.loads(mqtt_message.payload)})

    connected = threading.Event()

    def on_connect(c):
        c.publish(state_message(True))
        connected.set()

    client.subscribe(
        psp.Topic(group_id=args.group, message_type=psp.MULTI_LEVEL_WILDCARD),
        psp.QoS.AT_LEAST_ONCE,
        on_message,
    )
    # The raw paho client for the units and the native replies.
    paho = client._client
    paho.message_callback_add(f"spBv1.0/{args.group}/+/+", on_raw)
    paho.message_callback_add(f"spBv1.0/{args.group}/+/+/+", on_raw)
    paho.message_callback_add(args.reply_topic, on_reply)
    client.connect("127.0.0.1", port=args.port, callback=on_connect)
    if not connected.wait(10):
        emit({"type": "error", "error": "no connection to the broker"})
        return 1
    paho.subscribe(args.reply_topic, 1)
    emit({"type": "ready"})

    for raw in sys.stdin:
        raw = raw.strip()
        if not raw:
            continue
        req = json.loads(raw)
        now = psp.get_current_timestamp()
        if "state" in req:
            client.publish(state_message(bool(req["state"])))
        elif "json" in req:
            paho.publish(req["topic"], json.dumps(req["json"]), qos=1)
        elif "ncmd" in req or "dcmd" in req:
            metrics = tuple(
                psp.Metric(
                    timestamp=now,
                    name=m["name"],
                    datatype=psp.DataType[m["datatype"]],
                    value=m["value"],
                )
                for m in req.get("ncmd") or req["metrics"]
            )
            if "ncmd" in req:
                topic = psp.Topic(group_id=args.group, message_type=psp.MessageType.NCMD,
                                  edge_node_id=req["node"])
                payload = psp.NCmd(timestamp=now, metrics=metrics)
            else:
                topic = psp.Topic(group_id=args.group, message_type=psp.MessageType.DCMD,
                                  edge_node_id=req["node"], device_id=req["dcmd"])
                payload = psp.DCmd(timestamp=now, metrics=metrics)
            client.publish(psp.Message(topic=topic, payload=payload,
                                       qos=psp.QoS.AT_MOST_ONCE, retain=False),
                           include_dtypes=True)
        emit({"type": "sent", "request": req})
    client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
