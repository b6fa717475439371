'use strict';
// Spate vs. the stock ali-ons client (pure JS, signs every request with
// AccessKey / Signature / OnsChannel and sends JSON numbers and booleans in
// extFields). Starts nothing: run.sh starts spate and makes the users.
//
// Environment (all required unless noted):
//   ONS_NAMESRV            name server, host:port (ali-ons' `nameSrv` option:
//                          no HTTP address lookup at Aliyun's onsAddr)
//   ONS_TOPIC, ONS_GROUP   topic and consumer group the users are granted
//   ONS_ACCESS_KEY, ONS_SECRET_KEY   a user with Pub+Sub on the topic, Sub on the group
//   ONS_SUB_ONLY_ACCESS_KEY, ONS_SUB_ONLY_SECRET_KEY   a user with Sub only
//   ONS_MESSAGES           how many messages to send (default 20)
//   ONS_VERBOSE=1          also print ali-ons' info log
// Exits 0 when every check passed, 1 otherwise (the failing check is named).

const assert = require('assert');
const { Producer, Consumer, Message } = require('ali-ons');
// The layer under Producer: one signed request per call, no retries, so the
// broker's own answer (code and remark) reaches us unchanged.
const MQClientAPI = require('ali-ons/lib/mq_client_api');
const ResponseCode = require('ali-ons/lib/protocol/response_code');

const NO_PERMISSION = ResponseCode.NO_PERMISSION; // 16, as RocketMQ's
const CONSUME_TIMEOUT_MS = 30000;
const QUIET_PERIOD_MS = 2000;
const CLOSE_TIMEOUT_MS = 5000;

function env(name, fallback) {
  const value = process.env[name] || fallback;
  if (!value) {
    throw new Error(`environment variable ${name} is required`);
  }
  return value;
}

const nameSrv = env('ONS_NAMESRV');
const topic = env('ONS_TOPIC');
const group = env('ONS_GROUP');
const good = { accessKey: env('ONS_ACCESS_KEY'), secretKey: env('ONS_SECRET_KEY') };
const subOnly = { accessKey: env('ONS_SUB_ONLY_ACCESS_KEY'), secretKey: env('ONS_SUB_ONLY_SECRET_KEY') };
const wrongSecret = { accessKey: good.accessKey, secretKey: good.secretKey + '-wrong' };
const messages = Number(env('ONS_MESSAGES', '20'));
const runId = `${process.pid}_${Date.now()}`;

// ali-ons asserts an httpclient even when `nameSrv` makes it unused; this one
// fails loudly if it ever is used (it would mean an Aliyun address lookup).
const noHttp = {
  request() {
    throw new Error('ali-ons tried an HTTP name-server lookup despite nameSrv');
  },
};

// ali-ons logs refused route lookups and heartbeats at warn/error; keep them
// (prefixed) so a failure can be read, but they are expected here.
const verbose = process.env.ONS_VERBOSE === '1';
const stamp = () => new Date().toISOString();
const logger = {
  info(...args) { if (verbose) console.log(stamp(), '[ali-ons info]', ...args); },
  debug() {},
  warn(...args) { console.warn(stamp(), '[ali-ons warn]', ...args); },
  error(...args) { console.warn(stamp(), '[ali-ons error]', ...args); },
};

// Each client gets its own instanceName: ali-ons shares one connection pool
// (and so one set of credentials) per clientIP@instanceName.
function clientOptions(creds, instanceName) {
  return Object.assign({ nameSrv, httpclient: noHttp, logger, instanceName }, creds);
}

function withTimeout(what, ms, promise) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

function makeMessage(i) {
  const msg = new Message(topic, i % 2 ? 'TagB' : 'TagA', `ali-ons #${i} ${runId} Grüße ✓`);
  msg.keys = [ `ons-key-${i}` ];
  return msg;
}

// Expects `promise` to be refused with NO_PERMISSION; returns the error.
async function expectRefused(what, promise) {
  let result;
  try {
    result = await withTimeout(what, 15000, promise);
  } catch (err) {
    console.log(`${what}: refused, code ${err.code}, ${err.name}: ${err.message}`);
    return err;
  }
  throw new Error(`${what}: expected a refusal, got ${JSON.stringify(result)}`);
}

async function main() {
  // --- valid credentials: produce, then consume everything ---------------
  const producer = new Producer(Object.assign(clientOptions(good, `ons_p_${runId}`), {
    producerGroup: `ons_producer_${runId}`,
    retryTimesWhenSendFailed: 0,
  }));
  producer.on('error', err => console.warn('[producer error]', err.message));
  await withTimeout('producer start', 15000, producer.ready());

  const sentBodies = new Set();
  let brokerAddr;
  let brokerName;
  for (let i = 0; i < messages; i++) {
    const msg = makeMessage(i);
    const body = msg.body.toString();
    const result = await withTimeout(`send #${i}`, 15000, producer.send(msg));
    assert.strictEqual(result.sendStatus, 'SEND_OK', `send #${i}: ${JSON.stringify(result)}`);
    assert.ok(result.msgId, `send #${i}: no msgId`);
    sentBodies.add(body);
    brokerName = result.messageQueue.brokerName;
  }
  brokerAddr = producer._mqClient.findBrokerAddressInPublish(brokerName);
  assert.ok(brokerAddr, `no address known for broker ${brokerName}`);
  console.log(`ali-ons producer: ${messages} messages sent to ${topic} (broker ${brokerName} at ${brokerAddr})`);

  // The first delivery of message #0 asks for a retry: it must come back
  // through the group's retry topic (%RETRY%<group>), which the group's Sub
  // covers.
  const retriedBody = makeMessage(0).body.toString();
  let retriedBack = false;
  const received = new Map();
  const consumer = new Consumer(Object.assign(clientOptions(good, `ons_c_${runId}`), {
    consumerGroup: group,
    consumeFromWhere: 'CONSUME_FROM_FIRST_OFFSET',
    // ali-ons looks up its retry topic's route right after its first
    // heartbeat, which is what makes the broker create that topic; Spate
    // tells the name server about it a moment later (upstream does it
    // inside the heartbeat), so the first look-up misses and the default
    // 30 s poll (then the 10 s rebalance) would delay the retried message
    // that long.
    pollNameServerInteval: 1000,
    rebalanceInterval: 1000,
  }));
  consumer.on('error', err => console.warn('[consumer error]', err.message));
  consumer.subscribe(topic, '*', async msg => {
    const body = msg.body.toString();
    received.set(body, (received.get(body) || 0) + 1);
    if (body === retriedBody) {
      if (msg.reconsumeTimes === 0) {
        return Consumer.ACTION_RETRY;
      }
      retriedBack = true;
    }
  });
  await withTimeout('consumer start', 15000, consumer.ready());
  const deadline = Date.now() + CONSUME_TIMEOUT_MS;
  while ((received.size < sentBodies.size || !retriedBack) && Date.now() < deadline) {
    await sleep(100);
  }
  assert.ok(retriedBack, 'the message failed once never came back through the retry topic');
  for (const body of sentBodies) {
    assert.ok(received.has(body), `ali-ons consumer never received "${body}" (got ${received.size} of ${messages})`);
  }
  for (const body of received.keys()) {
    assert.ok(sentBodies.has(body), `ali-ons consumer received an unexpected message "${body}"`);
  }
  console.log(`ali-ons consumer: all ${messages} messages received in group ${group}, the failed one back through the retry topic`);

  // --- refused: wrong secret, through the Producer (name server refuses) ---
  const badProducer = new Producer(Object.assign(clientOptions(wrongSecret, `ons_bad_${runId}`), {
    producerGroup: `ons_bad_producer_${runId}`,
    retryTimesWhenSendFailed: 0,
  }));
  badProducer.on('error', () => {});
  await withTimeout('wrong-secret producer start', 15000, badProducer.ready());
  const routeErr = await expectRefused('wrong secret, Producer.send', badProducer.send(makeMessage(messages)));
  assert.strictEqual(routeErr.code, NO_PERMISSION, `wrong secret: code ${routeErr.code}, want ${NO_PERMISSION}`);
  assert.ok(routeErr.message.includes(good.accessKey), `wrong secret: remark does not name the access key: ${routeErr.message}`);

  // --- refused: a user without Pub, through the Producer --------------------
  // The route lookup passes (Sub allows it); the broker refuses the send.
  // ali-ons' Producer treats NO_PERMISSION as retryable and, once out of
  // tries, throws its own summary without the code (see the raw send below).
  const subOnlyProducer = new Producer(Object.assign(clientOptions(subOnly, `ons_sub_${runId}`), {
    producerGroup: `ons_sub_producer_${runId}`,
    retryTimesWhenSendFailed: 0,
  }));
  subOnlyProducer.on('error', () => {});
  await withTimeout('sub-only producer start', 15000, subOnlyProducer.ready());
  const noPubErr = await expectRefused('user without Pub, Producer.send', subOnlyProducer.send(makeMessage(messages)));
  assert.ok(/still failed/.test(noPubErr.message), `user without Pub: unexpected error ${noPubErr.message}`);

  // --- refused by the broker itself: signed SEND_MESSAGE_V2 straight to it --
  // The header carries numbers (queueId, sysFlag, bornTimestamp, ...) and a
  // boolean (unitMode) as JSON values; a valid send above proved the broker
  // verifies their JS toString() forms, these prove it refuses bad ones.
  async function rawSend(creds, what) {
    const api = new MQClientAPI(clientOptions(creds, `ons_raw_${what}_${runId}`));
    api.on('error', () => {});
    await api.ready();
    const msg = makeMessage(messages + 1);
    const header = {
      producerGroup: `ons_raw_${runId}`,
      topic,
      defaultTopic: 'TBW102',
      defaultTopicQueueNums: 4,
      queueId: 0,
      sysFlag: 0,
      bornTimestamp: Date.now(),
      flag: 0,
      properties: `TAGS\u0001TagA\u0002`,
      reconsumeTimes: 0,
      unitMode: false,
    };
    try {
      return await expectRefused(`${what}, SEND_MESSAGE_V2 to the broker`,
        api.sendMessage(brokerAddr, brokerName, msg, header, 5000));
    } finally {
      await api.close();
    }
  }
  const wrongErr = await rawSend(wrongSecret, 'wrong secret');
  assert.strictEqual(wrongErr.code, NO_PERMISSION, `broker, wrong secret: code ${wrongErr.code}`);
  const subOnlyErr = await rawSend(subOnly, 'user without Pub');
  assert.strictEqual(subOnlyErr.code, NO_PERMISSION, `broker, no Pub: code ${subOnlyErr.code}`);
  assert.ok(subOnlyErr.message.includes(topic), `broker, no Pub: remark does not name the topic: ${subOnlyErr.message}`);

  // --- nothing refused was delivered -----------------------------------------
  await sleep(QUIET_PERIOD_MS);
  assert.strictEqual(received.size, sentBodies.size,
    `after the refused sends the consumer saw ${received.size} distinct messages, want ${sentBodies.size}`);
  const duplicates = Array.from(received.values()).reduce((a, n) => a + n - 1, 0);
  console.log(`ali-ons consumer: still exactly ${messages} distinct messages (${duplicates} redelivered, the retried one included) after the refused sends`);

  await Promise.all([ producer, badProducer, subOnlyProducer, consumer ].map(c =>
    withTimeout('close', CLOSE_TIMEOUT_MS, c.close()).catch(err => console.warn('note:', err.message))));
}

main().then(() => {
  console.log('ali-ons interop: all checks passed');
  process.exit(0);
}, err => {
  console.error(`ali-ons interop FAILED: ${err.stack || err}`);
  process.exit(1);
});
