// The scorer object both builds hand out (Node: index.js over pkg/, browsers: web.mjs over
// pkg-web/): a checked bundle and the window state of the stream it scores, around the
// WebAssembly `Scorer`. `Outcome` is the enum of the build in use.

const encoder = new TextEncoder();
const bytes = (value) => (typeof value === 'string' ? encoder.encode(value) : value);

export class EdgeScorer {
  constructor(inner, Outcome) {
    this.inner = inner;
    this.Outcome = Outcome;
    this.model = inner.model;
    this.fingerprint = inner.fingerprint;
  }

  /**
   * Score one event: its value (bytes or a string) and where it came from (lineage).
   * Returns { kind: 'scored', prediction, key, score, decision } | { kind: 'filtered' } |
   * { kind: 'dead', reason }.
   */
  score(value, { topic = '', partition = 0, offset = 0n } = {}) {
    const outcome = this.inner.score(bytes(value), topic, partition, BigInt(offset));
    if (outcome === this.Outcome.Scored) {
      return {
        kind: 'scored',
        prediction: this.inner.prediction(),
        key: this.inner.key(),
        score: this.inner.lastScore,
        decision: this.inner.lastDecision,
      };
    }
    if (outcome === this.Outcome.Filtered) return { kind: 'filtered' };
    return { kind: 'dead', reason: this.inner.reason() };
  }

  /** Update the window state with an event without scoring it. */
  warm(value) {
    this.inner.warm(bytes(value));
  }

  /** The window state as bytes (the scorer's checkpoint format), and back. */
  saveState() {
    return this.inner.saveState();
  }

  loadState(state) {
    this.inner.loadState(state);
  }

  free() {
    this.inner.free();
  }
}

/** Check a bundle's files (a Map of name -> bytes, manifest.json included) with a build's classes. */
export function fromFiles({ BundleFiles, Scorer, Outcome }, dir, files) {
  const b = new BundleFiles();
  for (const [name, data] of files) b.add(name, data);
  return new EdgeScorer(new Scorer(dir, b), Outcome);
}
