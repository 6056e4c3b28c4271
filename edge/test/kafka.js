'use strict';
// Test helpers over kafkajs: read a whole topic, produce raw events.

const { Kafka, logLevel } = require('kafkajs');

function client(brokers) {
  return new Kafka({ clientId: 'kafka-ml-edge-test', brokers: brokers.split(','), logLevel: logLevel.WARN });
}

/**
 * Every record of `topic` from the beginning: read until `expected` records arrived and then
 * `quietMs` passed without another (so a duplicate past the expected count is seen too), or
 * until `timeoutMs`. Records: { partition, offset, key, value, headers } with Buffers.
 */
async function readTopic(brokers, topic, expected, { quietMs = 3000, timeoutMs = 120000 } = {}) {
  const consumer = client(brokers).consumer({
    groupId: `edge-test-read-${topic}-${process.pid}-${Date.now()}`,
    sessionTimeout: 10000,
    rebalanceTimeout: 10000,
  });
  const records = [];
  let last = Date.now();
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      records.push({ partition, offset: message.offset, key: message.key, value: message.value, headers: message.headers });
      last = Date.now();
    },
  });
  const started = Date.now();
  await new Promise((resolve) => {
    const timer = setInterval(() => {
      const done = records.length >= expected && Date.now() - last >= quietMs;
      if (done || Date.now() - started > timeoutMs) {
        clearInterval(timer);
        resolve();
      }
    }, 100);
  });
  await consumer.disconnect();
  return records;
}

module.exports = { client, readTopic };
