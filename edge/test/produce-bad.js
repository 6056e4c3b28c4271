'use strict';
// Append malformed events to a topic (ci/edge-check), the bytes a careless producer writes, so
// that `scorer replay` and the edge app dead-letter the same messages: prints how many.
//   node test/produce-bad.js BROKERS TOPIC

const { client } = require('./kafka');

const BAD = [
  'not json at all',
  '{"year": 2013, "month": 1',
  '{}',
  '[1, 2, 3]',
  '{"year": "twenty", "month": 1, "day": 1}',
  Buffer.from([0xff, 0xfe, 0x7b]),
];

async function main() {
  const [brokers, topic] = process.argv.slice(2);
  const producer = client(brokers).producer();
  await producer.connect();
  const messages = BAD.map((value, i) => ({ key: `bad-${i}`, value }));
  messages.push({ key: 'tombstone', value: null });
  await producer.send({ topic, messages, acks: -1 });
  await producer.disconnect();
  process.stdout.write(`${messages.length}\n`);
}

main().catch((e) => {
  process.stderr.write(`produce-bad: ${e.message}\n`);
  process.exit(1);
});
