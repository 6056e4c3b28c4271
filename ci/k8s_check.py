"""Offline checks of the Kubernetes manifests under deploy/k8s; `ci/k8s-check` runs this in its
virtual environment (kubernetes-validate, PyYAML) with KEDA's schemas installed from npm.

Every kustomization is rendered, by `kustomize build` or `kubectl kustomize` when one is on the
PATH, else by the small renderer below, which knows the part of kustomize this repository uses
(resources, patches from files, replacements) and refuses any other field. When kustomize is
there, the small renderer's output must equal it, so the fallback is checked on every run. Then:

- every object against the Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields
  are errors) of the oldest and newest Kubernetes the manifests are meant for;
- KEDA objects against KEDA's CRD schema (node, ci/keda/validate.mjs), and, since a CRD schema
  lets unknown fields through (the API server drops them silently), every field of a
  ScaledObject against the package's own type definitions;
- what the schemas cannot see: each scorer container's subcommand and flags against the
  scorer's `--help` (when a scorer binary is given), `$(VAR)` references that Kubernetes would
  leave unexpanded, the listen address against the probes' port (liveness /healthz, readiness
  /readyz) and the Prometheus annotations, the hardening of every container (non-root,
  read-only root, no privilege escalation, no capabilities), resources, a `scorer serve`
  init container that is a native sidecar, and a ScaledObject that watches the group, topic and
  brokers its Deployment's scorer really uses;
- every YAML file under the tree belongs to a kustomization.

`--self-test` breaks a copy of the tree in each of those ways, once per renderer, and passes
only if every break is caught.
"""

import argparse
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import kubernetes_validate.utils
import yaml

# Native sidecars (init containers with restartPolicy: Always) are on by default from 1.29.
K8S_VERSIONS = ["1.29", "1.37"]
SCORER_IMAGE = "kafka-ml/scorer"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
VAR_REF = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

# kubernetes-validate reads its (1.8 MB) definitions file on every call.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(
    kubernetes_validate.utils.schema_contents
)


class Failure(Exception):
    """A check that cannot go on (a kustomization that does not render)."""


def docs_of(path):
    with open(path, encoding="utf-8") as f:
        try:
            return [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            raise Failure(f"{path}: not YAML: {e}") from None


def ident(doc):
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('name')}"


# ---------------------------------------------------------------------------------------------
# Rendering

def external_renderer():
    """The command that renders a kustomization directory, or None."""
    choice = os.environ.get("KML_KUSTOMIZE", "auto")
    if choice == "python":
        return None
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        probe = subprocess.run(["kubectl", "kustomize", "--help"], capture_output=True)
        if probe.returncode == 0:
            return ["kubectl", "kustomize"]
    if choice == "external":
        raise Failure("KML_KUSTOMIZE=external, but neither kustomize nor kubectl is on the PATH")
    return None


def render_external(cmd, directory):
    r = subprocess.run(cmd + [str(directory)], capture_output=True, text=True)
    if r.returncode != 0:
        raise Failure(f"{directory}: {' '.join(cmd)} failed: {r.stderr.strip()}")
    return [d for d in yaml.safe_load_all(r.stdout) if d is not None]


SUPPORTED = {"apiVersion", "kind", "resources", "patches", "replacements"}


def render_python(directory):
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise Failure(f"{directory}: no kustomization.yaml")
    (k,) = docs_of(kfile) or [{}]
    unknown = sorted(set(k) - SUPPORTED)
    if unknown:
        raise Failure(
            f"{kfile}: {', '.join(unknown)}: not known to the fallback renderer (install "
            "kustomize, or extend ci/k8s_check.py)"
        )
    docs = []
    for r in k.get("resources") or []:
        p = directory / r
        if p.is_dir():
            docs += render_python(p)
        elif p.is_file():
            docs += docs_of(p)
        else:
            raise Failure(f"{kfile}: resource `{r}` does not exist")
    seen = set()
    for d in docs:
        if ident(d) in seen:
            raise Failure(f"{kfile}: {ident(d)} is defined twice")
        seen.add(ident(d))
    for patch in k.get("patches") or []:
        if "path" not in patch:
            raise Failure(f"{kfile}: a patch without `path` (inline patches are not supported)")
        p = directory / patch["path"]
        if not p.is_file():
            raise Failure(f"{kfile}: patch `{patch['path']}` does not exist")
        for body in docs_of(p):
            sel = patch.get("target") or {
                "kind": body.get("kind"),
                "name": (body.get("metadata") or {}).get("name"),
            }
            hits = select(docs, sel)
            if not hits:
                raise Failure(
                    f"{kfile}: patch `{patch['path']}` targets {sel.get('kind')}/"
                    f"{sel.get('name')}, which no resource defines"
                )
            for h in hits:
                merge(h, body)
    for rep in k.get("replacements") or []:
        src = select(docs, rep["source"])
        if len(src) != 1:
            raise Failure(f"{kfile}: replacement source {rep['source']} matches {len(src)} objects")
        value = get_path(src[0], rep["source"].get("fieldPath", "metadata.name"), kfile)
        for t in rep.get("targets") or []:
            hits = select(docs, t["select"])
            if not hits:
                raise Failure(f"{kfile}: replacement target {t['select']} matches no object")
            for h in hits:
                for fp in t["fieldPaths"]:
                    set_path(h, fp, value, kfile)
    return docs


def select(docs, sel):
    return [
        d
        for d in docs
        if all(
            (d.get("kind") if key == "kind" else (d.get("metadata") or {}).get(key)) == want
            for key, want in sel.items()
            if key in ("kind", "name", "namespace")
        )
    ]


def merge(base, patch):
    """A strategic merge for what our patches do: maps merge, lists of named items merge by
    name, other lists are replaced."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        elif (
            isinstance(value, list)
            and isinstance(base.get(key), list)
            and all(isinstance(x, dict) and "name" in x for x in value + base[key])
        ):
            by_name = {x["name"]: x for x in base[key]}
            for x in value:
                if x["name"] in by_name:
                    merge(by_name[x["name"]], x)
                else:
                    base[key].append(x)
        else:
            base[key] = copy.deepcopy(value)


def walk_path(doc, path, where):
    node = doc
    parts = path.split(".")
    for i, part in enumerate(parts):
        m = re.fullmatch(r"\[(\w+)=([^\]]*)\]", part)
        if m:
            hits = [x for x in node if isinstance(x, dict) and str(x.get(m[1])) == m[2]]
            if not hits:
                raise Failure(f"{where}: field path {path}: no list item with {m[1]}={m[2]}")
            node = hits[0]
        elif isinstance(node, list) and part.isdigit():
            node = node[int(part)]
        elif isinstance(node, dict) and (part in node or i == len(parts) - 1):
            if i == len(parts) - 1:
                return node, part
            node = node[part]
        else:
            raise Failure(f"{where}: field path {path} does not exist in {ident(doc)}")
    return node, None


def get_path(doc, path, where):
    parent, last = walk_path(doc, path, where)
    if last is None or last not in parent:
        raise Failure(f"{where}: field path {path} does not exist in {ident(doc)}")
    return parent[last]


def set_path(doc, path, value, where):
    parent, last = walk_path(doc, path, where)
    if last is None or last not in parent:
        raise Failure(f"{where}: field path {path} does not exist in {ident(doc)}")
    parent[last] = copy.deepcopy(value)


def orphans(root):
    """YAML files that no kustomization lists."""
    used = set()
    for kfile in root.rglob("kustomization.yaml"):
        used.add(kfile.resolve())
        (k,) = docs_of(kfile) or [{}]
        entries = list(k.get("resources") or []) + [p["path"] for p in k.get("patches") or [] if "path" in p]
        for e in entries:
            used.add((kfile.parent / e).resolve())
    return sorted(
        str(p.relative_to(root))
        for p in list(root.rglob("*.yaml")) + list(root.rglob("*.yml"))
        if p.resolve() not in used
    )


# ---------------------------------------------------------------------------------------------
# Schemas

@functools.lru_cache(maxsize=None)
def k8s_schema_errors(doc_json):
    doc = json.loads(doc_json)
    errors = []
    for v in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.absolute_path) or "(top)"
            errors.append(f"Kubernetes {v} schema: {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(e.message)
    return tuple(errors)


def keda_schema_errors(objects, modules):
    """KEDA's CRD schema for each (id, object); {id: [errors]}."""
    if not objects:
        return {}
    payload = json.dumps([{"id": i, "object": o} for i, o in objects])
    r = subprocess.run(
        ["node", str(Path(__file__).parent / "keda" / "validate.mjs"), str(modules)],
        input=payload,
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise Failure(f"ci/keda/validate.mjs failed: {r.stderr.strip()}")
    return {x["id"]: x["errors"] for x in json.loads(r.stdout)}


class TypeDefs:
    """Field names of the KEDA models' TypeScript interfaces, to refuse unknown fields."""

    def __init__(self, modules):
        self.modules = Path(modules)

    @functools.lru_cache(maxsize=None)
    def interface(self, file):
        text = file.read_text(encoding="utf-8")
        imports = {}
        for name, src in re.findall(r'import \{ (\w+) \} from "([^"]+)";', text):
            if src.startswith("."):
                target = (file.parent / src).with_suffix(".d.ts")
            else:
                target = self.modules / (src + ".d.ts")
            imports[name] = target
        body = re.search(r"export interface \w+ \{\n(.*?)\n\}", text, re.S)
        fields = {}
        for name, typ in re.findall(r'^    "([^"]+)"\??: (.*?);?$', body[1] if body else "", re.M):
            m = re.fullmatch(r"(?:Array<)?(\w+)>?", typ)
            fields[name] = imports.get(m[1]) if m and m[1] in imports else None
        return fields

    def unknown(self, value, file, where):
        if not isinstance(value, dict) or file is None or not file.is_file():
            return []
        fields = self.interface(file)
        out = []
        for key, v in value.items():
            if key not in fields:
                out.append(f"{where}.{key}: not a field of {file.name.removesuffix('.d.ts')}")
                continue
            for i, item in enumerate(v if isinstance(v, list) else [v]):
                out += self.unknown(item, fields[key], f"{where}.{key}" + (f"[{i}]" if isinstance(v, list) else ""))
        return out


# ---------------------------------------------------------------------------------------------
# What the schemas cannot see

def scorer_flags(binary):
    """{subcommand: {flag: takes_value}} from the scorer's --help."""
    out = {}
    for sub in ("run", "serve"):
        r = subprocess.run([binary, sub, "--help"], capture_output=True, text=True)
        if r.returncode != 0:
            raise Failure(f"{binary} {sub} --help failed: {r.stderr.strip()}")
        flags = {}
        for short, long, value in re.findall(
            r"^\s+(?:-(\w)(?:, | <[^>]+>))?(?:--([a-z0-9-]+))?( <[^>]+>)?", r.stdout, re.M
        ):
            if long:
                flags["--" + long] = bool(value)
            if short:
                flags["-" + short] = True
        out[sub] = flags
    return out


def parse_args(args, known):
    """[(flag, value or None)] of a scorer command line after the subcommand."""
    out = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--") and "=" in a:
            name, value = a.split("=", 1)
            out.append((name, value))
        elif a.startswith("-"):
            takes = known.get(a) if known is not None else (
                i + 1 < len(args) and not args[i + 1].startswith("-")
            )
            if takes:
                out.append((a, args[i + 1] if i + 1 < len(args) else None))
                i += 1
            else:
                out.append((a, None))
        else:
            out.append((None, a))
        i += 1
    return out


def container_env(c, objects, where, errors):
    """The environment Kubernetes gives container `c`: {name: value} (None when unknown)."""
    env = {}
    for src in c.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind, ref in (("ConfigMap", src.get("configMapRef")), ("Secret", src.get("secretRef"))):
            if ref is None:
                continue
            obj = objects.get(f"{kind}/{ref.get('name')}")
            if obj is None:
                if not ref.get("optional"):
                    errors.append(f"{where}: envFrom {kind} `{ref.get('name')}` is not among the manifests")
                continue
            data = dict(obj.get("data") or {})
            data.update(obj.get("stringData") or {})
            for key, value in data.items():
                env[prefix + key] = value if kind == "ConfigMap" else None
    for e in c.get("env") or []:
        env[e["name"]] = e.get("value")
    return env


def expand(value, env):
    return VAR_REF.sub(lambda m: str(env.get(m[1])) if env.get(m[1]) is not None else m[0], value)


def check_container(c, pod, objects, flags, where, errors, init):
    sc = c.get("securityContext") or {}
    psc = pod.get("securityContext") or {}
    if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
        errors.append(f"{where}: runAsNonRoot is not true")
    if sc.get("readOnlyRootFilesystem") is not True:
        errors.append(f"{where}: securityContext.readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        errors.append(f"{where}: securityContext.allowPrivilegeEscalation is not false")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        errors.append(f"{where}: securityContext.capabilities.drop does not hold ALL")
    res = c.get("resources") or {}
    for need in ("requests.cpu", "requests.memory", "limits.memory"):
        part, key = need.split(".")
        if key not in (res.get(part) or {}):
            errors.append(f"{where}: resources.{need} is not set")
    env = container_env(c, objects, where, errors)
    for text in (c.get("command") or []) + (c.get("args") or []):
        for name in VAR_REF.findall(text):
            if name not in env:
                errors.append(
                    f"{where}: `$({name})` names no variable of the container (Kubernetes would "
                    "pass it on as it is)"
                )
    image = c.get("image", "")
    if image.split("@")[0].rsplit(":", 1)[0] != SCORER_IMAGE:
        return None
    args = [expand(a, env) for a in c.get("args") or []]
    sub = args[0] if args else None
    if sub not in ("run", "serve"):
        errors.append(f"{where}: the scorer's args start with {sub!r}, not `run` or `serve`")
        return None
    known = flags[sub] if flags else None
    parsed = parse_args(args[1:], known)
    given = {}
    for name, value in parsed:
        if name is None:
            errors.append(f"{where}: stray argument `{value}`")
        elif known is not None and name not in known:
            errors.append(f"{where}: `scorer {sub}` has no flag {name}")
        else:
            given[name] = value
    if sub == "serve" and init and c.get("restartPolicy") != "Always":
        errors.append(
            f"{where}: `scorer serve` as an init container needs restartPolicy: Always (a "
            "native sidecar); otherwise it never exits and the pod never starts"
        )
    if "--model" not in given and not env.get("KML_MODEL"):
        errors.append(f"{where}: no model (--model or KML_MODEL)")
    store = given.get("--store") or env.get("KML_STORE") or "file://./model-store"
    if "://" not in store or store.startswith("file://"):
        path = store.removeprefix("file://")
        mounts = [m for m in c.get("volumeMounts") or [] if path.startswith(m["mountPath"])]
        if not path.startswith("/") or not mounts:
            errors.append(f"{where}: the store {store} is not on a volume of the container")
    if sub == "run" and "--input" not in given:
        errors.append(f"{where}: `scorer run` without --input")
    if sub == "run":
        addr, flag = given.get("--metrics-addr", "127.0.0.1:9464"), "--metrics-addr"
    else:
        addr = given.get("--addr") or env.get("KML_SERVE_ADDR") or "127.0.0.1:8080"
        flag = "--addr"
    probes = {k: c.get(k) for k in ("livenessProbe", "readinessProbe", "startupProbe")}
    if addr == "off":
        errors.append(f"{where}: {flag} off: no /healthz or /readyz for the probes")
        return None
    host, _, port = addr.rpartition(":")
    if host in LOOPBACK:
        errors.append(
            f"{where}: {flag} {addr} listens on loopback only; the kubelet's probes and "
            "Prometheus come over the pod's IP"
        )
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    for kind, want in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", None)):
        probe = probes[kind]
        if probe is None:
            if want:
                errors.append(f"{where}: no {kind}")
            continue
        get = probe.get("httpGet") or {}
        path = get.get("path")
        if (want and path != want) or (not want and path not in ("/healthz", "/readyz")):
            errors.append(f"{where}: {kind} asks {path}, the scorer answers {want or '/healthz or /readyz'}")
        p = get.get("port")
        p = ports.get(p) if isinstance(p, str) else p
        if str(p) != port:
            errors.append(f"{where}: {kind} on port {get.get('port')}, the scorer listens on {addr} ({flag})")
    return {"sub": sub, "port": port, "env": env, "given": given}


def check_workloads(docs, flags, typedefs, errors):
    objects = {ident(d): d for d in docs}
    scorers = {}
    for d in docs:
        if d.get("kind") not in WORKLOADS:
            continue
        pod = d["spec"]["template"].get("spec") or {}
        notes = (d["spec"]["template"].get("metadata") or {}).get("annotations") or {}
        found = []
        for init, key in ((True, "initContainers"), (False, "containers")):
            for c in pod.get(key) or []:
                where = f"{ident(d)}: {key[:-1]} {c.get('name')}"
                s = check_container(c, pod, objects, flags, where, errors, init)
                if s:
                    found.append(s)
        scorers[ident(d)] = found
        if notes.get("prometheus.io/scrape") == "true" and found:
            ports = {s["port"] for s in found}
            if notes.get("prometheus.io/port") not in ports:
                errors.append(
                    f"{ident(d)}: prometheus.io/port {notes.get('prometheus.io/port')!r} is not the "
                    f"scorer's port ({', '.join(sorted(ports))})"
                )
            if notes.get("prometheus.io/path", "/metrics") != "/metrics":
                errors.append(f"{ident(d)}: prometheus.io/path is not /metrics")
    for d in docs:
        if d.get("kind") != "ScaledObject":
            continue
        spec = d.get("spec") or {}
        if typedefs is not None:
            root = typedefs.modules / "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObjectSpec.d.ts"
            errors += [f"{ident(d)}: {e}" for e in typedefs.unknown(spec, root, "spec")]
        ref = spec.get("scaleTargetRef") or {}
        target = f"{ref.get('kind', 'Deployment')}/{ref.get('name')}"
        if target not in objects:
            errors.append(f"{ident(d)}: scaleTargetRef {target} is not among the manifests")
            continue
        lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
            errors.append(f"{ident(d)}: minReplicaCount {lo} > maxReplicaCount {hi}")
        runs = [s for s in scorers.get(target, []) if s["sub"] == "run"]
        for t in spec.get("triggers") or []:
            if t.get("type") != "kafka":
                continue
            m = t.get("metadata") or {}
            for key in ("bootstrapServers", "consumerGroup", "topic", "lagThreshold"):
                if key not in m:
                    errors.append(f"{ident(d)}: kafka trigger without {key}")
            if str(m.get("allowIdleConsumers", "false")).lower() == "true":
                errors.append(f"{ident(d)}: allowIdleConsumers lets KEDA start more pods than partitions")
            for s in runs:
                brokers = s["given"].get("--brokers") or s["env"].get("KML_BROKERS") or "127.0.0.1:9092"
                group = s["given"].get("--group") or "kml-scorer"
                inputs = (s["given"].get("--input") or "").split(",")
                for key, theirs, ours in (
                    ("bootstrapServers", m.get("bootstrapServers"), brokers),
                    ("consumerGroup", m.get("consumerGroup"), group),
                ):
                    if theirs != ours:
                        errors.append(f"{ident(d)}: kafka trigger {key} {theirs!r}, the scorer uses {ours!r}")
                if m.get("topic") not in inputs:
                    errors.append(f"{ident(d)}: kafka trigger topic {m.get('topic')!r} is not the scorer's --input {inputs}")


# ---------------------------------------------------------------------------------------------

def check_tree(root, renderer, modules, flags, log=print):
    """Check every kustomization under `root`; the list of errors."""
    errors = []
    try:
        for o in orphans(root):
            errors.append(f"{o}: listed by no kustomization")
        typedefs = TypeDefs(modules) if modules else None
        for kfile in sorted(root.rglob("kustomization.yaml")):
            d = kfile.parent
            name = str(d.relative_to(root))
            mine = []
            theirs = render_external(renderer, d) if renderer else None
            docs = render_python(d)
            if renderer:
                key = lambda x: json.dumps(x, sort_keys=True)
                if sorted(map(key, theirs)) != sorted(map(key, docs)):
                    mine.append(f"the fallback renderer's output differs from {' '.join(renderer)}'s")
                docs = theirs
            keda = []
            for i, doc in enumerate(docs):
                if str(doc.get("apiVersion", "")).startswith("keda.sh/"):
                    keda.append((f"{i}", doc))
                else:
                    mine += [f"{ident(doc)}: {e}" for e in k8s_schema_errors(json.dumps(doc, sort_keys=True))]
            if modules:
                for i, errs in keda_schema_errors(keda, modules).items():
                    mine += [f"{ident(docs[int(i)])}: KEDA schema: {e}" for e in errs]
            elif keda:
                mine.append("KEDA objects present but no KEDA schema given")
            check_workloads(docs, flags, typedefs, mine)
            kinds = ", ".join(ident(x) for x in docs)
            if mine:
                log(f"k8s-check: FAIL {name}: {len(docs)} objects ({kinds})")
                errors += [f"{name}: {e}" for e in mine]
            else:
                log(f"k8s-check: ok   {name}: {len(docs)} objects ({kinds})")
    except Failure as e:
        errors.append(str(e))
    return errors


# A break of the tree, and the renderers that must catch it (None: both).
def mutations():
    def edit(path, fn):
        def apply(root):
            p = root / path
            docs = docs_of(p)
            fn(docs[0])
            p.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        return apply

    def embedded_container(doc):
        return doc["spec"]["template"]["spec"]["containers"][0]

    def sidecar(doc):
        return doc["spec"]["template"]["spec"]["initContainers"][0]

    def append_text(path, text):
        return lambda root: (root / path).write_text((root / path).read_text() + text)

    return [
        ("a misspelt Deployment field (strict schema)",
         edit("embedded/deployment.yaml", lambda d: embedded_container(d).update(imagePullPolice="Always")), False),
        ("replicas as a string (schema type)",
         edit("embedded/deployment.yaml", lambda d: d["spec"].update(replicas="one")), False),
        ("maxReplicaCount as a string (KEDA schema)",
         edit("embedded/scaledobject.yaml", lambda d: d["spec"].update(maxReplicaCount="four")), False),
        ("an unknown ScaledObject field (KEDA type definitions)",
         edit("embedded/scaledobject.yaml", lambda d: d["spec"].update(maxReplicas=4)), False),
        ("a kustomization listing a file that does not exist",
         edit("embedded/kustomization.yaml", lambda d: d["resources"].append("missing.yaml")), False),
        ("a patch whose target does not exist",
         edit("embedded/kafka-config.yaml", lambda d: d["metadata"].update(name="scorer-kafka")), False),
        ("a manifest no kustomization lists",
         lambda root: (root / "embedded/extra.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"), False),
        ("a writable root filesystem",
         edit("embedded/deployment.yaml", lambda d: embedded_container(d)["securityContext"].update(readOnlyRootFilesystem=False)), False),
        ("the readiness probe on another port than --metrics-addr",
         edit("embedded/deployment.yaml", lambda d: embedded_container(d)["readinessProbe"]["httpGet"].update(port=9465)), False),
        ("--metrics-addr on loopback",
         edit("embedded/deployment.yaml", lambda d: embedded_container(d)["args"].__setitem__(5, "--metrics-addr=127.0.0.1:9464")), False),
        ("a flag `scorer run` does not have",
         edit("embedded/deployment.yaml", lambda d: embedded_container(d)["args"].append("--metrics-port=9464")), "flags"),
        ("a misspelt $(VAR) in the args",
         edit("embedded/deployment.yaml", lambda d: embedded_container(d)["args"].__setitem__(4, "--group=$(CONSUMER_GRUOP)")), False),
        ("the ScaledObject watching another group than the scorer's",
         edit("embedded/deployment.yaml", lambda d: embedded_container(d)["args"].__setitem__(4, "--group=kml-scorer-2")), False),
        ("the sidecar without restartPolicy: Always",
         edit("sidecar/deployment.yaml", lambda d: sidecar(d).pop("restartPolicy")), False),
        ("a liveness probe on /readyz",
         edit("sidecar/deployment.yaml", lambda d: sidecar(d)["livenessProbe"]["httpGet"].update(path="/readyz")), False),
        ("a kustomization field the fallback does not know",
         append_text("sidecar/kustomization.yaml", "namePrefix: x-\n"), "python"),
    ]


def self_test(root, renderer, modules, flags):
    modes = [("python", None)] + ([(" ".join(renderer), renderer)] if renderer else [])
    passed = failed = 0
    for mode, r in modes:
        with tempfile.TemporaryDirectory() as tmp:
            copy_root = Path(tmp) / "k8s"
            shutil.copytree(root, copy_root)
            errors = check_tree(copy_root, r, modules, flags, log=lambda *_: None)
            ok = not errors
            print(f"self-test: {'ok  ' if ok else 'FAIL'} [{mode}] the tree as committed passes" + ("" if ok else f": {errors[0]}"))
            passed, failed = passed + ok, failed + (not ok)
        for what, apply, needs in mutations():
            if needs == "flags" and not flags:
                print(f"self-test: skip [{mode}] {what} (no scorer binary)")
                continue
            if needs == "python" and r is not None:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                copy_root = Path(tmp) / "k8s"
                shutil.copytree(root, copy_root)
                apply(copy_root)
                errors = check_tree(copy_root, r, modules, flags, log=lambda *_: None)
            ok = bool(errors)
            caught = errors[0] if errors else "not caught"
            print(f"self-test: {'ok  ' if ok else 'FAIL'} [{mode}] {what}: {caught[:160]}")
            passed, failed = passed + ok, failed + (not ok)
    print(f"self-test: {passed} passed, {failed} failed")
    return failed == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="deploy/k8s", type=Path)
    ap.add_argument("--keda-modules", help="node_modules holding @kubernetes-models/keda")
    ap.add_argument("--scorer", help="a scorer binary, to check flags against its --help")
    ap.add_argument("--self-test", action="store_true")
    a = ap.parse_args()
    try:
        renderer = external_renderer()
        flags = scorer_flags(a.scorer) if a.scorer else None
    except Failure as e:
        print(f"k8s-check: {e}", file=sys.stderr)
        return 1
    print(
        f"k8s-check: rendering with {' '.join(renderer) if renderer else 'the fallback renderer (no kustomize)'}; "
        f"Kubernetes schemas {', '.join(K8S_VERSIONS)} (kubernetes-validate {kubernetes_validate.__version__}, strict); "
        f"KEDA schema {'from ' + a.keda_modules if a.keda_modules else 'NOT checked'}; "
        f"scorer flags {'from ' + a.scorer if a.scorer else 'NOT checked (no scorer binary)'}"
    )
    if a.self_test:
        return 0 if self_test(a.root, renderer, a.keda_modules, flags) else 1
    errors = check_tree(a.root, renderer, a.keda_modules, flags)
    for e in errors:
        print(f"k8s-check: error: {e}", file=sys.stderr)
    print(f"k8s-check: {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
