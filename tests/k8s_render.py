"""A minimal kustomize renderer for the kustomizations under k8s/.

Why it exists: the test suite must render the overlays on machines without a
kustomize binary (none is published on PyPI or npm). tests/test_deploy.py
uses the real renderer (`kubectl kustomize` / `kustomize build`) when one is
on PATH and, in that case, also checks that this module produces the same
objects -- so this code is itself tested wherever kubectl exists.

Supported, deliberately nothing more (anything else raises
UnsupportedKustomization, so a new feature in a kustomization.yaml cannot be
silently ignored):

* ``resources``: YAML files (multi-document) and directories holding a
  kustomization (rendered recursively, like kustomize's bases);
* ``patches``: strategic-merge patches given by ``path`` or inline ``patch``,
  without ``target`` (the patch names its object by apiVersion group, kind and
  metadata.name). Lists merge by the Kubernetes merge keys of the fields we
  use (containers by name, env/volumes by name, volumeMounts by mountPath,
  ports by containerPort/port); every other list is replaced, as kustomize
  does for lists without a merge key. ``null`` deletes a key; ``$patch``
  directives are not supported;
* ``namespace``: sets metadata.namespace on namespaced objects;
* ``labels`` with ``includeSelectors: false``: adds the pairs to
  metadata.labels and, with ``includeTemplates: true``, to pod templates (and
  StatefulSet volumeClaimTemplates) of the built-in workload kinds;
* ``images``: ``name`` + ``newName``/``newTag``/``digest`` on every
  ``containers``/``initContainers`` image anywhere in an object (kustomize
  does the same, CRDs included).

Transformers run in kustomize's order: patches, namespace, labels, images.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}

#: Kinds that have no namespace (the ones a COViaX manifest could plausibly hold).
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PersistentVolume", "StorageClass", "PriorityClass", "APIService", "RuntimeClass",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "IngressClass",
    "VolumeSnapshotClass", "CSIDriver", "Node",
}

#: Workload kinds whose pod template gets labels with includeTemplates.
POD_TEMPLATE_KINDS = {"Deployment", "ReplicaSet", "DaemonSet", "StatefulSet", "Job"}

#: Strategic-merge keys of the list fields used in this repository's patches.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
}

BUILTIN_GROUPS = {"", "apps", "batch", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io"}


class UnsupportedKustomization(Exception):
    """The kustomization uses a feature this renderer does not implement."""


def _load_docs(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def _kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no kustomization file in {directory}")


def _group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def object_key(obj: dict) -> tuple[str, str, str, str]:
    """(group, kind, namespace, name): how kustomize tells objects apart."""
    meta = obj.get("metadata") or {}
    return (_group(obj.get("apiVersion", "")), obj.get("kind", ""), meta.get("namespace") or "", meta.get("name", ""))


# --------------------------------------------------------------- strategic merge
def _merge_key_for(field: str, base_items: list, patch_items: list) -> str | None:
    if field == "ports":
        items = [i for i in base_items + patch_items if isinstance(i, dict)]
        if items and all("containerPort" in i for i in items):
            return "containerPort"
        if items and all("port" in i for i in items):
            return "port"
        return None
    return MERGE_KEYS.get(field)


def _merge_list(field: str, base: list, patch: list, builtin: bool) -> list:
    key = _merge_key_for(field, base, patch) if builtin else None
    if key is None or not all(isinstance(i, dict) and key in i for i in base + patch):
        return copy.deepcopy(patch)
    result = copy.deepcopy(base)
    index = {item[key]: n for n, item in enumerate(result)}
    for item in patch:
        if "$patch" in item:
            raise UnsupportedKustomization("$patch directives are not supported")
        if item[key] in index:
            n = index[item[key]]
            result[n] = strategic_merge(result[n], item, builtin)
        else:
            index[item[key]] = len(result)
            result.append(copy.deepcopy(item))
    return result


def strategic_merge(base: Any, patch: Any, builtin: bool = True, field: str = "") -> Any:
    """Merge ``patch`` into a copy of ``base`` (strategic merge patch subset)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        result = copy.deepcopy(base)
        for key, value in patch.items():
            if isinstance(key, str) and key.startswith("$"):
                raise UnsupportedKustomization(f"directive {key!r} is not supported")
            if value is None:
                result.pop(key, None)
            elif key in result and isinstance(result[key], dict) and isinstance(value, dict):
                result[key] = strategic_merge(result[key], value, builtin, key)
            elif key in result and isinstance(result[key], list) and isinstance(value, list):
                result[key] = _merge_list(key, result[key], value, builtin)
            else:
                result[key] = copy.deepcopy(value)
        return result
    return copy.deepcopy(patch)


# ------------------------------------------------------------------ transformers
def _apply_patches(objects: list[dict], patches: list, root: Path) -> None:
    for entry in patches:
        if not isinstance(entry, dict) or set(entry) - {"path", "patch"}:
            raise UnsupportedKustomization(f"only `path`/`patch` strategic-merge patches are supported: {entry!r}")
        if "path" in entry:
            docs = _load_docs(root / entry["path"])
        else:
            docs = [d for d in yaml.safe_load_all(entry["patch"]) if d is not None]
        for doc in docs:
            if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc:
                raise UnsupportedKustomization(f"JSON6902 or untargeted patches are not supported: {entry!r}")
            group, kind, name = _group(doc.get("apiVersion", "")), doc["kind"], doc["metadata"]["name"]
            matches = [n for n, o in enumerate(objects)
                       if _group(o.get("apiVersion", "")) == group and o["kind"] == kind
                       and o["metadata"]["name"] == name]
            if len(matches) != 1:
                raise ValueError(f"patch for {kind}/{name} matches {len(matches)} objects")
            n = matches[0]
            builtin = group in BUILTIN_GROUPS
            objects[n] = strategic_merge(objects[n], doc, builtin)


def _apply_namespace(objects: list[dict], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            obj.setdefault("metadata", {})["namespace"] = namespace


def _add_labels(holder: dict, pairs: dict) -> None:
    meta = holder.setdefault("metadata", {})
    labels = meta.get("labels") or {}
    labels.update(pairs)
    meta["labels"] = labels


def _apply_labels(objects: list[dict], entries: list) -> None:
    for entry in entries:
        unknown = set(entry) - {"pairs", "includeSelectors", "includeTemplates"}
        if unknown or entry.get("includeSelectors"):
            raise UnsupportedKustomization(f"labels entry not supported: {entry!r}")
        pairs = {str(k): str(v) for k, v in entry["pairs"].items()}
        for obj in objects:
            _add_labels(obj, pairs)
            if not entry.get("includeTemplates"):
                continue
            spec = obj.get("spec") or {}
            if obj["kind"] in POD_TEMPLATE_KINDS and "template" in spec:
                _add_labels(spec["template"], pairs)
            if obj["kind"] == "StatefulSet":
                for claim in spec.get("volumeClaimTemplates") or []:
                    _add_labels(claim, pairs)
            if obj["kind"] == "CronJob" and "jobTemplate" in spec:
                _add_labels(spec["jobTemplate"], pairs)
                _add_labels(spec["jobTemplate"]["spec"]["template"], pairs)


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """'reg:5000/a/b:tag@sha256:x' -> ('reg:5000/a/b', 'tag', 'sha256:x')."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    tag = None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        image, tag = image.rsplit(":", 1)
    return image, tag, digest


def _walk_containers(node: Any):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for item in value:
                    if isinstance(item, dict) and "image" in item:
                        yield item
            yield from _walk_containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_containers(item)


def _apply_images(objects: list[dict], entries: list) -> None:
    for entry in entries:
        if set(entry) - {"name", "newName", "newTag", "digest"}:
            raise UnsupportedKustomization(f"images entry not supported: {entry!r}")
        for obj in objects:
            for container in _walk_containers(obj):
                name, tag, digest = split_image(container["image"])
                if name != entry["name"]:
                    continue
                name = entry.get("newName", name)
                if "digest" in entry:
                    container["image"] = f"{name}@{entry['digest']}"
                    continue
                if "newTag" in entry:
                    tag = str(entry["newTag"])
                container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


# ------------------------------------------------------------------------ render
def render(directory: str | Path) -> list[dict]:
    """Render the kustomization in ``directory`` to a list of objects."""
    root = Path(directory)
    kfile = _kustomization_file(root)
    (kust,) = _load_docs(kfile)
    unknown = set(kust) - SUPPORTED_FIELDS
    if unknown:
        raise UnsupportedKustomization(f"{kfile}: unsupported fields {sorted(unknown)}")
    if kust.get("kind", "Kustomization") != "Kustomization":
        raise UnsupportedKustomization(f"{kfile}: kind {kust.get('kind')!r} (components are not supported)")

    objects: list[dict] = []
    for ref in kust.get("resources") or []:
        path = (root / ref).resolve()
        if path.is_dir():
            objects.extend(render(path))
        elif path.is_file():
            objects.extend(_load_docs(path))
        else:
            raise UnsupportedKustomization(f"{kfile}: resource {ref!r} is neither a file nor a directory (remote?)")

    seen = set()
    for obj in objects:
        key = object_key(obj)
        if key in seen:
            raise ValueError(f"{kfile}: duplicate object {key}")
        seen.add(key)

    _apply_patches(objects, kust.get("patches") or [], root)
    if kust.get("namespace"):
        _apply_namespace(objects, kust["namespace"])
    _apply_labels(objects, kust.get("labels") or [])
    _apply_images(objects, kust.get("images") or [])
    return objects
