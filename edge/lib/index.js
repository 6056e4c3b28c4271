'use strict';
// The edge scoring package for Node: load a bundle from a model store directory and score
// events with the WebAssembly build of the scorer's core (wasm/, built into ../pkg by
// ci/edge-check). Predictions are the scorer's own bytes for the same events in the same order.
//
//   const { loadScorer } = require('kafka-ml-edge');
//   const scorer = await loadScorer({ store: 'file:///path/to/model-store', model: 'flights_delay@champion' });
//   const r = scorer.score(eventBytes, { topic: 'flights', partition: 0, offset: 42n });
//   // r.kind is 'scored' (r.prediction: the JSON record, r.key, r.score, r.decision),
//   // 'filtered' (a pipeline filter dropped it) or 'dead' (r.reason: the dead-letter reason).

const fs = require('node:fs/promises');
const path = require('node:path');
const { fileURLToPath } = require('node:url');
// The reader is an ES module, shared with the browser build (web.mjs).
const bundle = import('./bundle.mjs');

let wasm;
function core() {
  if (!wasm) {
    try {
      wasm = require('../pkg/scoring_wasm.js');
    } catch (e) {
      throw new Error(`the WebAssembly module is not built (run ci/edge-check; the README, "The edge", has the steps): ${e.message}`);
    }
  }
  return wasm;
}

/** A store URL (`file://...`) or a plain directory path, as a directory path. */
function storeDir(store) {
  if (store.startsWith('file://')) return fileURLToPath(store);
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(store)) {
    throw new Error(`store \`${store}\`: the edge package reads local directories (file://) only`);
  }
  return store;
}

async function readOrNull(file) {
  try {
    return new Uint8Array(await fs.readFile(file));
  } catch (e) {
    if (e.code === 'ENOENT') return null;
    throw new Error(`cannot read ${file}: ${e.message}`);
  }
}

// The scorer object is an ES module too, shared with web.mjs.
const scorer = import('./scorer.mjs');

/** Scorer from files already read: a Map of file name -> bytes, manifest.json included. */
async function scorerFromFiles(dir, files) {
  return (await scorer).fromFiles(core(), dir, files);
}

/**
 * Read `model`'s files (name, name@version or name@alias) from a store directory, unchecked:
 * { dir, files }, for scorerFromFiles (once per stream or partition, without reading again).
 */
async function readStore({ store, model }) {
  const root = storeDir(store);
  const read = (rel) => readOrNull(path.join(root, rel));
  const list = async (rel) => {
    try {
      return await fs.readdir(path.join(root, rel));
    } catch (e) {
      if (e.code === 'ENOENT') return [];
      throw e;
    }
  };
  const { readBundle } = await bundle;
  const { dir, files } = await readBundle(read, model, list);
  return { dir: path.join(root, dir), files };
}

/** Load `model` (name, name@version or name@alias) from a store directory and check it. */
async function loadScorer(args) {
  const { dir, files } = await readStore(args);
  return scorerFromFiles(dir, files);
}

/** The bundle reader (see bundle.mjs), for callers with their own file access. */
async function readBundle(read, ref, list) {
  return (await bundle).readBundle(read, ref, list);
}

module.exports = { loadScorer, readStore, scorerFromFiles, readBundle };
