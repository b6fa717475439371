#!/usr/bin/env python3
"""Interop scenarios for Spate's gRPC endpoint (apache.rocketmq.v2.MessagingService),
driven only through the public API of the official rocketmq-python-client 5.1.2.

Prints exactly one JSON line on stdout ({"ok": true|false, ...}) and exits
0 on success, 1 on any failed check or client error, 2 on bad arguments,
3 when the whole-script watchdog fires. Use a fresh topic and consumer group
per run: every message that is not expected by the scenario counts as a failure.

Example:
  python interop.py --endpoint 127.0.0.1:8081 --topic PyT1 --group PyG1 \
      --count 20 --scenario send-receive
"""

import argparse
import json
import logging
import math
import os
import random
import re
import sys
import threading
import time
import uuid

SCENARIOS = (
    "send-receive",
    "redeliver",
    "fifo",
    "delay",
    "transaction",
    "push",
    "send-only",
    "receive-only",
)

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_WATCHDOG = 3

# The client validates topic and group names against this pattern (rocketmq/v5/util/misc.py).
NAME_PATTERN = re.compile(r"^[%a-zA-Z0-9_-]+$")
CLIENT_LOG = os.path.expanduser("~/logs/rocketmq_python/rocketmq_client.log")

_emit_lock = threading.Lock()
_emitted = False


class Fail(Exception):
    """A failed check or client error; the message is reported as the error."""


def emit_and_exit(result, code):
    """Print the single JSON result line (once, whoever gets here first) and exit hard.

    os._exit is used so that client threads (gRPC I/O loop, schedulers, executors)
    can never keep the process alive."""
    global _emitted
    with _emit_lock:
        if not _emitted:
            _emitted = True
            if code != EXIT_OK and result.get("error"):
                sys.stderr.write(f"interop.py: FAILED ({result.get('scenario')}): {result['error']}\n")
                sys.stderr.write(f"interop.py: client log: {CLIENT_LOG}\n")
            sys.stdout.write(json.dumps(result, sort_keys=True, default=str) + "\n")
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def describe_error(exc):
    """One-line description of a client or gRPC exception."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    if callable(code) and callable(details):  # grpc.aio.AioRpcError
        try:
            return f"gRPC {code().name}: {' '.join(str(details()).split())}"
        except Exception:
            pass
    text = " ".join(str(exc).split()) or repr(exc)
    return f"{type(exc).__name__}: {text}"


def hexprefix(data, n=24):
    data = bytes(data or b"")
    return data[:n].hex() + ("..." if len(data) > n else "") + f" ({len(data)} bytes)"


class Ctx:
    def __init__(self, args, api):
        self.args = args
        self.api = api
        self.phase = "init"
        self.started = time.time()
        self.receive_calls = 0
        self.acks = 0
        self.clients = []
        self.result = {
            "scenario": args.scenario,
            "endpoint": args.endpoint,
            "topic": args.topic,
            "group": args.group,
            "count": args.count,
        }

    # ----- clients -----

    def config(self):
        api = self.api
        return api.ClientConfiguration(
            self.args.endpoint,
            api.Credentials(self.args.ak, self.args.sk),
            self.args.namespace,
            self.args.request_timeout,
        )

    def start_producer(self, checker=None):
        self.phase = "starting producer"
        producer = self.api.Producer(self.config(), [self.args.topic], checker, tls_enable=self.args.tls)
        try:
            producer.startup()
        except Exception as e:
            raise Fail(f"producer startup failed: {describe_error(e)}")
        self.clients.append(producer)
        return producer

    def start_consumer(self, tag_expression):
        self.phase = "starting simple consumer"
        api = self.api
        subscription = {self.args.topic: api.FilterExpression(tag_expression)}
        consumer = api.SimpleConsumer(
            self.config(),
            self.args.group,
            subscription,
            await_duration=self.args.await_secs,
            tls_enable=self.args.tls,
        )
        try:
            consumer.startup()
        except Exception as e:
            raise Fail(f"simple consumer startup failed: {describe_error(e)}")
        self.clients.append(consumer)
        return consumer

    def shutdown_all(self):
        """Shut clients down (exercises NotifyClientTermination); bounded, never fails the run."""
        outcome = {}

        def run():
            for client in reversed(self.clients):
                name = type(client).__name__
                try:
                    client.shutdown()
                    outcome[name] = "ok"
                except Exception as e:
                    outcome[name] = describe_error(e)

        t = threading.Thread(target=run, name="interop-shutdown", daemon=True)
        t.start()
        t.join(self.args.shutdown_timeout)
        if t.is_alive():
            outcome["timeout"] = f"shutdown still running after {self.args.shutdown_timeout}s"
        return outcome

    # ----- operations -----

    def send(self, producer, message, what, transaction=None):
        try:
            if transaction is None:
                return producer.send(message)
            return producer.send(message, transaction)
        except Exception as e:
            raise Fail(f"send of {what} failed: {describe_error(e)}")

    def receive(self, consumer, invisible):
        self.receive_calls += 1
        try:
            return consumer.receive(self.args.batch, invisible)
        except Exception as e:
            raise Fail(f"receive (call #{self.receive_calls}) failed: {describe_error(e)}")

    def ack(self, consumer, message, what):
        try:
            consumer.ack(message)
            self.acks += 1
        except Exception as e:
            raise Fail(f"ack of {what} (message_id {message.message_id}) failed: {describe_error(e)}")

    def new_message(self, body, tag=None):
        m = self.api.Message()
        m.topic = self.args.topic
        m.body = body
        if tag:
            m.tag = tag
        return m


def common_checks(ctx, m, problems, what):
    if m.corrupted:
        problems.append(f"{what}: body digest check failed in the client (message.corrupted)")
    if m.topic != ctx.args.topic:
        problems.append(f"{what}: topic {m.topic!r} != {ctx.args.topic!r}")
    if not m.receipt_handle:
        problems.append(f"{what}: no receipt_handle")


def fail_on(problems, header):
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""
        raise Fail(f"{header}: {shown}{more}")


def quiet_period(ctx, consumer, min_secs, label, describe):
    """Receive for at least `min_secs` seconds (and at least --quiet-receives calls, one
    long poll each); any message that shows up is a failure. Messages are acked."""
    calls = 0
    end = time.time() + min_secs
    while calls < ctx.args.quiet_receives or time.time() < end:
        if ctx.args.quiet_receives == 0 and min_secs <= 0:
            break
        ctx.phase = f"quiet check ({label})"
        calls += 1
        msgs = ctx.receive(consumer, ctx.args.invisible)
        if msgs:
            found = [describe(m) for m in msgs]
            for m in msgs:
                try:
                    consumer.ack(m)
                except Exception:
                    pass
            raise Fail(f"unexpected message(s) during {label}: " + "; ".join(found[:10]))
    return calls


def describe_msg(m):
    return (f"message_id={m.message_id} tag={m.tag!r} attempt={m.delivery_attempt} "
            f"body={hexprefix(m.body)}")


# ---------------------------------------------------------------- send-receive

def make_body(run, i):
    """Distinct, deterministic bodies mixing text, every byte value, NULs, invalid UTF-8
    and multi-KB payloads."""
    head = f"spate-py|{run}|{i:05d}|".encode()
    kind = i % 6
    if kind == 0:
        return head + f"plain ascii body number {i}".encode()
    if kind == 1:
        return head + bytes(range(256)) + b"\x00"  # all byte values, ends in NUL
    if kind == 2:
        return head + random.Random(i).randbytes(2048 + 997 * (i % 7))  # 2-8 KB binary
    if kind == 3:
        # starts with NUL, invalid UTF-8 sequences throughout
        return b"\x00" + head + b"\xff\xfe\x00\x80\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x90\x28\xbc\x00" * 8
    if kind == 4:
        return head + ("multi-byte UTF-8 \u00fc\u00ef \u2713 \u5024 \U0001F680 " * 120).encode()  # ~4 KB
    return head + b"\x00" * 3000 + bytes([i % 256])  # mostly NUL bytes


def scenario_send_receive(ctx):
    args = ctx.args
    run = uuid.uuid4().hex[:12]
    tag = args.tag or "TagA"
    decoy_tag = tag + "-decoy"
    expected = []
    for i in range(args.count):
        expected.append({
            "i": i,
            "body": make_body(run, i),
            "keys": {f"key-{run}-{i}", f"idx-{i}"},
            "props": {"idx": str(i), "run": run, "note": "v\u00e4rde \u2713 \u5024 / = ; & %"},
        })
    by_body = {e["body"]: e for e in expected}
    if len(by_body) != len(expected):
        raise Fail("internal: bodies are not distinct")

    consumer = ctx.start_consumer(tag)
    producer = ctx.start_producer()

    ctx.phase = "sending"
    receipts = {}
    client_ids_kept = 0
    for e in expected:
        m = ctx.new_message(e["body"], tag)
        for k in sorted(e["keys"]):
            m.keys = k  # the client's keys setter adds one key per assignment
        for k, v in e["props"].items():
            m.add_property(k, v)
        r = ctx.send(producer, m, f"message {e['i']}")
        if not r.message_id:
            raise Fail(f"send of message {e['i']}: empty message_id in SendResultEntry")
        receipts[e["i"]] = r.message_id
        client_ids_kept += int(r.message_id == m.message_id)
    for j in range(args.decoys):
        body = f"spate-py-decoy|{run}|{j}".encode()
        ctx.send(producer, ctx.new_message(body, decoy_tag), f"decoy {j}")
    ctx.result["sent"] = args.count
    ctx.result["decoys_sent"] = args.decoys
    ctx.result["receipt_id_is_client_id"] = client_ids_kept == args.count

    ctx.phase = "receiving"
    got = {}
    problems = []
    attempts = {}
    types = set()
    deadline = time.time() + args.recv_timeout
    while len(got) < args.count and time.time() < deadline:
        for m in ctx.receive(consumer, args.invisible):
            what = f"message_id {m.message_id}"
            common_checks(ctx, m, problems, what)
            e = by_body.get(m.body)
            if e is None:
                if (m.body or b"").startswith(b"spate-py-decoy|"):
                    problems.append(f"{what}: tag filter {tag!r} let through a {decoy_tag!r} message")
                else:
                    problems.append(f"{what}: unexpected body {hexprefix(m.body)} (not sent by this run, or altered)")
                ctx.ack(consumer, m, what)
                continue
            i = e["i"]
            what = f"message {i} ({m.message_id})"
            if i in got:
                problems.append(f"{what}: delivered twice (attempt {m.delivery_attempt})")
            got[i] = m
            attempts[str(m.delivery_attempt)] = attempts.get(str(m.delivery_attempt), 0) + 1
            types.add(m.message_type)
            if m.tag != tag:
                problems.append(f"{what}: tag {m.tag!r} != {tag!r}")
            if set(m.keys) != e["keys"]:
                problems.append(f"{what}: keys {sorted(m.keys)} != {sorted(e['keys'])}")
            if dict(m.properties) != e["props"]:
                problems.append(f"{what}: user properties {dict(m.properties)!r} != {e['props']!r}")
            if m.message_id != receipts[i]:
                problems.append(f"{what}: message_id differs from send receipt {receipts[i]}")
            ctx.ack(consumer, m, what)
        fail_on(problems, "received messages do not match")
    missing = [i for i in range(args.count) if i not in got]
    if missing:
        raise Fail(f"{len(missing)} of {args.count} messages not received within {args.recv_timeout}s "
                   f"(missing indexes {missing[:20]})")
    ctx.result["received"] = len(got)
    ctx.result["delivery_attempts"] = attempts
    ctx.result["message_types"] = sorted(types, key=str)
    ctx.result["quiet_receives"] = quiet_period(ctx, consumer, 0, "check for extra or decoy messages", describe_msg)


# ---------------------------------------------------------------- redeliver

def scenario_redeliver(ctx):
    args = ctx.args
    run = uuid.uuid4().hex[:12]
    body = f"spate-py-redeliver|{run}|".encode() + b"\x00\xff\xfe"
    consumer = ctx.start_consumer(args.tag or "*")
    producer = ctx.start_producer()

    ctx.phase = "sending"
    receipt = ctx.send(producer, ctx.new_message(body, args.tag), "the message")
    ctx.result["sent"] = 1

    def take(label, deadline, invisible):
        while time.time() < deadline:
            ctx.phase = f"receiving ({label})"
            msgs = ctx.receive(consumer, invisible)
            if not msgs:
                continue
            t = time.time()
            others = [m for m in msgs if m.body != body]
            if others:
                raise Fail(f"unexpected message(s) on {label}: " + "; ".join(describe_msg(m) for m in others[:5]))
            if len(msgs) > 1:
                raise Fail(f"{label}: the message came {len(msgs)} times in one batch")
            problems = []
            common_checks(ctx, msgs[0], problems, label)
            fail_on(problems, label)
            return msgs[0], t
        raise Fail(f"{label}: message not received within the deadline")

    first, t1 = take("first delivery", time.time() + args.recv_timeout, args.short_invisible)
    if first.message_id != receipt.message_id:
        raise Fail(f"first delivery: message_id {first.message_id} != send receipt {receipt.message_id}")
    if first.delivery_attempt != 1:
        raise Fail(f"first delivery: delivery_attempt is {first.delivery_attempt}, expected 1")

    # Not acked: it must come back once the short invisible duration has passed.
    second, t2 = take("redelivery", t1 + args.short_invisible + args.recv_timeout, args.invisible)
    gap = t2 - t1
    if gap < args.short_invisible - args.slack:
        raise Fail(f"redelivered after {gap:.2f}s, before the invisible duration of {args.short_invisible}s expired")
    if second.message_id != first.message_id:
        raise Fail(f"redelivery: message_id {second.message_id} != first delivery {first.message_id}")
    if second.delivery_attempt != 2:
        raise Fail(f"redelivery: delivery_attempt is {second.delivery_attempt}, expected 2")
    ctx.ack(consumer, second, "the redelivered message")
    ctx.result["received"] = 2
    ctx.result["redelivery_gap_s"] = round(gap, 3)
    ctx.result["receipt_handle_changed"] = first.receipt_handle != second.receipt_handle
    # Once acked it must not come back, even after another invisible period.
    ctx.result["quiet_receives"] = quiet_period(
        ctx, consumer, args.short_invisible + 1, "check that the acked message stays acked", describe_msg)


# ---------------------------------------------------------------- fifo

def scenario_fifo(ctx):
    args = ctx.args
    run = uuid.uuid4().hex[:12]
    groups = [f"fifo-{run}-g{k}" for k in range(args.groups)]
    per_group = {g: 0 for g in groups}
    plan = []
    for i in range(args.count):
        g = groups[i % len(groups)]
        seq = per_group[g]
        per_group[g] += 1
        plan.append((g, seq, f"spate-py-fifo|{g}|{seq:05d}".encode()))
    by_body = {b: (g, s) for g, s, b in plan}

    consumer = ctx.start_consumer(args.tag or "*")
    producer = ctx.start_producer()

    ctx.phase = "sending"
    for g, seq, body in plan:
        m = ctx.new_message(body, args.tag)
        m.message_group = g
        ctx.send(producer, m, f"group {g} seq {seq}")
    ctx.result["sent"] = args.count

    ctx.phase = "receiving"
    order = {g: [] for g in groups}
    problems = []
    seen = set()
    deadline = time.time() + args.recv_timeout
    while len(seen) < args.count and time.time() < deadline:
        for m in ctx.receive(consumer, args.invisible):
            what = f"message_id {m.message_id}"
            common_checks(ctx, m, problems, what)
            key = by_body.get(m.body)
            if key is None:
                problems.append(f"{what}: unexpected body {hexprefix(m.body)}")
            else:
                g, seq = key
                what = f"group {g} seq {seq}"
                if m.message_group != g:
                    problems.append(f"{what}: message_group {m.message_group!r} != {g!r}")
                if m.body in seen:
                    problems.append(f"{what}: delivered again (attempt {m.delivery_attempt})")
                seen.add(m.body)
                order[g].append(seq)
            ctx.ack(consumer, m, what)
        fail_on(problems, "received FIFO messages do not match")
    for g in groups:
        want = list(range(per_group[g]))
        if order[g] != want[:len(order[g])]:
            raise Fail(f"group {g} out of order: received seqs {order[g][:30]}")
    if len(seen) < args.count:
        missing = {g: per_group[g] - len(order[g]) for g in groups if len(order[g]) < per_group[g]}
        raise Fail(f"{args.count - len(seen)} of {args.count} FIFO messages not received within "
                   f"{args.recv_timeout}s (missing per group: {missing})")
    ctx.result["received"] = len(seen)
    ctx.result["groups"] = {g: per_group[g] for g in groups}
    ctx.result["quiet_receives"] = quiet_period(ctx, consumer, 0, "check for extra messages", describe_msg)


# ---------------------------------------------------------------- delay

def scenario_delay(ctx):
    args = ctx.args
    run = uuid.uuid4().hex[:12]
    body = f"spate-py-delay|{run}".encode()
    consumer = ctx.start_consumer(args.tag or "*")
    producer = ctx.start_producer()

    ctx.phase = "sending"
    # The client copies delivery_timestamp into Timestamp.seconds (producer.py), so it
    # must be whole epoch seconds; round up so the delay is at least --delay seconds.
    deliver_at = math.ceil(time.time()) + args.delay
    m = ctx.new_message(body, args.tag)
    m.delivery_timestamp = deliver_at
    t_sent = time.time()
    ctx.send(producer, m, "the delayed message")
    # A second one, due at the same moment, recalled at once: it must never arrive.
    recalled_body = f"spate-py-recalled|{run}".encode()
    mr = ctx.new_message(recalled_body, args.tag)
    mr.delivery_timestamp = deliver_at
    receipt = ctx.send(producer, mr, "the delayed message to recall")
    if not receipt.recall_handle:
        raise Fail("the delayed message's send receipt has no recall_handle")
    ctx.phase = "recalling"
    try:
        recalled_id = producer.recall_message(args.topic, receipt.recall_handle)
    except Exception as e:
        raise Fail(f"RecallMessage failed: {describe_error(e)}")
    ctx.result["recalled"] = str(recalled_id)
    ctx.result["sent"] = 2

    ctx.phase = "receiving"
    deadline = deliver_at + args.recv_timeout
    got = None
    while got is None and time.time() < deadline:
        msgs = ctx.receive(consumer, args.invisible)
        t = time.time()
        for r in msgs:
            if r.body == recalled_body:
                raise Fail(f"the recalled message was delivered: {describe_msg(r)}")
            if r.body != body:
                raise Fail(f"unexpected message: {describe_msg(r)}")
            if got is not None:
                raise Fail("the delayed message came twice in one batch")
            if t < deliver_at - args.slack:
                raise Fail(f"delayed message delivered {deliver_at - t:.2f}s before its delivery time "
                           f"(sent {t_sent:.3f}, deliver_at {deliver_at}, received {t:.3f})")
            problems = []
            common_checks(ctx, r, problems, "delayed message")
            if r.delivery_timestamp is not None and r.delivery_timestamp != deliver_at * 1000:
                problems.append(f"delivery_timestamp {r.delivery_timestamp} ms != {deliver_at * 1000} ms")
            fail_on(problems, "delayed message does not match")
            ctx.ack(consumer, r, "the delayed message")
            got = (r, t)
    if got is None:
        raise Fail(f"delayed message not received within {args.recv_timeout}s after its delivery time")
    r, t = got
    ctx.result["received"] = 1
    ctx.result["delay_requested_s"] = round(deliver_at - t_sent, 3)
    ctx.result["received_after_s"] = round(t - t_sent, 3)
    ctx.result["late_by_s"] = round(t - deliver_at, 3)
    ctx.result["delivery_timestamp_echoed"] = r.delivery_timestamp
    ctx.result["message_type"] = r.message_type
    ctx.result["quiet_receives"] = quiet_period(
        ctx, consumer, 0, "check for duplicates and that the recalled message never arrives", describe_msg)


# ---------------------------------------------------------------- transaction

def scenario_transaction(ctx):
    args = ctx.args
    api = ctx.api
    run = uuid.uuid4().hex[:12]
    commit_body = f"spate-py-tx-commit|{run}".encode()
    rollback_body = f"spate-py-tx-rollback|{run}".encode()
    # Left open by the producer: only the server's check-back resolves it.
    checkback_body = f"spate-py-tx-checkback|{run}".encode()
    checks = []

    class Checker(api.TransactionChecker):
        # Called if the server asks about a half message (check-back); answers consistently.
        def check(self, message):
            commit = message.body in (commit_body, checkback_body)
            verdict = api.TransactionResolution.COMMIT if commit else api.TransactionResolution.ROLLBACK
            checks.append({"message_id": message.message_id,
                           "verdict": api.TransactionResolution.Name(verdict)})
            return verdict

    consumer = ctx.start_consumer(args.tag or "*")
    producer = ctx.start_producer(Checker())

    ctx.phase = "sending half messages"
    tx_commit = producer.begin_transaction()
    r1 = ctx.send(producer, ctx.new_message(commit_body, args.tag), "half message (to commit)", tx_commit)
    tx_rollback = producer.begin_transaction()
    r2 = ctx.send(producer, ctx.new_message(rollback_body, args.tag), "half message (to roll back)", tx_rollback)
    for what, r in (("commit", r1), ("rollback", r2)):
        if not r.transaction_id:
            raise Fail(f"send receipt of the half message to {what} has no transaction_id")
    ctx.result["sent"] = 2

    # Half messages must stay invisible until the transaction ends.
    ctx.result["half_check_receives"] = quiet_period(
        ctx, consumer, 0, "check that half messages are invisible before commit", describe_msg)

    ctx.phase = "ending transactions"
    try:
        tx_commit.commit()
    except Exception as e:
        raise Fail(f"EndTransaction(COMMIT) failed: {describe_error(e)}")
    try:
        tx_rollback.rollback()
    except Exception as e:
        raise Fail(f"EndTransaction(ROLLBACK) failed: {describe_error(e)}")

    ctx.phase = "receiving"
    got = None
    deadline = time.time() + args.recv_timeout
    while got is None and time.time() < deadline:
        for m in ctx.receive(consumer, args.invisible):
            if m.body == rollback_body:
                raise Fail(f"rolled-back message was delivered: {describe_msg(m)}")
            if m.body != commit_body:
                raise Fail(f"unexpected message: {describe_msg(m)}")
            if got is not None:
                raise Fail("committed message came twice in one batch")
            problems = []
            common_checks(ctx, m, problems, "committed message")
            if m.message_id != r1.message_id:
                problems.append(f"message_id {m.message_id} != send receipt {r1.message_id}")
            fail_on(problems, "committed message does not match")
            ctx.ack(consumer, m, "the committed message")
            got = m
    if got is None:
        raise Fail(f"committed message not received within {args.recv_timeout}s")
    ctx.result["received"] = 1
    ctx.result["message_type"] = got.message_type
    ctx.result["quiet_receives"] = quiet_period(
        ctx, consumer, 0, "check that the rolled-back message never appears", describe_msg)

    # A transaction the producer never ends: the server asks the producer
    # (check-back over the Telemetry stream), which commits it.
    ctx.phase = "sending the half message left to check-back"
    tx_open = producer.begin_transaction()
    r3 = ctx.send(producer, ctx.new_message(checkback_body, args.tag), "half message (left open)", tx_open)
    ctx.result["sent"] = 3
    ctx.phase = "receiving the message committed by check-back"
    got = None
    deadline = time.time() + args.recv_timeout
    while got is None and time.time() < deadline:
        for m in ctx.receive(consumer, args.invisible):
            if m.body != checkback_body:
                raise Fail(f"unexpected message while waiting for the check-back: {describe_msg(m)}")
            if m.message_id != r3.message_id:
                raise Fail(f"message_id {m.message_id} != send receipt {r3.message_id}")
            ctx.ack(consumer, m, "the message committed by check-back")
            got = m
    if got is None:
        raise Fail(f"the half message left open was not committed by check-back within {args.recv_timeout}s; checks: {checks}")
    if not any(c["message_id"] == r3.message_id for c in checks):
        raise Fail(f"the open transaction was delivered without a check-back to this producer: {checks}")
    ctx.result["received"] = 2
    ctx.result["check_backs"] = checks


# ---------------------------------------------------------------- push

def scenario_push(ctx):
    """A push consumer consumes --count messages, each exactly once. The
    listener holds the first one for --hold seconds, longer than the
    broker's invisible time for push consumers when the test sets it
    short: only the broker renewing the message (while the client's
    Telemetry stream lives) keeps it from coming back meanwhile."""
    args = ctx.args
    api = ctx.api
    run = uuid.uuid4().hex[:12]
    bodies = [f"spate-py-push-{i}|{run}".encode() for i in range(args.count)]
    held = bodies[0]
    lock = threading.Lock()
    seen = {}
    attempts = {}

    class Listener(api.MessageListener):
        def consume(self, message):
            with lock:
                seen[message.body] = seen.get(message.body, 0) + 1
                a = message.delivery_attempt or 0
                attempts[a] = attempts.get(a, 0) + 1
            if message.body == held:
                time.sleep(args.hold)
            return api.ConsumeResult.SUCCESS

    producer = ctx.start_producer()
    ctx.phase = "sending"
    for i, b in enumerate(bodies):
        ctx.send(producer, ctx.new_message(b, args.tag), f"message {i}")
    ctx.result["sent"] = len(bodies)

    ctx.phase = "starting push consumer"
    subscription = {args.topic: api.FilterExpression(args.tag or "*")}
    consumer = api.PushConsumer(ctx.config(), args.group, Listener(), subscription, tls_enable=args.tls)
    try:
        consumer.startup()
    except Exception as e:
        raise Fail(f"push consumer startup failed: {describe_error(e)}")
    ctx.clients.append(consumer)

    ctx.phase = "consuming"
    deadline = time.time() + args.recv_timeout
    while time.time() < deadline:
        with lock:
            if len(seen) == len(bodies):
                break
        time.sleep(0.1)
    # Past the hold and a few invisible times more: nothing may come again.
    ctx.phase = "quiet check (each message once, the held one not redelivered)"
    time.sleep(args.hold + 2)
    with lock:
        missing = [b for b in bodies if b not in seen]
        twice = {b.decode(): n for b, n in seen.items() if n > 1}
        unexpected = [b for b in seen if b not in set(bodies)]
        ctx.result["received"] = len(seen)
        ctx.result["deliveries"] = sum(seen.values())
        ctx.result["delivery_attempts"] = {str(k): v for k, v in sorted(attempts.items())}
    if missing:
        raise Fail(f"{len(missing)} of {len(bodies)} messages never consumed, e.g. {missing[0]!r}")
    if unexpected:
        raise Fail(f"unexpected messages consumed: {unexpected[:3]}")
    if twice:
        raise Fail(f"messages consumed more than once (the held one was not kept invisible?): {twice}")


# ---------------------------------------------------------------- cross-protocol

def cross_body(i):
    return f"spate-cross-{i}".encode()


def scenario_send_only(ctx):
    args = ctx.args
    producer = ctx.start_producer()
    ctx.phase = "sending"
    ids = []
    for i in range(args.count):
        r = ctx.send(producer, ctx.new_message(cross_body(i), args.tag), f"message {i}")
        ids.append(r.message_id)
    ctx.result["sent"] = args.count
    if args.count <= 1000:
        ctx.result["message_ids"] = ids


def scenario_receive_only(ctx):
    args = ctx.args
    consumer = ctx.start_consumer(args.tag or "*")
    expected = {cross_body(i): i for i in range(args.count)}
    ctx.phase = "receiving"
    got = set()
    problems = []
    deadline = time.time() + args.recv_timeout
    while len(got) < args.count and time.time() < deadline:
        for m in ctx.receive(consumer, args.invisible):
            what = f"message_id {m.message_id}"
            common_checks(ctx, m, problems, what)
            i = expected.get(m.body)
            if i is None:
                problems.append(f"{what}: unexpected body {hexprefix(m.body)}")
            else:
                if i in got:
                    problems.append(f"{what}: body spate-cross-{i} delivered twice (attempt {m.delivery_attempt})")
                got.add(i)
                if args.tag and m.tag != args.tag:
                    problems.append(f"{what}: tag {m.tag!r} != {args.tag!r}")
            ctx.ack(consumer, m, what)
        fail_on(problems, "received messages do not match")
    missing = [i for i in range(args.count) if i not in got]
    if missing:
        raise Fail(f"{len(missing)} of {args.count} messages not received within {args.recv_timeout}s "
                   f"(missing spate-cross-N for N in {missing[:20]})")
    ctx.result["received"] = len(got)
    ctx.result["quiet_receives"] = quiet_period(ctx, consumer, 0, "check for extra messages", describe_msg)


RUNNERS = {
    "send-receive": scenario_send_receive,
    "redeliver": scenario_redeliver,
    "fifo": scenario_fifo,
    "delay": scenario_delay,
    "transaction": scenario_transaction,
    "push": scenario_push,
    "send-only": scenario_send_only,
    "receive-only": scenario_receive_only,
}


# ---------------------------------------------------------------- main

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Run one interop scenario against a RocketMQ 5 gRPC endpoint with the "
                    "official Python client; prints one JSON line.")
    p.add_argument("--endpoint", required=True, help="HOST:PORT of the gRPC endpoint (access point)")
    p.add_argument("--topic", required=True, help="topic (must match [%%a-zA-Z0-9_-]+); use a fresh one")
    p.add_argument("--group", default=None, help="consumer group (required except for send-only)")
    p.add_argument("--count", type=int, default=10, help="messages (send-receive, fifo, send-only, receive-only)")
    p.add_argument("--scenario", required=True, choices=SCENARIOS)
    p.add_argument("--tag", default=None,
                   help="tag to send and filter on (send-receive default TagA; others: none / '*')")
    p.add_argument("--decoys", type=int, default=2,
                   help="send-receive: extra messages with another tag that the filter must drop")
    p.add_argument("--groups", type=int, default=3, help="fifo: number of message groups")
    p.add_argument("--invisible", type=int, default=30, help="invisible duration for receive, seconds")
    p.add_argument("--short-invisible", type=int, default=3,
                   help="redeliver: invisible duration of the unacked first receive, seconds")
    p.add_argument("--await", dest="await_secs", type=int, default=5,
                   help="SimpleConsumer await (long-polling) duration, seconds")
    p.add_argument("--batch", type=int, default=16, help="max messages per receive call")
    p.add_argument("--delay", type=int, default=3, help="delay: seconds until the delivery time")
    p.add_argument("--slack", type=float, default=0.5,
                   help="tolerance in seconds for 'not before' timing checks (delay, redeliver)")
    p.add_argument("--recv-timeout", type=int, default=60,
                   help="seconds to wait for expected messages once they are due")
    p.add_argument("--quiet-receives", type=int, default=1,
                   help="empty receive calls required after the expected messages (0 disables)")
    p.add_argument("--request-timeout", type=int, default=3, help="client request timeout, seconds")
    p.add_argument("--watchdog", type=float, default=120, help="kill the whole run after this many seconds")
    p.add_argument("--shutdown-timeout", type=float, default=15, help="max seconds for client shutdown")
    p.add_argument("--ak", default="", help="access key (empty: no credentials)")
    p.add_argument("--sk", default="", help="secret key")
    p.add_argument("--namespace", default="")
    p.add_argument("--tls", action="store_true", help="use TLS towards the endpoint")
    p.add_argument("--hold", type=float, default=0, help="push: seconds the listener holds the first message")
    p.add_argument("--client-log", default=None, metavar="LEVEL",
                   help="also copy the client's own log (normally only in ~/logs/rocketmq_python/) "
                        "to stderr at LEVEL, e.g. INFO or DEBUG")
    args = p.parse_args(argv)

    if not NAME_PATTERN.match(args.topic):
        p.error(f"--topic {args.topic!r} does not match [%a-zA-Z0-9_-]+ (the client rejects it)")
    if args.scenario != "send-only":
        if not args.group:
            p.error(f"--group is required for scenario {args.scenario}")
        if not NAME_PATTERN.match(args.group):
            p.error(f"--group {args.group!r} does not match [%a-zA-Z0-9_-]+ (the client rejects it)")
    if args.tag is not None and (not args.tag.strip() or "|" in args.tag):
        p.error("--tag must be non-blank and must not contain '|'")
    if ":" not in args.endpoint:
        p.error("--endpoint must be HOST:PORT")
    for name in ("count", "invisible", "short_invisible", "await_secs", "batch", "request_timeout", "groups"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("decoys", "delay", "recv_timeout", "quiet_receives"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must not be negative")
    return args


def main(argv):
    args = parse_args(argv)
    ctx_holder = {}
    base = {"scenario": args.scenario, "endpoint": args.endpoint, "topic": args.topic, "group": args.group}

    def on_watchdog():
        ctx = ctx_holder.get("ctx")
        result = dict(ctx.result) if ctx else dict(base)
        phase = ctx.phase if ctx else "importing the client"
        result.update(ok=False, watchdog=True,
                      error=f"watchdog: run exceeded {args.watchdog}s (stuck while {phase})")
        emit_and_exit(result, EXIT_WATCHDOG)

    watchdog = threading.Timer(args.watchdog, on_watchdog)
    watchdog.daemon = True
    watchdog.start()

    try:
        import rocketmq as api  # noqa: E402  (the official client: rocketmq-python-client)
    except Exception as e:
        emit_and_exit(dict(base, ok=False, error=f"cannot import rocketmq-python-client: {describe_error(e)}"), EXIT_FAIL)
        return

    if args.client_log:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s [client %(levelname)s] %(message)s"))
        client_logger = logging.getLogger("rocketmq-python-client")
        client_logger.addHandler(handler)
        client_logger.setLevel(args.client_log.upper())

    ctx = Ctx(args, api)
    ctx_holder["ctx"] = ctx
    code = EXIT_OK
    try:
        RUNNERS[args.scenario](ctx)
        ctx.result["ok"] = True
    except Fail as e:
        ctx.result.update(ok=False, error=str(e), failed_while=ctx.phase)
        code = EXIT_FAIL
    except Exception as e:  # client bugs or unexpected errors are failures too
        ctx.result.update(ok=False, error=f"unexpected {describe_error(e)}", failed_while=ctx.phase)
        code = EXIT_FAIL
    ctx.result["receive_calls"] = ctx.receive_calls
    ctx.result["acks"] = ctx.acks
    ctx.result["elapsed_ms"] = int((time.time() - ctx.started) * 1000)
    ctx.phase = "shutting down clients"
    ctx.result["shutdown"] = ctx.shutdown_all()
    emit_and_exit(ctx.result, code)


if __name__ == "__main__":
    main(sys.argv[1:])
