// Validate KEDA objects against KEDA's CRD schemas as @kubernetes-models/keda ships them
// (validators generated from the CRDs' openAPIV3Schema).
//
//   node ci/keda/validate.mjs NODE_MODULES < [{"id": "...", "object": {...}}, ...]
//
// Prints [{"id": "...", "errors": ["...", ...]}, ...] as JSON. The models are imported by path
// from NODE_MODULES (the cache ci/k8s-check installs them into), not from next to this file.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
const kinds = {
  "keda.sh/v1alpha1/ScaledObject": "keda.sh/v1alpha1/ScaledObject.js",
  "keda.sh/v1alpha1/ScaledJob": "keda.sh/v1alpha1/ScaledJob.js",
  "keda.sh/v1alpha1/TriggerAuthentication": "keda.sh/v1alpha1/TriggerAuthentication.js",
};

const input = JSON.parse(readFileSync(0, "utf8"));
const out = [];
for (const { id, object } of input) {
  const key = `${object.apiVersion}/${object.kind}`;
  const file = kinds[key];
  if (!file) {
    out.push({ id, errors: [`no KEDA schema for ${key}`] });
    continue;
  }
  const url = pathToFileURL(join(modules, "@kubernetes-models/keda", file)).href;
  const Model = (await import(url))[object.kind];
  try {
    new Model(object).validate();
    out.push({ id, errors: [] });
  } catch (e) {
    out.push({ id, errors: [String(e.message ?? e)] });
  }
}
process.stdout.write(JSON.stringify(out));
