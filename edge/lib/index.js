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
      throw new Error(`the WebAssembly module is not built (run ci/edge-check, or see edge/README.md): ${e.message}`);
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

const encoder = new TextEncoder();

/** A checked bundle and the window state of the stream it scores. */
class EdgeScorer {
  constructor(inner) {
    this.inner = inner;
    this.model = inner.model;
    this.fingerprint = inner.fingerprint;
  }

  /**
   * Score one event: its value (bytes or a string) and where it came from (lineage).
   * Returns { kind: 'scored', prediction, key, score, decision } | { kind: 'filtered' } |
   * { kind: 'dead', reason }.
   */
  score(value, { topic = '', partition = 0, offset = 0n } = {}) {
    const bytes = typeof value === 'string' ? encoder.encode(value) : value;
    const { Outcome } = core();
    const outcome = this.inner.score(bytes, topic, partition, BigInt(offset));
    switch (outcome) {
      case Outcome.Scored:
        return {
          kind: 'scored',
          prediction: this.inner.prediction(),
          key: this.inner.key(),
          score: this.inner.lastScore,
          decision: this.inner.lastDecision,
        };
      case Outcome.Filtered:
        return { kind: 'filtered' };
      default:
        return { kind: 'dead', reason: this.inner.reason() };
    }
  }

  /** Update the window state with an event without scoring it. */
  warm(value) {
    this.inner.warm(typeof value === 'string' ? encoder.encode(value) : value);
  }

  /** The window state as bytes, and back. */
  saveState() {
    return this.inner.saveState();
  }

  loadState(bytes) {
    this.inner.loadState(bytes);
  }

  free() {
    this.inner.free();
  }
}

/** Scorer from files already read: a Map of file name -> bytes, manifest.json included. */
function scorerFromFiles(dir, files) {
  const { BundleFiles, Scorer } = core();
  const b = new BundleFiles();
  for (const [name, bytes] of files) b.add(name, bytes);
  return new EdgeScorer(new Scorer(dir, b));
}

/** Load `model` (name, name@version or name@alias) from a store directory and check it. */
async function loadScorer({ store, model }) {
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
  return scorerFromFiles(path.join(root, dir), files);
}

/** The bundle reader (see bundle.mjs), for callers with their own file access. */
async function readBundle(read, ref, list) {
  return (await bundle).readBundle(read, ref, list);
}

module.exports = { loadScorer, scorerFromFiles, readBundle, EdgeScorer };
