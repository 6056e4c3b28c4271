// The edge scoring package for browsers (and any runtime with fetch and ES modules): load a
// bundle from a model store served over HTTP and score events with the WebAssembly build of the
// scorer's core (edge/pkg-web, made by ci/edge-check with wasm-bindgen --target web).
//
//   import { loadScorer } from './lib/web.mjs';
//   const scorer = await loadScorer({ store: 'https://models.example.com/store/', model: 'flights_delay@champion' });
//   const r = scorer.score(eventJson, { topic: 'flights', partition: 0, offset: 42n });
//
// The store is the registry's directory layout under a base URL (a bucket behind a CDN, or any
// static server). A 404 is "no such file"; any other failure is an error naming the URL.

import init, { BundleFiles, Scorer, Outcome } from '../pkg-web/scoring_wasm.js';
import { readBundle } from './bundle.mjs';

let ready;

const encoder = new TextEncoder();

/** A checked bundle and the window state of the stream it scores (as lib/index.js's EdgeScorer). */
export class EdgeScorer {
  constructor(inner) {
    this.inner = inner;
    this.model = inner.model;
    this.fingerprint = inner.fingerprint;
  }

  score(value, { topic = '', partition = 0, offset = 0n } = {}) {
    const bytes = typeof value === 'string' ? encoder.encode(value) : value;
    const outcome = this.inner.score(bytes, topic, partition, BigInt(offset));
    if (outcome === Outcome.Scored) {
      return {
        kind: 'scored',
        prediction: this.inner.prediction(),
        key: this.inner.key(),
        score: this.inner.lastScore,
        decision: this.inner.lastDecision,
      };
    }
    if (outcome === Outcome.Filtered) return { kind: 'filtered' };
    return { kind: 'dead', reason: this.inner.reason() };
  }

  warm(value) {
    this.inner.warm(typeof value === 'string' ? encoder.encode(value) : value);
  }

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

/** Load and check `model` (name@version or name@alias) from a store under the base URL `store`. */
export async function loadScorer({ store, model, fetchImpl = fetch, wasmUrl } = {}) {
  ready = ready || init(wasmUrl === undefined ? undefined : { module_or_path: wasmUrl });
  await ready;
  const base = store.endsWith('/') ? store : `${store}/`;
  const read = async (path) => {
    const url = new URL(path, base);
    const res = await fetchImpl(url);
    if (res.status === 404) return null;
    if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
    return new Uint8Array(await res.arrayBuffer());
  };
  const { dir, files } = await readBundle(read, model);
  const b = new BundleFiles();
  for (const [name, bytes] of files) b.add(name, bytes);
  return new EdgeScorer(new Scorer(new URL(dir, base).href, b));
}
