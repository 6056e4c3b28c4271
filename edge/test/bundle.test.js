'use strict';
// The bundle reader on its own: references, aliases and the latest version, over an in-memory
// store (the checks of the files themselves are the WebAssembly module's, tested in
// edge.test.js against the real scorer).

const test = require('node:test');
const assert = require('node:assert/strict');

const enc = (s) => new TextEncoder().encode(s);

function memoryStore(files) {
  const read = async (p) => (p in files ? enc(files[p]) : null);
  const list = async (dir) => [...new Set(Object.keys(files)
    .filter((p) => p.startsWith(`${dir}/`))
    .map((p) => p.slice(dir.length + 1).split('/')[0]))];
  return { read, list };
}

test('references parse as the scorer parses them', async () => {
  const { parseRef } = await import('../lib/bundle.mjs');
  assert.deepEqual(parseRef('m'), { name: 'm', latest: true });
  assert.deepEqual(parseRef('m@3'), { name: 'm', version: 3 });
  assert.deepEqual(parseRef('m@champion'), { name: 'm', alias: 'champion' });
  assert.throws(() => parseRef('m@'), /not a model reference/);
  assert.throws(() => parseRef('../x'), /not a model reference/);
});

test('an alias, a version and the latest version resolve to their directories', async () => {
  const { readBundle } = await import('../lib/bundle.mjs');
  const m = (v) => JSON.stringify({ name: 'm', version: v, files: { 'a.txt': 'x' } });
  const { read, list } = memoryStore({
    'models/m/versions/1/manifest.json': m(1),
    'models/m/versions/1/a.txt': 'one',
    'models/m/versions/2/manifest.json': m(2),
    'models/m/versions/2/a.txt': 'two',
    // A version without a manifest is an interrupted publish: never the latest.
    'models/m/versions/3/a.txt': 'three',
    'models/m/aliases/champion': JSON.stringify({ version: 1, set_at: 'now' }),
  });
  const text = (b) => new TextDecoder().decode(b.files.get('a.txt'));
  assert.equal(text(await readBundle(read, 'm@champion', list)), 'one');
  assert.equal(text(await readBundle(read, 'm@2', list)), 'two');
  const latest = await readBundle(read, 'm', list);
  assert.equal(latest.dir, 'models/m/versions/2');
  assert.equal(text(latest), 'two');
  await assert.rejects(readBundle(read, 'm@challenger', list), /m@challenger not found \(no models\/m\/aliases\/challenger\)/);
  await assert.rejects(readBundle(read, 'm@9', list), /m@9 not found/);
});

test('a listed file with a directory part is never read outside the version', async () => {
  const { readBundle } = await import('../lib/bundle.mjs');
  let asked = [];
  const read = async (p) => {
    asked.push(p);
    if (p === 'models/m/versions/1/manifest.json') {
      return enc(JSON.stringify({ files: { '../../../etc/passwd': 'x' } }));
    }
    return null;
  };
  const b = await readBundle(read, 'm@1');
  assert.deepEqual(asked, ['models/m/versions/1/manifest.json']);
  // Handed to the module empty, which refuses the name (edge.test.js).
  assert.equal(b.files.get('../../../etc/passwd').length, 0);
});
