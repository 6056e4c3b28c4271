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

import init, * as wasm from '../pkg-web/scoring_wasm.js';
import { readBundle } from './bundle.mjs';
import { fromFiles } from './scorer.mjs';

export { EdgeScorer } from './scorer.mjs';

let ready;

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
  return fromFiles(wasm, new URL(dir, base).href, files);
}
