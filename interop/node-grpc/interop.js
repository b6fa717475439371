#!/usr/bin/env node
/*
 * Interop scenarios for Spate's gRPC endpoint (apache.rocketmq.v2.MessagingService),
 * driven only through the public API of the official Node.js client
 * rocketmq-client-nodejs 1.0.8 (pinned in package.json / package-lock.json).
 *
 * The Node.js twin of ../python/interop.py: same options (durations in seconds),
 * same scenarios plus `push` (a PushConsumer), one JSON line on stdout
 * ({"ok": true|false, ...}), exit 0 on success, 1 on any failed check or client
 * error, 2 on bad arguments, 3 when the whole-script watchdog fires. Use a fresh
 * topic and consumer group per run: any message the scenario did not expect
 * counts as a failure.
 *
 * Example:
 *   node interop.js --endpoint 127.0.0.1:8081 --topic NodeT1 --group NodeG1 \
 *       --count 20 --scenario send-receive
 */
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const util = require('node:util');

const SCENARIOS = [
  'send-receive', 'redeliver', 'fifo', 'delay', 'transaction', 'send-only', 'receive-only', 'push',
];
const EXIT_OK = 0;
const EXIT_FAIL = 1;
const EXIT_USAGE = 2;
const EXIT_WATCHDOG = 3;

const PACKAGE = 'rocketmq-client-nodejs';
// Same rule as the Python twin (the other official clients reject anything else).
const NAME_PATTERN = /^[%a-zA-Z0-9_-]+$/;
const CLIENT_LOG = path.join(os.homedir(), 'logs/rocketmq/rocketmq_client_nodejs.log');
const GRPC_STATUS = [
  'OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND',
  'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED',
  'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED',
];

/** A failed check or client error; the message is reported as the error. */
class Fail extends Error {}

// ------------------------------------------------------------------ output

let emitted = false;

/** Print the single JSON result line (once, whoever gets here first) and exit hard,
 * so that client timers, gRPC channels and telemetry streams never keep the process alive. */
function emitAndExit(result, code) {
  if (!emitted) {
    emitted = true;
    if (code !== EXIT_OK && result.error) {
      fs.writeSync(2, `interop.js: FAILED (${result.scenario}): ${result.error}\n`);
      fs.writeSync(2, `interop.js: client log: ${CLIENT_LOG}\n`);
    }
    fs.writeSync(1, JSON.stringify(sortKeys(result)) + '\n');
  }
  process.exit(code);
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    const out = {};
    for (const k of Object.keys(value).sort()) out[k] = sortKeys(value[k]);
    return out;
  }
  return value;
}

function oneLine(text) {
  return String(text).split(/\s+/).filter(Boolean).join(' ');
}

/** One-line description of a client, gRPC or other exception (with its causes). */
function describeError(err, api) {
  if (!(err instanceof Error)) return `thrown value: ${oneLine(util.inspect(err))}`;
  let text;
  if (typeof err.code === 'number' && typeof err.details === 'string') { // @grpc/grpc-js ServiceError
    text = `gRPC ${GRPC_STATUS[err.code] || err.code}: ${oneLine(err.details)}`;
  } else if (api && err instanceof api.ClientException) {
    const codeName = api.codeName(err.code);
    text = `${err.constructor.name} ${codeName}(${err.code}): ${oneLine(err.message)}`;
  } else {
    text = `${err.constructor ? err.constructor.name : 'Error'}: ${oneLine(err.message) || '(no message)'}`;
  }
  // Skip causes that the message already quotes (the client's startup error does that).
  let cause = err.cause;
  for (let depth = 0; cause instanceof Error && cause.message && err.message.includes(cause.message) && depth < 5; depth++) {
    cause = cause.cause;
  }
  if (cause !== undefined && cause !== err) text += ` [cause: ${describeError(cause, api)}]`;
  return text;
}

function hexprefix(data, n = 24) {
  const buf = Buffer.from(data || []);
  return buf.subarray(0, n).toString('hex') + (buf.length > n ? '...' : '') + ` (${buf.length} bytes)`;
}

function describeMsg(m) {
  return `message_id=${m.messageId} tag=${JSON.stringify(m.tag)} attempt=${m.deliveryAttempt} ` +
    `body=${hexprefix(m.body)}`;
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));
const now = () => Date.now() / 1000;
const round3 = x => Math.round(x * 1000) / 1000;

// ------------------------------------------------------------------ client log

const LEVELS = { DEBUG: 10, INFO: 20, WARN: 30, WARNING: 30, ERROR: 40 };

/**
 * The ILogger handed to every client (BaseClientOptions.logger). It forwards to the
 * client's own default file logger (CLIENT_LOG), keeps the client's warnings and
 * errors for the result, and copies lines at or above --client-log to stderr.
 */
class ClientLog {
  constructor(api, echoLevel) {
    this.file = api.getDefaultLogger();
    this.echo = echoLevel ? LEVELS[echoLevel] : Infinity;
    this.errors = 0;
    this.warnings = 0;
    this.firstErrors = [];
    this.ackFailures = 0;
  }

  write(level, args) {
    const fn = this.file[level.toLowerCase()];
    if (typeof fn === 'function') {
      try { fn.apply(this.file, args); } catch (_) { /* the file log is best effort */ }
    }
    const rank = LEVELS[level];
    if (rank < LEVELS.WARN && rank < this.echo) return;
    const text = oneLine(util.format(...args));
    if (level === 'ERROR') {
      this.errors++;
      if (this.firstErrors.length < 5) this.firstErrors.push(text.slice(0, 400));
    } else if (level === 'WARN') {
      this.warnings++;
      if (text.startsWith('Failed to ack message')) this.ackFailures++;
    }
    if (rank >= this.echo) fs.writeSync(2, `${new Date().toISOString()} [client ${level}] ${text}\n`);
  }

  debug(...args) { this.write('DEBUG', args); }
  info(...args) { this.write('INFO', args); }
  warn(...args) { this.write('WARN', args); }
  error(...args) { this.write('ERROR', args); }
  // Every client calls close() when it shuts down; the clients share this logger.
  close() {}
}

// ------------------------------------------------------------------ context

class Ctx {
  constructor(args, api, log) {
    this.args = args;
    this.api = api;
    this.log = log;
    this.phase = 'init';
    this.started = Date.now();
    this.receiveCalls = 0;
    this.acks = 0;
    this.clients = [];
    this.result = {
      scenario: args.scenario,
      endpoint: args.endpoint,
      topic: args.topic,
      group: args.group,
      count: args.count,
      client: `${PACKAGE}@${api.version}`,
    };
  }

  options(extra) {
    const a = this.args;
    const o = {
      endpoints: a.endpoint,
      namespace: a.namespace,
      requestTimeout: a.request_timeout * 1000,
      sslEnabled: a.tls,
      logger: this.log,
      ...extra,
    };
    if (a.ak) o.sessionCredentials = { accessKey: a.ak, accessSecret: a.sk };
    return o;
  }

  /** startup() resolves once the route is known and the first Settings came back on the
   * Telemetry stream; it has no deadline of its own, so bound it here. */
  async startClient(client, what) {
    this.phase = `starting ${what}`;
    const boundS = 4 * this.args.request_timeout + 3 + 15;
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Fail(
        `${what} startup did not finish within ${boundS}s (it needs a QueryRoute answer and then a ` +
        'Settings command back on the Telemetry stream)')), boundS * 1000);
    });
    try {
      await Promise.race([ client.startup(), timeout ]);
    } catch (e) {
      if (e instanceof Fail) throw e;
      throw new Fail(`${what} startup failed: ${describeError(e, this.api)}`);
    } finally {
      clearTimeout(timer);
    }
    this.clients.push({ what, client });
    return client;
  }

  startProducer(checker) {
    const extra = { topics: [ this.args.topic ] };
    if (checker) extra.checker = checker;
    return this.startClient(new this.api.Producer(this.options(extra)), 'producer');
  }

  startConsumer(tagExpression) {
    const consumer = new this.api.SimpleConsumer(this.options({
      consumerGroup: this.args.group,
      subscriptions: new Map([[ this.args.topic, new this.api.FilterExpression(tagExpression) ]]),
      awaitDuration: this.args.await_secs * 1000,
    }));
    return this.startClient(consumer, 'simple consumer');
  }

  startPushConsumer(tagExpression, listener) {
    const consumer = new this.api.PushConsumer(this.options({
      consumerGroup: this.args.group,
      subscriptions: new Map([[ this.args.topic, new this.api.FilterExpression(tagExpression) ]]),
      messageListener: listener,
    }));
    return this.startClient(consumer, 'push consumer');
  }

  /** Shut clients down (exercises NotifyClientTermination); bounded, never fails the run. */
  async shutdownAll() {
    const outcome = {};
    const run = (async () => {
      for (const { client } of [ ...this.clients ].reverse()) {
        const name = client.constructor.name;
        try {
          await client.shutdown();
          outcome[name] = 'ok';
        } catch (e) {
          outcome[name] = describeError(e, this.api);
        }
      }
    })();
    const limitMs = this.args.shutdown_timeout * 1000;
    const finished = await Promise.race([ run.then(() => true), sleep(limitMs).then(() => false) ]);
    if (!finished) outcome.timeout = `shutdown still running after ${this.args.shutdown_timeout}s`;
    return outcome;
  }

  async send(producer, message, what, transaction) {
    try {
      return transaction ? await producer.send(message, transaction) : await producer.send(message);
    } catch (e) {
      throw new Fail(`send of ${what} failed: ${describeError(e, this.api)}`);
    }
  }

  async receive(consumer, invisibleSecs) {
    this.receiveCalls++;
    try {
      return await consumer.receive(this.args.batch, invisibleSecs * 1000);
    } catch (e) {
      throw new Fail(`receive (call #${this.receiveCalls}) failed: ${describeError(e, this.api)}`);
    }
  }

  async ack(consumer, m, what) {
    try {
      await consumer.ack(m);
      this.acks++;
    } catch (e) {
      throw new Fail(`ack of ${what} (message_id ${m.messageId}) failed: ${describeError(e, this.api)}`);
    }
  }

  newMessage(body, tag, extra) {
    const m = { topic: this.args.topic, body, ...extra };
    if (tag) m.tag = tag;
    return m;
  }
}

function commonChecks(ctx, m, problems, what) {
  if (m.corrupted) problems.push(`${what}: body digest check failed in the client (message.corrupted)`);
  if (m.topic !== ctx.args.topic) problems.push(`${what}: topic ${JSON.stringify(m.topic)} != ${JSON.stringify(ctx.args.topic)}`);
  if (!m.receiptHandle) problems.push(`${what}: no receipt_handle`);
}

function failOn(problems, header) {
  if (problems.length) {
    const more = problems.length > 10 ? ` (+${problems.length - 10} more)` : '';
    throw new Fail(`${header}: ${problems.slice(0, 10).join('; ')}${more}`);
  }
}

/** Receive for at least `minSecs` seconds (and at least --quiet-receives calls, one long
 * poll each); any message that shows up is a failure (reported with `describe`). Messages
 * are acked. */
async function quietPeriod(ctx, consumer, minSecs, label, describe = describeMsg) {
  let calls = 0;
  const end = now() + minSecs;
  while (calls < ctx.args.quiet_receives || now() < end) {
    if (ctx.args.quiet_receives === 0 && minSecs <= 0) break;
    ctx.phase = `quiet check (${label})`;
    calls++;
    const msgs = await ctx.receive(consumer, ctx.args.invisible);
    if (msgs.length) {
      for (const m of msgs) {
        try { await consumer.ack(m); } catch (_) { /* reporting the message matters more */ }
      }
      throw new Fail(`unexpected message(s) during ${label}: ${msgs.slice(0, 10).map(describe).join('; ')}`);
    }
  }
  return calls;
}

function runId() {
  return crypto.randomBytes(6).toString('hex');
}

function countAttempt(attempts, m) {
  const k = String(m.deliveryAttempt);
  attempts[k] = (attempts[k] || 0) + 1;
}

// ------------------------------------------------------------------ send-receive

/** Deterministic pseudo-random bytes (mulberry32), seeded per message. */
function seededBytes(seed, n) {
  let a = seed >>> 0;
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((t ^ (t >>> 14)) >>> 0) & 0xff;
  }
  return out;
}

/** Distinct, deterministic bodies mixing text, every byte value, NULs, invalid UTF-8
 * and multi-KB payloads. */
function makeBody(run, i) {
  const head = Buffer.from(`spate-node|${run}|${String(i).padStart(5, '0')}|`);
  switch (i % 6) {
    case 0:
      return Buffer.concat([ head, Buffer.from(`plain ascii body number ${i}`) ]);
    case 1: // all byte values, ends in NUL
      return Buffer.concat([ head, Buffer.from([ ...Array(256).keys() ]), Buffer.from([ 0 ]) ]);
    case 2: // 2-8 KB binary
      return Buffer.concat([ head, seededBytes(i + 1, 2048 + 997 * (i % 7)) ]);
    case 3: { // starts with NUL, invalid UTF-8 sequences throughout
      const bad = Buffer.from([ 0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28, 0xa1, 0xf0, 0x90, 0x28, 0xbc, 0x00 ]);
      return Buffer.concat([ Buffer.from([ 0 ]), head, ...Array(8).fill(bad) ]);
    }
    case 4: // ~4 KB of multi-byte UTF-8
      return Buffer.concat([ head, Buffer.from('multi-byte UTF-8 \u00fc\u00ef \u2713 \u5024 \u{1F680} '.repeat(120)) ]);
    default: // mostly NUL bytes
      return Buffer.concat([ head, Buffer.alloc(3000), Buffer.from([ i % 256 ]) ]);
  }
}

function sameSet(a, b) {
  const sa = new Set(a);
  const sb = new Set(b);
  return sa.size === sb.size && [ ...sa ].every(x => sb.has(x));
}

function mapToObject(m) {
  const o = {};
  for (const [ k, v ] of m || []) o[k] = v;
  return o;
}

function sameProps(got, want) {
  const g = mapToObject(got);
  const keys = Object.keys(want);
  return Object.keys(g).length === keys.length && keys.every(k => g[k] === want[k]);
}

async function scenarioSendReceive(ctx) {
  const args = ctx.args;
  const run = runId();
  const tag = args.tag || 'TagA';
  const decoyTag = `${tag}-decoy`;
  const expected = [];
  for (let i = 0; i < args.count; i++) {
    expected.push({
      i,
      body: makeBody(run, i),
      keys: [ `idx-${i}`, `key-${run}-${i}` ],
      props: { idx: String(i), run, note: 'v\u00e4rde \u2713 \u5024 / = ; & %' },
    });
  }
  const byBody = new Map(expected.map(e => [ e.body.toString('latin1'), e ]));
  if (byBody.size !== expected.length) throw new Fail('internal: bodies are not distinct');

  const consumer = await ctx.startConsumer(tag);
  const producer = await ctx.startProducer();

  ctx.phase = 'sending';
  const receipts = new Map();
  for (const e of expected) {
    const m = ctx.newMessage(e.body, tag, { keys: e.keys, properties: new Map(Object.entries(e.props)) });
    const r = await ctx.send(producer, m, `message ${e.i}`);
    if (!r.messageId) throw new Fail(`send of message ${e.i}: empty message_id in SendResultEntry`);
    receipts.set(e.i, r.messageId);
  }
  for (let j = 0; j < args.decoys; j++) {
    await ctx.send(producer, ctx.newMessage(Buffer.from(`spate-node-decoy|${run}|${j}`), decoyTag), `decoy ${j}`);
  }
  ctx.result.sent = args.count;
  ctx.result.decoys_sent = args.decoys;

  ctx.phase = 'receiving';
  const got = new Map();
  const problems = [];
  const attempts = {};
  const deadline = now() + args.recv_timeout;
  while (got.size < args.count && now() < deadline) {
    for (const m of await ctx.receive(consumer, args.invisible)) {
      let what = `message_id ${m.messageId}`;
      commonChecks(ctx, m, problems, what);
      const e = byBody.get(Buffer.from(m.body).toString('latin1'));
      if (!e) {
        if (Buffer.from(m.body).toString('latin1').startsWith('spate-node-decoy|')) {
          problems.push(`${what}: tag filter ${JSON.stringify(tag)} let through a ${JSON.stringify(decoyTag)} message`);
        } else {
          problems.push(`${what}: unexpected body ${hexprefix(m.body)} (not sent by this run, or altered)`);
        }
        await ctx.ack(consumer, m, what);
        continue;
      }
      what = `message ${e.i} (${m.messageId})`;
      if (got.has(e.i)) problems.push(`${what}: delivered twice (attempt ${m.deliveryAttempt})`);
      got.set(e.i, m);
      countAttempt(attempts, m);
      if (m.tag !== tag) problems.push(`${what}: tag ${JSON.stringify(m.tag)} != ${JSON.stringify(tag)}`);
      if (!sameSet(m.keys, e.keys)) {
        problems.push(`${what}: keys ${JSON.stringify([ ...m.keys ].sort())} != ${JSON.stringify(e.keys)}`);
      }
      if (!sameProps(m.properties, e.props)) {
        problems.push(`${what}: user properties ${JSON.stringify(mapToObject(m.properties))} != ${JSON.stringify(e.props)}`);
      }
      if (m.messageId !== receipts.get(e.i)) {
        problems.push(`${what}: message_id differs from send receipt ${receipts.get(e.i)}`);
      }
      await ctx.ack(consumer, m, what);
    }
    failOn(problems, 'received messages do not match');
  }
  const missing = [];
  for (let i = 0; i < args.count; i++) if (!got.has(i)) missing.push(i);
  if (missing.length) {
    throw new Fail(`${missing.length} of ${args.count} messages not received within ${args.recv_timeout}s ` +
      `(missing indexes ${JSON.stringify(missing.slice(0, 20))})`);
  }
  ctx.result.received = got.size;
  ctx.result.delivery_attempts = attempts;
  ctx.result.quiet_receives = await quietPeriod(ctx, consumer, 0, 'check for extra or decoy messages');
}

// ------------------------------------------------------------------ redeliver

async function scenarioRedeliver(ctx) {
  const args = ctx.args;
  const run = runId();
  const body = Buffer.concat([ Buffer.from(`spate-node-redeliver|${run}|`), Buffer.from([ 0x00, 0xff, 0xfe ]) ]);
  const consumer = await ctx.startConsumer(args.tag || '*');
  const producer = await ctx.startProducer();

  ctx.phase = 'sending';
  const receipt = await ctx.send(producer, ctx.newMessage(body, args.tag), 'the message');
  ctx.result.sent = 1;

  async function take(label, deadline, invisible) {
    while (now() < deadline) {
      ctx.phase = `receiving (${label})`;
      const msgs = await ctx.receive(consumer, invisible);
      if (!msgs.length) continue;
      const t = now();
      const others = msgs.filter(m => !body.equals(m.body));
      if (others.length) {
        throw new Fail(`unexpected message(s) on ${label}: ${others.slice(0, 5).map(describeMsg).join('; ')}`);
      }
      if (msgs.length > 1) throw new Fail(`${label}: the message came ${msgs.length} times in one batch`);
      const problems = [];
      commonChecks(ctx, msgs[0], problems, label);
      failOn(problems, label);
      return [ msgs[0], t ];
    }
    throw new Fail(`${label}: message not received within the deadline`);
  }

  const [ first, t1 ] = await take('first delivery', now() + args.recv_timeout, args.short_invisible);
  if (first.messageId !== receipt.messageId) {
    throw new Fail(`first delivery: message_id ${first.messageId} != send receipt ${receipt.messageId}`);
  }
  if (first.deliveryAttempt !== 1) {
    throw new Fail(`first delivery: delivery_attempt is ${first.deliveryAttempt}, expected 1`);
  }

  // Not acked: it must come back once the short invisible duration has passed.
  const [ second, t2 ] = await take('redelivery', t1 + args.short_invisible + args.recv_timeout, args.invisible);
  const gap = t2 - t1;
  if (gap < args.short_invisible - args.slack) {
    throw new Fail(`redelivered after ${gap.toFixed(2)}s, before the invisible duration of ${args.short_invisible}s expired`);
  }
  if (second.messageId !== first.messageId) {
    throw new Fail(`redelivery: message_id ${second.messageId} != first delivery ${first.messageId}`);
  }
  if (second.deliveryAttempt !== 2) {
    throw new Fail(`redelivery: delivery_attempt is ${second.deliveryAttempt}, expected 2`);
  }
  await ctx.ack(consumer, second, 'the redelivered message');
  ctx.result.received = 2;
  ctx.result.redelivery_gap_s = round3(gap);
  ctx.result.receipt_handle_changed = first.receiptHandle !== second.receiptHandle;
  // Once acked it must not come back, even after another invisible period.
  ctx.result.quiet_receives = await quietPeriod(
    ctx, consumer, args.short_invisible + 1, 'check that the acked message stays acked');
}

// ------------------------------------------------------------------ fifo

async function scenarioFifo(ctx) {
  const args = ctx.args;
  const run = runId();
  const groups = [];
  for (let k = 0; k < args.groups; k++) groups.push(`fifo-${run}-g${k}`);
  const perGroup = Object.fromEntries(groups.map(g => [ g, 0 ]));
  const plan = [];
  for (let i = 0; i < args.count; i++) {
    const g = groups[i % groups.length];
    const seq = perGroup[g]++;
    plan.push({ g, seq, body: `spate-node-fifo|${g}|${String(seq).padStart(5, '0')}` });
  }
  const byBody = new Map(plan.map(p => [ p.body, p ]));

  const consumer = await ctx.startConsumer(args.tag || '*');
  const producer = await ctx.startProducer();

  ctx.phase = 'sending';
  for (const { g, seq, body } of plan) {
    await ctx.send(producer, ctx.newMessage(Buffer.from(body), args.tag, { messageGroup: g }), `group ${g} seq ${seq}`);
  }
  ctx.result.sent = args.count;

  ctx.phase = 'receiving';
  const order = Object.fromEntries(groups.map(g => [ g, [] ]));
  const problems = [];
  const seen = new Set();
  const deadline = now() + args.recv_timeout;
  while (seen.size < args.count && now() < deadline) {
    for (const m of await ctx.receive(consumer, args.invisible)) {
      let what = `message_id ${m.messageId}`;
      commonChecks(ctx, m, problems, what);
      const text = Buffer.from(m.body).toString('latin1');
      const p = byBody.get(text);
      if (!p) {
        problems.push(`${what}: unexpected body ${hexprefix(m.body)}`);
      } else {
        what = `group ${p.g} seq ${p.seq}`;
        if (m.messageGroup !== p.g) {
          problems.push(`${what}: message_group ${JSON.stringify(m.messageGroup)} != ${JSON.stringify(p.g)}`);
        }
        if (seen.has(text)) problems.push(`${what}: delivered again (attempt ${m.deliveryAttempt})`);
        seen.add(text);
        order[p.g].push(p.seq);
      }
      await ctx.ack(consumer, m, what);
    }
    failOn(problems, 'received FIFO messages do not match');
  }
  for (const g of groups) {
    if (order[g].some((seq, k) => seq !== k)) {
      throw new Fail(`group ${g} out of order: received seqs ${JSON.stringify(order[g].slice(0, 30))}`);
    }
  }
  if (seen.size < args.count) {
    const missing = {};
    for (const g of groups) if (order[g].length < perGroup[g]) missing[g] = perGroup[g] - order[g].length;
    throw new Fail(`${args.count - seen.size} of ${args.count} FIFO messages not received within ` +
      `${args.recv_timeout}s (missing per group: ${JSON.stringify(missing)})`);
  }
  ctx.result.received = seen.size;
  ctx.result.groups = perGroup;
  ctx.result.quiet_receives = await quietPeriod(ctx, consumer, 0, 'check for extra messages');
}

// ------------------------------------------------------------------ delay

async function scenarioDelay(ctx) {
  const args = ctx.args;
  const run = runId();
  const body = Buffer.from(`spate-node-delay|${run}`);
  const consumer = await ctx.startConsumer(args.tag || '*');
  const producer = await ctx.startProducer();

  ctx.phase = 'sending';
  // Whole epoch seconds, rounded up, as in the Python twin (this client would carry
  // milliseconds too); the delay is at least --delay seconds.
  const deliverAt = Math.ceil(now()) + args.delay;
  const tSent = now();
  await ctx.send(producer, ctx.newMessage(body, args.tag, { deliveryTimestamp: new Date(deliverAt * 1000) }),
    'the delayed message');
  // A second one, due at the same moment, recalled at once (RecallMessage with the
  // recall handle of its send receipt): it must never arrive.
  const recalledBody = Buffer.from(`spate-node-recalled|${run}`);
  const receipt = await ctx.send(producer,
    ctx.newMessage(recalledBody, args.tag, { deliveryTimestamp: new Date(deliverAt * 1000) }),
    'the delayed message to recall');
  if (!receipt.recallHandle) throw new Fail("the delayed message's send receipt has no recall_handle");
  ctx.phase = 'recalling';
  let recall;
  try {
    recall = await producer.recallMessage(args.topic, receipt.recallHandle);
  } catch (e) {
    throw new Fail(`RecallMessage failed: ${describeError(e, ctx.api)}`);
  }
  ctx.result.recalled = String(recall.messageId);
  ctx.result.sent = 2;

  ctx.phase = 'receiving';
  const deadline = deliverAt + args.recv_timeout;
  let got = null;
  while (!got && now() < deadline) {
    const msgs = await ctx.receive(consumer, args.invisible);
    const t = now();
    for (const r of msgs) {
      if (recalledBody.equals(r.body)) throw new Fail(`the recalled message was delivered: ${describeMsg(r)}`);
      if (!body.equals(r.body)) throw new Fail(`unexpected message: ${describeMsg(r)}`);
      if (got) throw new Fail('the delayed message came twice in one batch');
      if (t < deliverAt - args.slack) {
        throw new Fail(`delayed message delivered ${(deliverAt - t).toFixed(2)}s before its delivery time ` +
          `(sent ${tSent.toFixed(3)}, deliver_at ${deliverAt}, received ${t.toFixed(3)})`);
      }
      const problems = [];
      commonChecks(ctx, r, problems, 'delayed message');
      const echoed = r.deliveryTimestamp ? r.deliveryTimestamp.getTime() : null;
      if (echoed !== null && echoed !== deliverAt * 1000) {
        problems.push(`delivery_timestamp ${echoed} ms != ${deliverAt * 1000} ms`);
      }
      failOn(problems, 'delayed message does not match');
      await ctx.ack(consumer, r, 'the delayed message');
      got = { r, t, echoed };
    }
  }
  if (!got) throw new Fail(`delayed message not received within ${args.recv_timeout}s after its delivery time`);
  ctx.result.received = 1;
  ctx.result.delay_requested_s = round3(deliverAt - tSent);
  ctx.result.received_after_s = round3(got.t - tSent);
  ctx.result.late_by_s = round3(got.t - deliverAt);
  ctx.result.delivery_timestamp_echoed = got.echoed;
  ctx.result.quiet_receives = await quietPeriod(
    ctx, consumer, 0, 'check for duplicates and that the recalled message never arrives',
    m => (recalledBody.equals(m.body) ? 'the RECALLED message ' : '') + describeMsg(m));
}

// ------------------------------------------------------------------ transaction

async function scenarioTransaction(ctx) {
  const args = ctx.args;
  const { COMMIT, ROLLBACK } = ctx.api.TransactionResolution;
  const run = runId();
  const commitBody = Buffer.from(`spate-node-tx-commit|${run}`);
  const rollbackBody = Buffer.from(`spate-node-tx-rollback|${run}`);
  // Left open by the producer: only the server's check-back resolves it.
  const checkbackBody = Buffer.from(`spate-node-tx-checkback|${run}`);
  const checks = [];
  // Called if the server asks about a half message (check-back: a
  // RecoverOrphanedTransactionCommand on the Telemetry stream); answers consistently.
  // The client then sends EndTransaction with source SOURCE_SERVER_CHECK.
  const checker = {
    async check(messageView) {
      const commit = commitBody.equals(messageView.body) || checkbackBody.equals(messageView.body);
      const verdict = commit ? COMMIT : ROLLBACK;
      checks.push({ message_id: messageView.messageId, verdict: verdict === COMMIT ? 'COMMIT' : 'ROLLBACK' });
      return verdict;
    },
  };

  const consumer = await ctx.startConsumer(args.tag || '*');
  const producer = await ctx.startProducer(checker);

  ctx.phase = 'sending half messages';
  const txCommit = producer.beginTransaction();
  const r1 = await ctx.send(producer, ctx.newMessage(commitBody, args.tag), 'half message (to commit)', txCommit);
  const txRollback = producer.beginTransaction();
  const r2 = await ctx.send(producer, ctx.newMessage(rollbackBody, args.tag), 'half message (to roll back)', txRollback);
  for (const [ what, r ] of [[ 'commit', r1 ], [ 'rollback', r2 ]]) {
    if (!r.transactionId) throw new Fail(`send receipt of the half message to ${what} has no transaction_id`);
  }
  ctx.result.sent = 2;

  // Half messages must stay invisible until the transaction ends.
  ctx.result.half_check_receives = await quietPeriod(
    ctx, consumer, 0, 'check that half messages are invisible before commit');

  ctx.phase = 'ending transactions';
  try {
    await txCommit.commit();
  } catch (e) {
    throw new Fail(`EndTransaction(COMMIT) failed: ${describeError(e, ctx.api)}`);
  }
  try {
    await txRollback.rollback();
  } catch (e) {
    throw new Fail(`EndTransaction(ROLLBACK) failed: ${describeError(e, ctx.api)}`);
  }

  ctx.phase = 'receiving';
  let got = null;
  const deadline = now() + args.recv_timeout;
  while (!got && now() < deadline) {
    for (const m of await ctx.receive(consumer, args.invisible)) {
      if (rollbackBody.equals(m.body)) throw new Fail(`rolled-back message was delivered: ${describeMsg(m)}`);
      if (!commitBody.equals(m.body)) throw new Fail(`unexpected message: ${describeMsg(m)}`);
      if (got) throw new Fail('committed message came twice in one batch');
      const problems = [];
      commonChecks(ctx, m, problems, 'committed message');
      if (m.messageId !== r1.messageId) problems.push(`message_id ${m.messageId} != send receipt ${r1.messageId}`);
      failOn(problems, 'committed message does not match');
      await ctx.ack(consumer, m, 'the committed message');
      got = m;
    }
  }
  if (!got) throw new Fail(`committed message not received within ${args.recv_timeout}s`);
  ctx.result.received = 1;
  ctx.result.quiet_receives = await quietPeriod(
    ctx, consumer, 0, 'check that the rolled-back message never appears');

  // A transaction the producer never ends: the server asks the producer (check-back
  // over the Telemetry stream) once the half message is old enough, and it commits it.
  ctx.phase = 'sending the half message left to check-back';
  const txOpen = producer.beginTransaction();
  const r3 = await ctx.send(producer, ctx.newMessage(checkbackBody, args.tag), 'half message (left open)', txOpen);
  if (!r3.transactionId) throw new Fail('send receipt of the half message left open has no transaction_id');
  ctx.result.sent = 3;
  const tOpen = now();
  ctx.phase = 'receiving the message committed by check-back';
  let committed = null;
  let tCommitted = null;
  const openDeadline = now() + args.recv_timeout;
  while (!committed && now() < openDeadline) {
    const msgs = await ctx.receive(consumer, args.invisible);
    const t = now();
    for (const m of msgs) {
      if (rollbackBody.equals(m.body)) throw new Fail(`rolled-back message was delivered: ${describeMsg(m)}`);
      if (!checkbackBody.equals(m.body)) {
        throw new Fail(`unexpected message while waiting for the check-back: ${describeMsg(m)}`);
      }
      if (committed) throw new Fail('the message committed by check-back came twice in one batch');
      const problems = [];
      commonChecks(ctx, m, problems, 'message committed by check-back');
      if (m.messageId !== r3.messageId) problems.push(`message_id ${m.messageId} != send receipt ${r3.messageId}`);
      failOn(problems, 'message committed by check-back does not match');
      await ctx.ack(consumer, m, 'the message committed by check-back');
      committed = m;
      tCommitted = t;
    }
  }
  if (!committed) {
    throw new Fail(`the half message left open (message_id ${r3.messageId}) was not committed by check-back ` +
      `within ${args.recv_timeout}s; check-backs so far: ${JSON.stringify(checks)}`);
  }
  if (!checks.some(c => c.message_id === r3.messageId)) {
    throw new Fail(`the open transaction (message_id ${r3.messageId}) was delivered without a check-back ` +
      `to this producer; check-backs: ${JSON.stringify(checks)}`);
  }
  ctx.result.received = 2;
  ctx.result.check_back_delivered_after_s = round3(tCommitted - tOpen);
  ctx.result.check_backs = checks;
}

// ------------------------------------------------------------------ cross-protocol

const crossBody = i => Buffer.from(`spate-cross-${i}`);

async function scenarioSendOnly(ctx) {
  const args = ctx.args;
  const producer = await ctx.startProducer();
  ctx.phase = 'sending';
  const ids = [];
  for (let i = 0; i < args.count; i++) {
    const r = await ctx.send(producer, ctx.newMessage(crossBody(i), args.tag), `message ${i}`);
    ids.push(r.messageId);
  }
  ctx.result.sent = args.count;
  if (args.count <= 1000) ctx.result.message_ids = ids;
}

async function scenarioReceiveOnly(ctx) {
  const args = ctx.args;
  const consumer = await ctx.startConsumer(args.tag || '*');
  const expected = new Map();
  for (let i = 0; i < args.count; i++) expected.set(crossBody(i).toString('latin1'), i);
  ctx.phase = 'receiving';
  const got = new Set();
  const problems = [];
  const deadline = now() + args.recv_timeout;
  while (got.size < args.count && now() < deadline) {
    for (const m of await ctx.receive(consumer, args.invisible)) {
      const what = `message_id ${m.messageId}`;
      commonChecks(ctx, m, problems, what);
      const i = expected.get(Buffer.from(m.body).toString('latin1'));
      if (i === undefined) {
        problems.push(`${what}: unexpected body ${hexprefix(m.body)}`);
      } else {
        if (got.has(i)) problems.push(`${what}: body spate-cross-${i} delivered twice (attempt ${m.deliveryAttempt})`);
        got.add(i);
        if (args.tag && m.tag !== args.tag) problems.push(`${what}: tag ${JSON.stringify(m.tag)} != ${JSON.stringify(args.tag)}`);
      }
      await ctx.ack(consumer, m, what);
    }
    failOn(problems, 'received messages do not match');
  }
  const missing = [];
  for (let i = 0; i < args.count; i++) if (!got.has(i)) missing.push(i);
  if (missing.length) {
    throw new Fail(`${missing.length} of ${args.count} messages not received within ${args.recv_timeout}s ` +
      `(missing spate-cross-N for N in ${JSON.stringify(missing.slice(0, 20))})`);
  }
  ctx.result.received = got.size;
  ctx.result.quiet_receives = await quietPeriod(ctx, consumer, 0, 'check for extra messages');
}

// ------------------------------------------------------------------ push

/**
 * A PushConsumer (QueryAssignment, then long-polling ReceiveMessage with auto-renew,
 * acks by the client) consumes --count messages sent after it started. The first
 * delivery of the first --nack of them is answered FAILURE, so the client nacks it
 * (ChangeInvisibleDuration) and it must come back with delivery attempt 2. Then for
 * --push-quiet seconds nothing else may arrive.
 */
async function scenarioPush(ctx) {
  const args = ctx.args;
  const api = ctx.api;
  const run = runId();
  const tag = args.tag || null;
  const bodies = new Map();
  for (let i = 0; i < args.count; i++) bodies.set(`spate-node-push|${run}|${i}`, i);
  const deliveries = new Map(); // index -> [deliveryAttempt, ...]
  const problems = [];
  const attempts = {};
  let done = null;
  const allDone = new Promise(resolve => { done = resolve; });
  const succeeded = new Set();
  let extra = 0;

  const listener = {
    consume(m) {
      const text = Buffer.from(m.body).toString('latin1');
      const i = bodies.get(text);
      const what = `message_id ${m.messageId}`;
      if (m.topic !== args.topic) problems.push(`${what}: topic ${JSON.stringify(m.topic)} != ${JSON.stringify(args.topic)}`);
      if (i === undefined) {
        problems.push(`${what}: unexpected body ${hexprefix(m.body)}`);
        return api.ConsumeResult.SUCCESS;
      }
      countAttempt(attempts, m);
      const seen = deliveries.get(i) || [];
      seen.push(m.deliveryAttempt);
      deliveries.set(i, seen);
      if (tag && m.tag !== tag) problems.push(`message ${i}: tag ${JSON.stringify(m.tag)} != ${JSON.stringify(tag)}`);
      if (succeeded.has(i)) {
        extra++;
        problems.push(`message ${i} (${m.messageId}): delivered again after it was consumed ` +
          `(attempts so far ${JSON.stringify(seen)})`);
        return api.ConsumeResult.SUCCESS;
      }
      if (i < args.nack && seen.length === 1) return api.ConsumeResult.FAILURE;
      succeeded.add(i);
      if (succeeded.size === args.count) done();
      return api.ConsumeResult.SUCCESS;
    },
  };

  await ctx.startPushConsumer(tag || '*', listener);
  const producer = await ctx.startProducer();

  ctx.phase = 'sending';
  for (const [ body, i ] of bodies) await ctx.send(producer, ctx.newMessage(Buffer.from(body), tag), `message ${i}`);
  ctx.result.sent = args.count;

  ctx.phase = 'push consumer consuming';
  const ok = await Promise.race([ allDone.then(() => true), sleep(args.recv_timeout * 1000).then(() => false) ]);
  failOn(problems, 'pushed messages do not match');
  if (!ok) {
    const missing = [];
    for (let i = 0; i < args.count; i++) if (!succeeded.has(i)) missing.push(i);
    const nacked = [];
    for (let i = 0; i < Math.min(args.nack, args.count); i++) nacked.push(`${i}:${JSON.stringify(deliveries.get(i) || [])}`);
    throw new Fail(`${missing.length} of ${args.count} messages not consumed within ${args.recv_timeout}s ` +
      `(missing indexes ${JSON.stringify(missing.slice(0, 20))}` +
      (args.nack ? `; attempts of the nacked ones ${nacked.slice(0, 10).join(' ')}` : '') + ')');
  }
  for (let i = 0; i < Math.min(args.nack, args.count); i++) {
    const seen = deliveries.get(i);
    if (seen[0] !== 1 || seen[1] !== 2) {
      problems.push(`message ${i}: nacked on attempt 1, delivery attempts were ${JSON.stringify(seen)}, expected [1,2]`);
    }
  }
  for (let i = Math.min(args.nack, args.count); i < args.count; i++) {
    const seen = deliveries.get(i);
    if (seen[0] !== 1) problems.push(`message ${i}: first delivery attempt is ${seen[0]}, expected 1`);
  }
  failOn(problems, 'pushed messages do not match');

  ctx.phase = `push quiet period (${args.push_quiet}s)`;
  await sleep(args.push_quiet * 1000);
  failOn(problems, `during the ${args.push_quiet}s after all messages were consumed`);
  if (ctx.log.ackFailures) throw new Fail(`the push consumer logged ${ctx.log.ackFailures} failed ack(s)`);
  ctx.result.received = succeeded.size;
  ctx.result.nacked = Math.min(args.nack, args.count);
  ctx.result.deliveries = [ ...deliveries.values() ].reduce((n, a) => n + a.length, 0);
  ctx.result.delivery_attempts = attempts;
  ctx.result.redelivered_after_consumed = extra;
}

const RUNNERS = {
  'send-receive': scenarioSendReceive,
  redeliver: scenarioRedeliver,
  fifo: scenarioFifo,
  delay: scenarioDelay,
  transaction: scenarioTransaction,
  'send-only': scenarioSendOnly,
  'receive-only': scenarioReceiveOnly,
  push: scenarioPush,
};

// ------------------------------------------------------------------ arguments

const OPTIONS = [
  [ 'endpoint', 'str', null, 'HOST:PORT of the gRPC endpoint (access point); required' ],
  [ 'topic', 'str', null, 'topic (must match [%a-zA-Z0-9_-]+); use a fresh one; required' ],
  [ 'group', 'str', null, 'consumer group (required except for send-only)' ],
  [ 'count', 'int', 10, 'messages (send-receive, fifo, send-only, receive-only, push)' ],
  [ 'scenario', 'str', null, `one of ${SCENARIOS.join(', ')}; required` ],
  [ 'tag', 'str', null, "tag to send and filter on (send-receive default TagA; others: none / '*')" ],
  [ 'decoys', 'int', 2, 'send-receive: extra messages with another tag that the filter must drop' ],
  [ 'groups', 'int', 3, 'fifo: number of message groups' ],
  [ 'invisible', 'int', 30, 'invisible duration for receive, seconds' ],
  [ 'short-invisible', 'int', 3, 'redeliver: invisible duration of the unacked first receive, seconds' ],
  [ 'await', 'int', 5, 'SimpleConsumer await (long-polling) duration, seconds' ],
  [ 'batch', 'int', 16, 'max messages per receive call' ],
  [ 'delay', 'int', 3, 'delay: seconds until the delivery time' ],
  [ 'slack', 'float', 0.5, "tolerance in seconds for 'not before' timing checks (delay, redeliver)" ],
  [ 'recv-timeout', 'int', 60, 'seconds to wait for expected messages once they are due' ],
  [ 'quiet-receives', 'int', 1, 'empty receive calls required after the expected messages (0 disables)' ],
  [ 'nack', 'int', 0, 'push: answer FAILURE to the first delivery of this many messages' ],
  [ 'push-quiet', 'float', 3, 'push: seconds to watch for extra deliveries after all were consumed' ],
  [ 'request-timeout', 'int', 3, 'client request timeout, seconds' ],
  [ 'watchdog', 'float', 120, 'kill the whole run after this many seconds' ],
  [ 'shutdown-timeout', 'float', null, 'max seconds for client shutdown (default 15; push: 40, as the ' +
    'PushConsumer first waits for its in-flight long poll, 20 s with Spate\'s settings)' ],
  [ 'ak', 'str', '', 'access key (empty: no credentials)' ],
  [ 'sk', 'str', '', 'secret key' ],
  [ 'namespace', 'str', '', 'namespace' ],
  [ 'tls', 'flag', false, 'use TLS towards the endpoint' ],
  [ 'client-log', 'level', null, `also copy the client's own log (normally only in ${CLIENT_LOG}) to stderr ` +
    'at LEVEL: DEBUG, INFO, WARN or ERROR' ],
];

function usage() {
  const lines = [ 'usage: node interop.js --endpoint HOST:PORT --topic TOPIC [--group GROUP] --scenario SCENARIO [options]', '',
    'Run one interop scenario against a RocketMQ 5 gRPC endpoint with the official Node.js client; prints one JSON line.', '' ];
  for (const [ name, type, def, help ] of OPTIONS) {
    const meta = type === 'flag' ? '' : ` ${{ str: 'S', int: 'N', float: 'X', level: 'LEVEL' }[type]}`;
    const d = def === null || def === '' || type === 'flag' ? '' : ` (default ${def})`;
    lines.push(`  --${name}${meta}`.padEnd(30) + ` ${help}${d}`);
  }
  return lines.join('\n') + '\n';
}

class UsageError extends Error {}

function parseArgs(argv) {
  const spec = new Map(OPTIONS.map(o => [ o[0], o ]));
  const args = {};
  for (const [ name, , def ] of OPTIONS) args[name.replace(/-/g, '_')] = def;
  args.await_secs = args.await;
  for (let k = 0; k < argv.length; k++) {
    const token = argv[k];
    if (token === '-h' || token === '--help') {
      fs.writeSync(1, usage());
      process.exit(EXIT_OK);
    }
    if (!token.startsWith('--')) throw new UsageError(`unrecognized argument: ${token}`);
    const eq = token.indexOf('=');
    const name = eq < 0 ? token.slice(2) : token.slice(2, eq);
    const o = spec.get(name);
    if (!o) throw new UsageError(`unrecognized argument: ${token}`);
    const key = name.replace(/-/g, '_');
    if (o[1] === 'flag') {
      if (eq >= 0) throw new UsageError(`--${name} takes no value`);
      args[key] = true;
      continue;
    }
    let value;
    if (eq >= 0) {
      value = token.slice(eq + 1);
    } else {
      if (k + 1 >= argv.length) throw new UsageError(`--${name} expects a value`);
      value = argv[++k];
    }
    if (o[1] === 'int') {
      if (!/^[-+]?\d+$/.test(value.trim())) throw new UsageError(`--${name}: invalid integer value: ${JSON.stringify(value)}`);
      value = parseInt(value, 10);
    } else if (o[1] === 'float') {
      const v = Number(value);
      if (value.trim() === '' || !Number.isFinite(v)) throw new UsageError(`--${name}: invalid number: ${JSON.stringify(value)}`);
      value = v;
    }
    args[key] = value;
  }
  args.await_secs = args.await;
  delete args.await;

  for (const name of [ 'endpoint', 'topic', 'scenario' ]) {
    if (args[name] === null) throw new UsageError(`--${name} is required`);
  }
  if (!SCENARIOS.includes(args.scenario)) {
    throw new UsageError(`--scenario: invalid choice ${JSON.stringify(args.scenario)} (choose from ${SCENARIOS.join(', ')})`);
  }
  if (!NAME_PATTERN.test(args.topic)) throw new UsageError(`--topic ${JSON.stringify(args.topic)} does not match [%a-zA-Z0-9_-]+`);
  if (args.scenario !== 'send-only') {
    if (!args.group) throw new UsageError(`--group is required for scenario ${args.scenario}`);
    if (!NAME_PATTERN.test(args.group)) throw new UsageError(`--group ${JSON.stringify(args.group)} does not match [%a-zA-Z0-9_-]+`);
  }
  if (args.tag !== null && (!args.tag.trim() || args.tag.includes('|'))) {
    throw new UsageError("--tag must be non-blank and must not contain '|'");
  }
  if (!args.endpoint.includes(':')) throw new UsageError('--endpoint must be HOST:PORT');
  for (const name of [ 'count', 'invisible', 'short_invisible', 'await_secs', 'batch', 'request_timeout', 'groups' ]) {
    if (args[name] < 1) throw new UsageError(`--${name === 'await_secs' ? 'await' : name.replace(/_/g, '-')} must be at least 1`);
  }
  for (const name of [ 'decoys', 'delay', 'recv_timeout', 'quiet_receives', 'nack', 'push_quiet', 'slack' ]) {
    if (args[name] < 0) throw new UsageError(`--${name.replace(/_/g, '-')} must not be negative`);
  }
  if (!(args.watchdog > 0)) throw new UsageError('--watchdog must be positive');
  if (args.shutdown_timeout === null) args.shutdown_timeout = args.scenario === 'push' ? 40 : 15;
  if (!(args.shutdown_timeout > 0)) throw new UsageError('--shutdown-timeout must be positive');
  if (args.client_log !== null) {
    args.client_log = args.client_log.toUpperCase();
    if (!(args.client_log in LEVELS)) throw new UsageError('--client-log must be DEBUG, INFO, WARN or ERROR');
  }
  return args;
}

// ------------------------------------------------------------------ main

function loadClient() {
  const api = require(PACKAGE); // the official client, rocketmq-client-nodejs
  // Enums that the package index does not re-export; they come from the package's own protobuf code.
  const pb = require(`${PACKAGE}/proto/apache/rocketmq/v2/definition_pb`);
  const codeNames = new Map(Object.entries(pb.Code).map(([ k, v ]) => [ v, k ]));
  return {
    ...api,
    TransactionResolution: pb.TransactionResolution,
    codeName: code => codeNames.get(code) || 'UNKNOWN_CODE',
    version: require(`${PACKAGE}/package.json`).version,
  };
}

async function main(argv) {
  let args;
  try {
    args = parseArgs(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    fs.writeSync(2, `${usage()}interop.js: error: ${e.message}\n`);
    process.exit(EXIT_USAGE);
  }
  const base = { scenario: args.scenario, endpoint: args.endpoint, topic: args.topic, group: args.group };
  let ctx = null;

  setTimeout(() => {
    const result = { ...(ctx ? ctx.result : base) };
    const phase = ctx ? ctx.phase : 'loading the client';
    Object.assign(result, { ok: false, watchdog: true, error: `watchdog: run exceeded ${args.watchdog}s (stuck while ${phase})` });
    emitAndExit(result, EXIT_WATCHDOG);
  }, args.watchdog * 1000);

  let api;
  try {
    api = loadClient();
  } catch (e) {
    emitAndExit({ ...base, ok: false, error: `cannot load ${PACKAGE}: ${describeError(e)} (run npm ci next to interop.js)` }, EXIT_FAIL);
  }

  const log = new ClientLog(api, args.client_log);
  ctx = new Ctx(args, api, log);
  // The client has fire-and-forget callbacks (telemetry reconnects, timers); an error
  // thrown there must not kill the run without its JSON line. It is reported instead.
  const stray = [];
  const onStray = e => { if (stray.length < 5) stray.push(describeError(e, api)); };
  process.on('uncaughtException', onStray);
  process.on('unhandledRejection', onStray);

  let code = EXIT_OK;
  try {
    await RUNNERS[args.scenario](ctx);
    ctx.result.ok = true;
  } catch (e) {
    const error = e instanceof Fail ? e.message : `unexpected ${describeError(e, api)}`;
    Object.assign(ctx.result, { ok: false, error, failed_while: ctx.phase });
    code = EXIT_FAIL;
  }
  if (args.scenario !== 'push') { // the PushConsumer receives and acks by itself
    ctx.result.receive_calls = ctx.receiveCalls;
    ctx.result.acks = ctx.acks;
  }
  ctx.result.elapsed_ms = Date.now() - ctx.started;
  ctx.phase = 'shutting down clients';
  ctx.result.shutdown = await ctx.shutdownAll();
  ctx.result.client_log_errors = log.errors;
  if (log.firstErrors.length) ctx.result.client_log_first_errors = log.firstErrors;
  if (stray.length) ctx.result.client_stray_errors = stray;
  emitAndExit(ctx.result, code);
}

main(process.argv.slice(2)).catch(e => {
  emitAndExit({ ok: false, error: `internal error in interop.js: ${describeError(e)}` }, EXIT_FAIL);
});
