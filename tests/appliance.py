#!/usr/bin/python3
"""An appliance written outside Rust, for the MQTT bridge's end-to-end tests.

It pairs with the hub over the admin HTTP API, connects to the MQTT broker with the credentials
the hub hands out, announces itself (status, retained state, an event), sends one signed spend
request and prints the hub's answer as one JSON line on stdout.

Runs under Debian's /usr/bin/python3 with python3-paho-mqtt (1.6 API) and python3-nacl
(packaging/setup-dev.sh installs both). Exit status: 0 when the expected answer arrived (a
spend/result, or with --bad-signature an error), 1 otherwise, with a one-line reason on stderr.

The signature is ed25519 over the ASCII tag `machinomy-spend-request-v1` followed by, for each
of device id, request_id, amount (the decimal string sent), target kind (`payee` or `service`),
target value, memo and body (empty if absent), a 4-byte big-endian length and the UTF-8 bytes.
"""

import argparse
import json
import queue
import sys
import time
import urllib.error
import urllib.request

import nacl.signing
import paho.mqtt.client as mqtt

DOMAIN_TAG = b"machinomy-spend-request-v1"
# CONNACK return codes (MQTT 3.1.1) that mean "not (yet) allowed": the device may have been
# paired a moment ago and the broker not reloaded yet, so these are retried until the deadline.
RETRIED_CONNACK = (4, 5)  # bad username or password, not authorised
SUBACK_FAILURE = 128


class Failure(Exception):
    """A reason to give up: printed as one line on stderr, exit status 1."""


def canonical_bytes(device, request_id, amount, kind, target, memo, body):
    out = bytearray(DOMAIN_TAG)
    for field in (device, request_id, amount, kind, target, memo, body):
        data = field.encode("utf-8")
        out += len(data).to_bytes(4, "big")
        out += data
    return bytes(out)


def spend_request(key, args):
    """The spend request's JSON object, signed (or, with --bad-signature, with one byte flipped)."""
    kind, target = ("payee", args.payee) if args.payee is not None else ("service", args.service)
    body = args.body if args.body is not None else ""
    message = canonical_bytes(args.device, args.request_id, args.amount, kind, target, args.memo, body)
    signature = bytearray(key.sign(message).signature)
    if args.bad_signature:
        signature[0] ^= 0x01
    request = {"request_id": args.request_id, "amount": args.amount, kind: target, "memo": args.memo}
    if args.body is not None:
        request["body"] = args.body
    request["signature"] = signature.hex()
    return request


def one_line(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def pair(args, key):
    """POST {api}/api/v1/devices; returns the MQTT (username, password) the hub hands out."""
    url = args.api.rstrip("/") + "/api/v1/devices"
    body = json.dumps({"id": args.device, "public_key": key.verify_key.encode().hex()}).encode()
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Authorization": "Bearer " + args.token, "Content-Type": "application/json"},
    )
    # The hub is on loopback: never go through a proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=args.timeout) as response:
            status, text = response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:
        raise Failure(f"pairing: POST {url} failed: {e}")
    if status != 201:
        raise Failure(f"pairing: POST {url} answered {status}: {text.strip()}")
    try:
        credentials = json.loads(text)["credentials"]
        return str(credentials["username"]), str(credentials["password"])
    except (ValueError, KeyError, TypeError) as e:
        raise Failure(f"pairing: unexpected answer ({e!r}): {text.strip()}")


class Connection:
    """One MQTT 3.1.1 session; paho's network thread feeds two queues."""

    def __init__(self, args, username, password):
        self.args = args
        self.acks = queue.Queue()
        self.messages = queue.Queue()
        self.status_topic = f"machinomy/{args.device}/status"
        client = mqtt.Client(client_id=args.device, clean_session=True, protocol=mqtt.MQTTv311)
        client.username_pw_set(username, password)
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        client.on_connect = lambda _c, _u, _flags, rc: self.acks.put(("connack", rc))
        client.on_subscribe = lambda _c, _u, mid, granted: self.acks.put(("suback", mid, granted))
        client.on_disconnect = lambda _c, _u, rc: self.acks.put(("disconnect", rc))
        client.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, msg.payload))
        self.client = client

    def connect(self, deadline):
        """Connects, retrying a refused login until `deadline` (the broker may not know us yet)."""
        last = "no attempt"
        while True:
            try:
                self.client.connect(self.args.broker_host, self.args.broker_port, keepalive=30)
            except OSError as e:
                raise Failure(f"cannot reach the broker at {self.args.broker_host}:{self.args.broker_port}: {e}")
            self.client.loop_start()
            ack = self._next_ack("connack", deadline)
            if ack[1] == 0:
                return
            last = mqtt.connack_string(ack[1])
            self.client.disconnect()
            self.client.loop_stop()
            if ack[1] not in RETRIED_CONNACK or time.monotonic() >= deadline:
                raise Failure(f"the broker refused the connection: {last}")
            time.sleep(0.1)  # a retry interval, not a wait for something to happen
            self.acks = queue.Queue()

    def _next_ack(self, kind, deadline):
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Failure(f"timed out after {self.args.timeout} s waiting for {kind}")
            try:
                ack = self.acks.get(timeout=remaining)
            except queue.Empty:
                continue
            if ack[0] == kind:
                return ack
            if ack[0] == "disconnect":
                raise Failure(f"the broker closed the connection while waiting for {kind} ({ack[1]})")

    def publish(self, topic, payload, retain, deadline):
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise Failure(f"cannot publish to {topic}: {mqtt.error_string(info.rc)}")
        info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
        if not info.is_published():
            raise Failure(f"no PUBACK for {topic} within {self.args.timeout} s")

    def subscribe(self, topics, deadline):
        rc, mid = self.client.subscribe([(t, 1) for t in topics])
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise Failure(f"cannot subscribe: {mqtt.error_string(rc)}")
        while True:
            ack = self._next_ack("suback", deadline)
            if ack[1] == mid:
                break
        if SUBACK_FAILURE in ack[2]:
            raise Failure(f"the broker refused the subscription to {topics}: {ack[2]}")

    def next_message(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            return self.messages.get(timeout=remaining)
        except queue.Empty:
            return None

    def close(self, deadline):
        self.publish(self.status_topic, "offline", True, deadline)
        self.client.disconnect()
        self.client.loop_stop()


def await_answer(connection, args):
    """The JSON object answering our request: a spend/result, or (with --bad-signature) an error."""
    result_topic = f"machinomy/{args.device}/spend/result"
    error_topic = f"machinomy/{args.device}/error"
    deadline = time.monotonic() + args.timeout
    while True:
        message = connection.next_message(deadline)
        if message is None:
            expected = "an error" if args.bad_signature else "a spend/result"
            raise Failure(f"timed out after {args.timeout} s waiting for {expected} for {args.request_id}")
        topic, payload = message
        text = payload.decode("utf-8", "replace")
        try:
            answer = json.loads(text)
        except ValueError:
            raise Failure(f"{topic}: not JSON: {text}")
        if not isinstance(answer, dict):
            raise Failure(f"{topic}: not a JSON object: {text}")
        request_id = answer.get("request_id")
        if topic == result_topic and request_id == args.request_id:
            if args.bad_signature:
                raise Failure(f"the hub accepted a request with a bad signature: {one_line(answer)}")
            return answer
        if topic == error_topic and request_id in (args.request_id, None):
            if not args.bad_signature:
                raise Failure(f"the hub answered with an error: {one_line(answer)}")
            return answer


def run(args):
    if args.key_seed is not None:
        key = nacl.signing.SigningKey(bytes.fromhex(args.key_seed))
    else:
        key = nacl.signing.SigningKey.generate()
    if args.sign_only:
        print(one_line({"public_key": key.verify_key.encode().hex(), "request": spend_request(key, args)}))
        return
    if args.password is not None:
        username, password = args.device, args.password
    else:
        username, password = pair(args, key)

    prefix = f"machinomy/{args.device}"
    connection = Connection(args, username, password)
    deadline = time.monotonic() + args.timeout
    connection.connect(deadline)
    connection.publish(f"{prefix}/status", "online", True, deadline)
    connection.publish(f"{prefix}/state", json.dumps({"temperature": 21.5}), True, deadline)
    connection.publish(f"{prefix}/event/door", json.dumps({"open": True}), False, deadline)
    connection.subscribe([f"{prefix}/spend/result", f"{prefix}/error"], deadline)
    connection.publish(f"{prefix}/spend/request", json.dumps(spend_request(key, args)), False, deadline)
    answer = await_answer(connection, args)
    connection.close(time.monotonic() + args.timeout)
    print(one_line(answer), flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="A test appliance: pairs with the hub, talks MQTT, sends one signed spend request."
    )
    parser.add_argument("--api", help="the hub's admin API, e.g. http://127.0.0.1:8080")
    parser.add_argument("--token", help="the hub's admin token (for pairing)")
    parser.add_argument("--broker-host", default="127.0.0.1")
    parser.add_argument("--broker-port", type=int, default=1883, help="default 1883, the hub's embedded broker")
    parser.add_argument("--device", required=True, help="the device id (also its MQTT username and client id)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--payee", help="the payee's public key (64 hex)")
    target.add_argument("--service", help="a service name, instead of --payee")
    parser.add_argument("--amount", required=True, help="base units, sent as this exact decimal string")
    parser.add_argument("--memo", default="milk")
    parser.add_argument("--body", help="optional UTF-8 text sent with the request")
    parser.add_argument("--request-id", default="r1")
    parser.add_argument("--bad-signature", action="store_true", help="flip one signature byte; expect an error")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait at each step (default 20)")
    parser.add_argument("--key-seed", help="64 hex: a fixed ed25519 seed instead of a fresh key")
    parser.add_argument("--password", help="skip pairing: log in as the device with this MQTT password")
    parser.add_argument("--sign-only", action="store_true", help="print the public key and signed request; no I/O")
    args = parser.parse_args(argv)
    if not args.sign_only:
        missing = []
        if args.password is None:
            missing += [flag for flag, value in (("--api", args.api), ("--token", args.token)) if value is None]
        if missing:
            parser.error("missing " + ", ".join(missing))
    if args.key_seed is not None:
        try:
            if len(bytes.fromhex(args.key_seed)) != 32:
                raise ValueError
        except ValueError:
            parser.error("--key-seed must be 64 hex digits")
    return args


def main(argv):
    args = parse_args(argv)
    try:
        run(args)
    except Failure as e:
        print(f"appliance.py: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # anything unexpected still ends in one line and status 1
        print(f"appliance.py: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
