#!/usr/bin/env node
'use strict';
// The edge app: consume a Kafka topic with kafkajs, score every event with the WebAssembly build
// of the scorer's core, produce predictions, and send what cannot be scored to a dead-letter
// topic with the reason and the source position, as `scorer run` does. At-least-once: a batch's
// offsets are committed only after every prediction and dead letter of it is acknowledged.
// Window state is kept per input partition (windows keyed by the partition key), in memory.
//
//   node app.js --brokers HOST:PORT --store file:///path/model-store --model flights_delay@champion \
//     --input flights --output predictions --dlq dead-letter --group edge [--exit-when-idle 5]
//
// With --exit-when-idle S it stops after S seconds without a message, commits, leaves the group
// and prints a JSON summary: {"consumed", "predicted", "filtered", "dead_lettered"}.

const { Kafka, logLevel } = require('kafkajs');
const { readStore, scorerFromFiles } = require('./lib');

const USAGE =
  'usage: app.js --brokers B --store S --model M --input T --output T --dlq T --group G [--exit-when-idle SECONDS]';

function parseArgs(argv) {
  const a = {
    brokers: process.env.KML_BROKERS,
    store: process.env.KML_STORE,
    model: undefined,
    input: undefined,
    output: undefined,
    dlq: undefined,
    group: undefined,
    exitWhenIdle: undefined,
  };
  const names = {
    '--brokers': 'brokers', '--store': 'store', '--model': 'model', '--input': 'input',
    '--output': 'output', '--dlq': 'dlq', '--group': 'group', '--exit-when-idle': 'exitWhenIdle',
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = names[argv[i]];
    if (!key || argv[i + 1] === undefined) throw new Error(`unexpected argument \`${argv[i]}\`\n${USAGE}`);
    a[key] = argv[i + 1];
  }
  for (const k of ['brokers', 'store', 'model', 'input', 'output', 'dlq', 'group']) {
    if (!a[k]) throw new Error(`--${k} is required\n${USAGE}`);
  }
  if (a.exitWhenIdle !== undefined) {
    const s = Number(a.exitWhenIdle);
    if (!(s > 0)) throw new Error(`--exit-when-idle takes a number of seconds, not \`${a.exitWhenIdle}\``);
    a.exitWhenIdle = s;
  }
  return a;
}

/** The error header is cut to this many bytes at a character boundary, as the scorer cuts it. */
const MAX_ERROR_BYTES = 2048;

function cutError(text) {
  const bytes = Buffer.from(text);
  if (bytes.length <= MAX_ERROR_BYTES) return bytes;
  let end = MAX_ERROR_BYTES;
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  // Read the bundle once and check it before touching the broker: a bad bundle is refused with
  // its reason. Each partition gets its own scorer (window state) from the same files.
  const { dir, files } = await readStore(args);
  let spare = await scorerFromFiles(dir, files);
  const scorers = new Map();
  const scorerOf = async (partition) => {
    if (!scorers.has(partition)) {
      scorers.set(partition, spare || (await scorerFromFiles(dir, files)));
      spare = null;
    }
    return scorers.get(partition);
  };

  const kafka = new Kafka({
    clientId: 'kafka-ml-edge',
    brokers: args.brokers.split(','),
    logLevel: logLevel.WARN,
  });
  const producer = kafka.producer({ allowAutoTopicCreation: true });
  // Short session and rebalance timeouts: a member that died is replaced in seconds.
  const consumer = kafka.consumer({ groupId: args.group, sessionTimeout: 10000, rebalanceTimeout: 10000 });
  const counts = { consumed: 0, predicted: 0, filtered: 0, dead_lettered: 0 };
  let lastMessage = Date.now();
  let stopping = false;

  await producer.connect();
  await consumer.connect();
  await consumer.subscribe({ topic: args.input, fromBeginning: true });

  await consumer.run({
    eachBatchAutoResolve: false,
    eachBatch: async ({ batch, resolveOffset, heartbeat, commitOffsetsIfNecessary, isRunning }) => {
      const scorer = await scorerOf(batch.partition);
      const predictions = [];
      const dead = [];
      for (const m of batch.messages) {
        if (!isRunning()) break;
        counts.consumed++;
        lastMessage = Date.now();
        const pos = { topic: batch.topic, partition: batch.partition, offset: BigInt(m.offset) };
        const r = m.value === null
          ? { kind: 'dead', reason: 'empty message: no payload' }
          : scorer.score(m.value, pos);
        if (r.kind === 'scored') {
          const time = JSON.parse(r.prediction).event_time_ms;
          predictions.push({ key: r.key, value: r.prediction, timestamp: String(time) });
        } else if (r.kind === 'filtered') {
          counts.filtered++;
        } else {
          dead.push({
            key: m.key,
            value: m.value === null ? Buffer.alloc(0) : m.value, // as the scorer: a null value dead-letters empty
            timestamp: m.timestamp,
            headers: {
              'kml.source.topic': batch.topic,
              'kml.source.partition': String(batch.partition),
              'kml.source.offset': m.offset,
              'kml.error': cutError(r.reason),
            },
          });
        }
      }
      // Acknowledged before the offsets move: at-least-once.
      const topicMessages = [];
      if (predictions.length) topicMessages.push({ topic: args.output, messages: predictions });
      if (dead.length) topicMessages.push({ topic: args.dlq, messages: dead });
      if (topicMessages.length) await producer.sendBatch({ topicMessages, acks: -1 });
      counts.predicted += predictions.length;
      counts.dead_lettered += dead.length;
      const last = batch.messages[batch.messages.length - 1];
      if (last) resolveOffset(last.offset);
      await commitOffsetsIfNecessary();
      await heartbeat();
    },
  });

  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await consumer.disconnect(); // commits what is resolved and leaves the group
    await producer.disconnect();
    process.stdout.write(`${JSON.stringify(counts)}\n`);
  };
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => stop().then(() => process.exit(0)));
  if (args.exitWhenIdle !== undefined) {
    await new Promise((resolve) => {
      const timer = setInterval(() => {
        if (Date.now() - lastMessage >= args.exitWhenIdle * 1000) {
          clearInterval(timer);
          resolve();
        }
      }, 200);
    });
    await stop();
  }
}

main().catch((e) => {
  process.stderr.write(`kafka-ml-edge: ${e.message}\n`);
  process.exit(1);
});
