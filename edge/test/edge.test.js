'use strict';
// The WebAssembly scoring core and the kafkajs edge app against the real scorer's output.
// ci/edge-check prepares what these tests compare with and passes it in the environment:
//   KML_EDGE_STORE, KML_EDGE_MODEL   the model store and reference (trainer fit on the fixtures)
//   KML_EDGE_EVENTS                  the fixture events, JSON lines, in the order fed to the topic
//   KML_EDGE_REPLAY                  `scorer replay --out` over that topic: the reference predictions
//   KML_BROKERS, KML_EDGE_INPUT      the broker (tansu) and the topic: the fixtures, then bad events
//   KML_EDGE_REPLAY_DLQ, KML_EDGE_BAD  `scorer replay --dlq`'s dead-letter topic and how many bad events
// Without them (a plain `npm test`) these tests are skipped, saying so.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');
const { spawn } = require('node:child_process');
const { fileURLToPath } = require('node:url');
const { loadScorer, scorerFromFiles, readBundle } = require('../lib');
const { readTopic } = require('./kafka');

const env = process.env;
const ready = ['KML_EDGE_STORE', 'KML_EDGE_MODEL', 'KML_EDGE_EVENTS', 'KML_EDGE_REPLAY'].every((k) => env[k]);
const skip = ready ? false : 'needs the environment ci/edge-check prepares';
const brokerSkip = skip || (env.KML_BROKERS && env.KML_EDGE_INPUT ? false : 'needs a broker (ci/edge-check)');

const lines = (file) => fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.length > 0);

test('every fixture event scores bit-identically to scorer replay', { skip }, async () => {
  const scorer = await loadScorer({ store: env.KML_EDGE_STORE, model: env.KML_EDGE_MODEL });
  const events = lines(env.KML_EDGE_EVENTS);
  const replay = lines(env.KML_EDGE_REPLAY);
  const got = [];
  const kinds = { scored: 0, filtered: 0, dead: 0 };
  events.forEach((e, i) => {
    const r = scorer.score(e, { topic: env.KML_EDGE_INPUT, partition: 0, offset: BigInt(i) });
    kinds[r.kind]++;
    if (r.kind === 'scored') got.push(r.prediction);
    if (r.kind === 'dead') assert.fail(`event ${i} dead-lettered: ${r.reason}`);
  });
  assert.equal(got.length, replay.length);
  for (let i = 0; i < replay.length; i++) {
    // The whole record: key, event time, score (shortest round-trip digits: equal text is equal
    // bits), decision, model, fingerprint and the source position.
    assert.equal(got[i], replay[i], `prediction ${i}`);
  }
  assert.equal(kinds.scored + kinds.filtered, events.length);
  console.log(`wasm: ${kinds.scored} of ${replay.length} predictions byte-identical to scorer replay's, ${kinds.filtered} filtered, 0 dead`);
});

/** The bundle's files, to tamper with. */
async function files() {
  const root = fileURLToPath(env.KML_EDGE_STORE);
  const read = async (rel) => {
    try {
      return new Uint8Array(fs.readFileSync(path.join(root, rel)));
    } catch {
      return null;
    }
  };
  return readBundle(read, env.KML_EDGE_MODEL);
}

const sha256 = (bytes) => crypto.createHash('sha256').update(bytes).digest('hex');
const json = (bytes) => JSON.parse(new TextDecoder().decode(bytes));
const bytesOf = (value) => new TextEncoder().encode(JSON.stringify(value));

test('a bundle the scorer would refuse is refused, naming what is wrong', { skip }, async () => {
  const { dir, files: good } = await files();
  assert.ok((await scorerFromFiles(dir, good)).model.startsWith('flights_delay@'));

  const flipped = new Map(good);
  const model = new Uint8Array(good.get('model.json'));
  model[10] ^= 1;
  flipped.set('model.json', model);
  await assert.rejects(scorerFromFiles(dir, flipped), /file `model\.json` is corrupt: sha256 [0-9a-f]{64}, manifest says [0-9a-f]{64}/);

  const missing = new Map(good);
  missing.delete('fitted.json');
  await assert.rejects(scorerFromFiles(dir, missing), /fitted\.json`, which the manifest lists, is missing/);

  const manifest = json(good.get('manifest.json'));
  const fingerprint = new Map(good);
  fingerprint.set('manifest.json', bytesOf({ ...manifest, feature_fingerprint: '0'.repeat(64) }));
  await assert.rejects(scorerFromFiles(dir, fingerprint), /feature fingerprint [0-9a-f]+ of the bundle's pipeline and state differs from the manifest's 0{64}/);

  // Checksums made to match, but a model that takes one input too few.
  const m = json(good.get('model.json'));
  const shrunk = { ...m, weights: m.weights.slice(1) };
  const shape = new Map(good);
  shape.set('model.json', bytesOf(shrunk));
  shape.set('manifest.json', bytesOf({ ...manifest, files: { ...manifest.files, 'model.json': sha256(bytesOf(shrunk)) } }));
  await assert.rejects(scorerFromFiles(dir, shape), /input signature: model\.json does not take the \d+ inputs that fitted\.json encodes/);

  const escape = new Map(good);
  escape.set('manifest.json', bytesOf({ ...manifest, files: { ...manifest.files, '../x': 'ab' } }));
  escape.set('../x', new Uint8Array());
  await assert.rejects(scorerFromFiles(dir, escape), /lists `\.\.\/x`, which is not a usable bundle file name/);
});

function runApp(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(__dirname, '..', 'app.js'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out, err }));
  });
}

const header = (r, name) => (r.headers[name] === undefined ? undefined : r.headers[name].toString());

test('the kafkajs edge app scores a topic on tansu as scorer replay does, dead letters included', { skip: brokerSkip, timeout: 300000 }, async () => {
  const replay = lines(env.KML_EDGE_REPLAY);
  const bad = Number(env.KML_EDGE_BAD);
  const events = lines(env.KML_EDGE_EVENTS).length;
  const suffix = `${process.pid}-${Date.now()}`;
  const out = `edge-predictions-${suffix}`;
  const dlq = `edge-dead-letter-${suffix}`;
  const run = await runApp([
    '--brokers', env.KML_BROKERS, '--store', env.KML_EDGE_STORE, '--model', env.KML_EDGE_MODEL,
    '--input', env.KML_EDGE_INPUT, '--output', out, '--dlq', dlq, '--group', `edge-${suffix}`,
    '--exit-when-idle', '5',
  ]);
  assert.equal(run.code, 0, run.err);
  const summary = JSON.parse(run.out.trim().split('\n').pop());
  assert.equal(summary.consumed, events + bad);
  assert.equal(summary.predicted, replay.length);
  assert.equal(summary.dead_lettered, bad);
  assert.equal(summary.predicted + summary.filtered + summary.dead_lettered, summary.consumed);

  // Every prediction once, byte for byte the scorer's, found by its source offset.
  const want = new Map(replay.map((l) => [JSON.parse(l).offset, l]));
  const got = await readTopic(env.KML_BROKERS, out, replay.length);
  const seen = new Map();
  for (const r of got) {
    const text = r.value.toString();
    const offset = JSON.parse(text).offset;
    assert.ok(!seen.has(offset), `offset ${offset} predicted twice`);
    seen.set(offset, text);
    assert.equal(text, want.get(offset), `the prediction of offset ${offset}`);
    assert.equal(r.key.toString(), JSON.parse(text).key);
  }
  assert.equal(seen.size, want.size);

  // Dead letters: the original bytes, the scorer's reason and the source position.
  const reference = await readTopic(env.KML_BROKERS, env.KML_EDGE_REPLAY_DLQ, bad);
  const ours = await readTopic(env.KML_BROKERS, dlq, bad);
  assert.equal(reference.length, bad);
  assert.equal(ours.length, bad);
  const byOffset = new Map(reference.map((r) => [header(r, 'kml.source.offset'), r]));
  for (const r of ours) {
    const o = header(r, 'kml.source.offset');
    const ref = byOffset.get(o);
    assert.ok(ref, `dead letter of offset ${o} has no counterpart in scorer replay's`);
    assert.equal(header(r, 'kml.error'), header(ref, 'kml.error'), `reason of offset ${o}`);
    assert.equal(header(r, 'kml.source.topic'), env.KML_EDGE_INPUT);
    assert.deepEqual(r.value, ref.value, `payload of offset ${o}`);
  }
  console.log(`edge app: ${seen.size} of ${replay.length} predictions byte-identical to scorer replay's; ${ours.length} of ${bad} dead letters with the scorer's reasons`);
});
