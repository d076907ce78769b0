"""Reading deploy/k8s the way the cluster would, for the tests that check it without one.

Shared by tests/test_k8s_manifests.py (schemas and consistency) and tests/test_k8s_settings.py
(settings, mounted paths, signing keys): the files, what `kustomize build` makes of them, the one
object of a kind, a pod's spec, container and environment, and the example Secrets whose keys the
real ones must hold. Kept here so that both read the manifests the same way.
"""
from __future__ import annotations

import yaml

from deploy_checks import ROOT

K8S = ROOT / "deploy/k8s"


def load(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def manifest_files() -> list[str]:
    return sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def build() -> list[dict]:
    """What `kustomize build deploy/k8s` gives for this kustomization: its resources, with the
    namespace set on namespaced objects and the `images` replacements applied."""
    kust = kustomization()
    images = {i["name"]: f"{i.get('newName', i['name'])}:{i['newTag']}" for i in kust.get("images", [])}
    docs = [doc for name in kust["resources"] for doc in load(name)]
    for doc in docs:
        if doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = kust["namespace"]
        for container in pod_spec(doc)["containers"] if pod_spec(doc) else []:
            name = container["image"].split(":")[0]
            container["image"] = images.get(name, container["image"])
    return docs


def everything() -> list[tuple[str, dict]]:
    return [(name, doc) for name in manifest_files() for doc in load(name)]


def one(kind: str, docs: list[dict] | None = None) -> dict:
    found = [d for d in (docs if docs is not None else [d for _, d in everything()]) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(doc: dict) -> dict | None:
    return doc.get("spec", {}).get("template", {}).get("spec")


def container(doc: dict) -> dict:
    return pod_spec(doc)["containers"][0]


def configmap_env() -> dict[str, str]:
    data = one("ConfigMap")["data"]
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values must be strings (quote numbers)"
    return data


def pod_env(doc: dict) -> dict[str, str]:
    """The variables a container of `doc` gets from its envFrom ConfigMaps and its env list."""
    spec = container(doc)
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        assert one("ConfigMap")["metadata"]["name"] == source["configMapRef"]["name"]
        env |= configmap_env()
    env |= {e["name"]: e["value"] for e in spec.get("env", [])}
    return env


def example_secret(name: str) -> dict:
    """The Secret called `name` in secret.example.yaml (its keys are what the real one must hold)."""
    found = [d for d in load("secret.example.yaml") if d["kind"] == "Secret" and d["metadata"]["name"] == name]
    assert len(found) == 1, f"secret.example.yaml has {len(found)} Secrets named {name!r}"
    return found[0]


def secret_mount(doc: dict) -> tuple[str, str]:
    """(mount path, Secret name) of the pod's secret volume."""
    volumes = {v["name"]: v for v in pod_spec(doc)["volumes"]}
    for mount in container(doc)["volumeMounts"]:
        if "secret" in volumes[mount["name"]]:
            assert "items" not in volumes[mount["name"]]["secret"], "every key is mounted under its own name"
            return mount["mountPath"], volumes[mount["name"]]["secret"]["secretName"]
    raise AssertionError("no secret volume mounted")
