'use strict';
// The browser build (edge/pkg-web through lib/web.mjs) in headless Chromium, driven by
// playwright-core: the page loads the bundle over HTTP from a static server ci/edge-check starts
// (Python's http.server over a directory of links), scores every fixture event and hands back
// the predictions, which must be scorer replay's, byte for byte.
//   KML_EDGE_WEB       the static server's base URL: lib/, pkg-web/, store/, events.jsonl
//   KML_EDGE_REPLAY    scorer replay's predictions; KML_EDGE_MODEL, KML_EDGE_INPUT as edge.test.js
//   KML_EDGE_CHROMIUM  the browser (Debian's chromium)
// Skipped, saying so, without them.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');

const env = process.env;
const skip = ['KML_EDGE_WEB', 'KML_EDGE_REPLAY', 'KML_EDGE_MODEL', 'KML_EDGE_CHROMIUM'].every((k) => env[k])
  ? false
  : 'needs a browser and the environment ci/edge-check prepares';

test('the browser build scores every fixture event as scorer replay does', { skip, timeout: 180000 }, async () => {
  const { chromium } = require('playwright-core');
  const browser = await chromium.launch({
    executablePath: env.KML_EDGE_CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${env.KML_EDGE_WEB}/lib/`);
    const result = await page.evaluate(async ({ model, topic }) => {
      const { loadScorer } = await import('/lib/web.mjs');
      const scorer = await loadScorer({ store: `${location.origin}/store/`, model });
      const events = (await (await fetch('/events.jsonl')).text()).split('\n').filter((l) => l);
      const predictions = [];
      let dead = 0;
      events.forEach((e, i) => {
        const r = scorer.score(e, { topic, partition: 0, offset: BigInt(i) });
        if (r.kind === 'scored') predictions.push(r.prediction);
        if (r.kind === 'dead') dead++;
      });
      let refusal = '';
      try {
        await loadScorer({ store: `${location.origin}/store/`, model: model.replace(/@.*/, '@nosuchalias') });
      } catch (e) {
        refusal = e.message;
      }
      return { predictions, dead, events: events.length, userAgent: navigator.userAgent, refusal };
    }, { model: env.KML_EDGE_MODEL, topic: env.KML_EDGE_INPUT });
    assert.deepEqual(errors, []);
    const replay = fs.readFileSync(env.KML_EDGE_REPLAY, 'utf8').split('\n').filter((l) => l);
    assert.equal(result.dead, 0);
    assert.equal(result.predictions.length, replay.length);
    result.predictions.forEach((p, i) => assert.equal(p, replay[i], `prediction ${i}`));
    assert.match(result.refusal, /@nosuchalias not found/);
    console.log(`browser (${result.userAgent.match(/(Headless)?Chrome\/[0-9.]+/)[0]}): ${result.predictions.length} of ${replay.length} predictions byte-identical to scorer replay's`);
  } finally {
    await browser.close();
  }
});
