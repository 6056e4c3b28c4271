// Reading a model bundle out of a store laid out as the registry writes it:
//   <store>/models/<name>/versions/<version>/manifest.json and the files it lists
//   <store>/models/<name>/aliases/<alias>            {"version": N, "set_at": "..."}
// The reader is a function of a path relative to the store that returns its bytes (a
// Uint8Array) or null when there is no such file: node.js reads a directory, a browser would
// fetch over HTTP (web.mjs). Checking the files (sha256 against the manifest, fingerprint, model) is not
// done here but in the WebAssembly module, by the scorer's own code.

const NAME = /^[A-Za-z0-9_.-]+$/;

/** Split `name`, `name@version` or `name@alias` as the scorer's ModelRef does. */
export function parseRef(text) {
  const at = text.indexOf('@');
  const name = at < 0 ? text : text.slice(0, at);
  const tail = at < 0 ? null : text.slice(at + 1);
  if (!NAME.test(name) || (tail !== null && !NAME.test(tail))) {
    throw new Error(`\`${text}\` is not a model reference: write name, name@version or name@alias`);
  }
  if (tail === null) return { name, latest: true };
  if (/^[0-9]+$/.test(tail)) return { name, version: Number(tail) };
  return { name, alias: tail };
}

/**
 * Resolve a reference to a version directory and read its manifest and every file it lists.
 * `list(dir)` names the entries of a directory (only needed for a bare `name`, the latest).
 * Returns { dir, files: Map(name -> Uint8Array) }, manifest.json included.
 */
export async function readBundle(read, ref, list) {
  const r = parseRef(ref);
  let version = r.version;
  if (r.alias !== undefined) {
    const path = `models/${r.name}/aliases/${r.alias}`;
    const bytes = await read(path);
    if (bytes === null) throw new Error(`${r.name}@${r.alias} not found (no ${path})`);
    let target;
    try {
      target = JSON.parse(new TextDecoder().decode(bytes));
    } catch (e) {
      throw new Error(`${path}: ${e.message}`);
    }
    if (!Number.isSafeInteger(target.version) || target.version < 1) {
      throw new Error(`${path}: no version number in it`);
    }
    version = target.version;
  } else if (r.latest) {
    if (!list) throw new Error(`${ref}: say which version (name@version or name@alias)`);
    const names = (await list(`models/${r.name}/versions`)) || [];
    const versions = names.filter((n) => /^[0-9]+$/.test(n)).map(Number).sort((a, b) => b - a);
    for (const v of versions) {
      if ((await read(`models/${r.name}/versions/${v}/manifest.json`)) !== null) {
        version = v;
        break;
      }
    }
    if (version === undefined) throw new Error(`${r.name} not found (no version has a manifest)`);
  }
  const dir = `models/${r.name}/versions/${version}`;
  const manifestBytes = await read(`${dir}/manifest.json`);
  if (manifestBytes === null) throw new Error(`${r.name}@${version} not found (no ${dir}/manifest.json)`);
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder().decode(manifestBytes));
  } catch (e) {
    throw new Error(`${dir}/manifest.json: ${e.message}`);
  }
  const files = new Map([['manifest.json', manifestBytes]]);
  for (const file of Object.keys(manifest.files || {})) {
    // A listed name with a directory part is refused by the module; never read outside `dir`.
    if (file.includes('/') || file === '..' || file === '.') {
      files.set(file, new Uint8Array());
      continue;
    }
    const bytes = await read(`${dir}/${file}`);
    if (bytes !== null) files.set(file, bytes);
  }
  return { dir, files };
}
