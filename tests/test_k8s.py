"""deploy/k8s checked without a cluster: schemas, settings, service links, and what ties the files together.

No Kubernetes API server runs here, so these tests read the manifests the way the cluster would:

- every built-in kind validates against the Kubernetes OpenAPI schemas bundled with the
  `kubernetes-validate` package (strict: unknown fields are errors), offline;
- the custom resources (KEDA ScaledObject and TriggerAuthentication, prometheus-operator
  PodMonitor and PrometheusRule) against the minimal schemas in deploy/k8s/schemas/crds.yaml;
- every SEQCAST_* variable is a real setting and the pod's whole environment parses
  (`Settings.from_env`, with the Secret's files written out), also next to the service-link
  variables Kubernetes would inject for every Service of the manifests; every path a setting or
  `--sign-key` names lies in a volume mounted in that pod, and a Secret's file is one of its keys;
- signing: the streamer pods trust a public key from their Secret, the training Job signs with a
  private key from another Secret, which no streamer pod mounts;
- consistency: probes on the metrics port, one set of labels behind every selector, KEDA's
  brokers/group/topic equal the ConfigMap's, the grace period outlasts the shutdown bound
  computed from the code, images and arguments match the Dockerfile and parse with `seqcast`.
"""
from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from deploy_checks import ALERTS, PROMETHEUS, ROOT, dockerfile_stages, exec_form, service as compose_service
from streamer.embedded import free_port
from streamer.settings import ENV_PREFIX, Settings, SettingsError, setting_of

K8S = ROOT / "deploy/k8s"
CRD_SCHEMAS = yaml.safe_load((K8S / "schemas/crds.yaml").read_text())
APPLIED_SEPARATELY = {"secret.example.yaml", "train-job.yaml"}  # see kustomization.yaml
BUILT_IN = {"v1", "apps/v1", "policy/v1", "batch/v1"}
# The oldest Kubernetes the manifests target (PDB unhealthyPodEvictionPolicy is on by default from
# 1.27, GA in 1.31) and the newest the pinned kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", all_versions()[-1])
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
TRUSTED_KEYS = f"{ENV_PREFIX}TRUSTED_KEYS"


# --- reading the manifests -------------------------------------------------------------------------
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


def mounted_file(doc: dict, path: str) -> tuple[dict, str]:
    """(volume, path inside it) of the volume mounted over `path` in the pod of `doc`."""
    volumes = {v["name"]: v for v in pod_spec(doc)["volumes"]}
    mounts = [m for m in container(doc)["volumeMounts"]
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{path} is under no volume mount of the {doc['kind']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))  # the innermost mount wins, as in the kubelet
    return volumes[mount["name"]], path[len(mount["mountPath"]):].lstrip("/")


def secret_mount(doc: dict) -> tuple[str, str]:
    """(mount path, Secret name) of the pod's secret volume."""
    volumes = {v["name"]: v for v in pod_spec(doc)["volumes"]}
    for mount in container(doc)["volumeMounts"]:
        if "secret" in volumes[mount["name"]]:
            assert "items" not in volumes[mount["name"]]["secret"], "every key is mounted under its own name"
            return mount["mountPath"], volumes[mount["name"]]["secret"]["secretName"]
    raise AssertionError("no secret volume mounted")


def env_with_secret_files(env: dict[str, str], doc: dict, tmp_path: Path) -> dict[str, str]:
    """`env` with each *_FILE path under the secret mount moved to a file holding that key of the
    example Secret, as the kubelet would project it."""
    mount, secret_name = secret_mount(doc)
    secret = example_secret(secret_name)
    out = dict(env)
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        if key.endswith(("_FILE", "_CAFILE", "_CERTFILE", "_KEYFILE")) or key == TRUSTED_KEYS:
            locals_ = []
            for path in [p.strip() for p in value.split(",") if p.strip()]:  # TRUSTED_KEYS: a list
                assert path.startswith(mount + "/"), f"{key}={path} is not under the secret mount {mount}"
                item = path[len(mount) + 1:]
                assert item in secret["stringData"], f"{key}: the Secret has no key {item!r}"
                local = tmp_path / item
                local.write_text(secret["stringData"][item])
                locals_.append(str(local))
            out[key] = ",".join(locals_)
    return out


def service_links(service: dict, cluster_ip: str = "10.96.0.10") -> dict[str, str]:
    """The variables the kubelet injects for `service` into pods of its namespace (enableServiceLinks:
    true), as pkg/kubelet/envvars does: headless Services inject nothing."""
    spec = service["spec"]
    ip = spec.get("clusterIP", cluster_ip)
    if ip in ("None", ""):
        return {}
    name = service["metadata"]["name"].upper().replace("-", "_")
    host_port = lambda port: f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"  # net.JoinHostPort
    ports = spec["ports"]
    env = {f"{name}_SERVICE_HOST": ip, f"{name}_SERVICE_PORT": str(ports[0]["port"])}
    for port in ports:
        if port.get("name"):
            env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
    for i, port in enumerate(ports):
        proto = port.get("protocol", "TCP")
        url = f"{proto.lower()}://{host_port(port['port'])}"
        if i == 0:
            env[f"{name}_PORT"] = url
        prefix = f"{name}_PORT_{port['port']}_{proto.upper()}"
        env |= {prefix: url, f"{prefix}_PROTO": proto.lower(), f"{prefix}_PORT": str(port["port"]),
                f"{prefix}_ADDR": ip}
    return env


def matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are used here"
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


# --- files and schemas ---------------------------------------------------------------------------
def test_kustomization_lists_every_manifest_once() -> None:
    resources = kustomization()["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) | APPLIED_SEPARATELY == set(manifest_files()), "a manifest neither listed nor applied separately"
    assert not set(resources) & APPLIED_SEPARATELY
    kinds = {d["kind"] for d in build()}
    assert {"Deployment", "ConfigMap", "Service", "PodDisruptionBudget", "PodMonitor", "ScaledObject",
            "TriggerAuthentication", "PersistentVolumeClaim"} <= kinds
    assert "Secret" not in kinds, "no Secret in git: it is created from files"


def test_build_matches_kubectl_kustomize() -> None:
    """Our reading of kustomization.yaml equals kustomize's own, where kubectl is installed."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not installed")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    key = lambda d: (d["kind"], d["metadata"]["name"])
    assert sorted(yaml.safe_load_all(out.stdout), key=key) == sorted(build(), key=key)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_built_in_kinds_match_the_kubernetes_schemas(version: str) -> None:
    checked = 0
    for name, doc in everything():
        if doc["apiVersion"] in BUILT_IN:
            try:
                got = kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{name}: {doc['kind']} {'.'.join(map(str, err.path))}: {err.message}")
            assert got == version.rsplit(".", 1)[0], f"validated against {got}, not {version}"
            checked += 1
    assert checked >= 8


def test_strict_validation_rejects_a_misspelt_field() -> None:
    deployment = one("Deployment")
    kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    typo = yaml.safe_load(yaml.safe_dump(deployment))
    typo["spec"]["template"]["spec"]["enableServiceLink"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSIONS[-1], strict=True)


def test_schema_validation_works_without_a_network() -> None:
    """The CI reaches only PyPI: validate in a process whose sockets cannot connect anywhere."""
    script = textwrap.dedent(f"""
        import socket, urllib.request, yaml, kubernetes_validate
        def refuse(*args, **kwargs):
            raise OSError("network disabled for this test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        try:
            urllib.request.urlopen("https://raw.githubusercontent.com/", timeout=2)
            raise SystemExit("the network block does not work")
        except OSError:
            pass
        for name in ["deployment.yaml", "service.yaml", "pdb.yaml", "configmap.yaml"]:
            doc = yaml.safe_load(open("{K8S}/" + name))
            kubernetes_validate.validate(doc, "{K8S_VERSIONS[-1]}", strict=True)
        print("validated offline")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "validated offline" in out.stdout, out.stderr[-2000:]


def crd_errors(doc: dict) -> list[str]:
    schema = CRD_SCHEMAS[f"{doc['apiVersion']}/{doc['kind']}"]
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    if doc["kind"] == "ScaledObject":
        meta = jsonschema.Draft202012Validator(CRD_SCHEMAS["kafkaTriggerMetadata"])
        for trigger in doc["spec"]["triggers"]:
            assert trigger["type"] == "kafka"
            errors += [f"trigger metadata {'.'.join(map(str, e.absolute_path))}: {e.message}"
                       for e in meta.iter_errors(trigger["metadata"])]
    return errors


def test_custom_resources_match_their_crd_schemas() -> None:
    seen = set()
    for name, doc in everything():
        if doc["apiVersion"] not in BUILT_IN:
            assert not crd_errors(doc), f"{name}: {crd_errors(doc)}"
            seen.add(doc["kind"])
    assert seen == {"ScaledObject", "TriggerAuthentication", "PodMonitor", "PrometheusRule"}


@pytest.mark.parametrize("path, value", [
    (("spec", "maxReplicas"), 6),  # KEDA's field is maxReplicaCount
    (("spec", "triggers", 0, "metadata", "lagThreshold"), 10000),  # metadata values are strings
    (("spec", "triggers", 0, "metadata", "lagTreshold"), "10"),  # not a kafka scaler key
    (("spec", "triggers", 0, "metadata", "sasl"), "SCRAM-SHA-512"),  # KEDA spells it scram_sha512
])
def test_crd_schemas_reject_what_keda_would_not_take(path: tuple, value) -> None:
    doc = yaml.safe_load(yaml.safe_dump(one("ScaledObject")))
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    assert crd_errors(doc)


# --- settings ------------------------------------------------------------------------------------
def test_every_seqcast_variable_is_a_setting_and_the_pod_env_parses(tmp_path) -> None:
    for doc in (one("Deployment"), one("Job")):
        for key, value in pod_env(doc).items():
            if key.startswith(ENV_PREFIX):
                assert setting_of(key, value)[0] is not None, f"{key} is skipped, not a setting"
    env = pod_env(one("Deployment"))
    assert [k for k in env if k.endswith("_FILE")], "secrets are read from mounted files"
    plain = {k: v for k, v in env.items() if not k.endswith("_FILE")}
    with pytest.raises(SettingsError, match="KAFKA_SASL_PASSWORD"):  # SASL needs the password file
        Settings.from_env(plain)
    settings = Settings.from_env(env_with_secret_files(env, one("Deployment"), tmp_path))
    assert settings.kafka_sasl_password.reveal() == "change-me" and settings.kafka_sasl_username == "seqcast"
    assert settings.redis_password.reveal() == "change-me" and settings.redis_url.startswith("rediss://")
    assert settings.metrics_host == "0.0.0.0" and not settings.assign_all_partitions and not settings.bundle
    assert settings.trusted_key_files() and not settings.missing_files(), settings.missing_files()
    with pytest.raises(SettingsError, match="unknown setting SEQCAST_KAFKA_SASL_PASSWORD_FILES"):
        setting_of("SEQCAST_KAFKA_SASL_PASSWORD_FILES", "/x")


def test_every_path_a_setting_names_is_mounted_in_its_pod() -> None:
    import seqcast_cli

    checked = 0
    for doc in (one("Deployment"), one("Job")):
        paths = [(key, p.strip()) for key, value in pod_env(doc).items() if key.startswith(ENV_PREFIX)
                 for p in value.split(",") if p.strip().startswith("/")]
        if doc["kind"] == "Job":
            paths.append(("--sign-key", str(seqcast_cli.build_parser().parse_args(container(doc)["args"]).sign_key)))
        for key, path in paths:
            volume, item = mounted_file(doc, path)
            if "secret" in volume:
                assert item in example_secret(volume["secret"]["secretName"])["stringData"], (key, path)
            checked += 1
    assert checked >= 8
    with pytest.raises(AssertionError, match="under no volume mount"):  # the check can fail
        mounted_file(one("Deployment"), "/etc/seqcast/signing.pub.pem")


def test_pods_require_signatures_and_only_the_trainer_holds_the_private_key(tmp_path) -> None:
    import seqcast_cli

    from streamer.signing import generate_keypair, load_trusted

    deployment, job = one("Deployment"), one("Job")
    trusted = [p.strip() for p in pod_env(deployment)[TRUSTED_KEYS].split(",") if p.strip()]
    assert trusted, "the streamer pods must verify bundle signatures"
    _, serving_secret = secret_mount(deployment)
    for path in trusted:
        volume, item = mounted_file(deployment, path)
        assert volume["secret"]["secretName"] == serving_secret
        assert "BEGIN PUBLIC KEY" in example_secret(serving_secret)["stringData"][item]
    sign_key = str(seqcast_cli.build_parser().parse_args(container(job)["args"]).sign_key)
    volume, item = mounted_file(job, sign_key)
    signing_secret = volume["secret"]["secretName"]
    assert signing_secret != serving_secret, "the private key must not share the serving pods' Secret"
    assert "PRIVATE KEY" in example_secret(signing_secret)["stringData"][item]
    assert not any("PRIVATE KEY" in v for v in example_secret(serving_secret)["stringData"].values())
    serving_secrets = {v["secret"]["secretName"] for v in pod_spec(deployment)["volumes"] if "secret" in v}
    assert serving_secrets == {serving_secret}, "the streamer pods mount the signing key"
    assert not any(k.startswith("SIGNING_KEY") for k in pod_env(deployment))
    assert all(m.get("readOnly") for m in container(job)["volumeMounts"] if m["name"] == volume["name"])
    # What serve does with the mounted file: a key pair from `seqcast keygen` at that name loads.
    _, public, kid = generate_keypair(tmp_path / "keys", "seqcast-signing", password="")
    env = env_with_secret_files(pod_env(deployment), deployment, tmp_path)
    for local in env[TRUSTED_KEYS].split(","):
        Path(local).write_bytes(public.read_bytes())
    assert load_trusted(Settings.from_env(env).trusted_key_files()).describe().startswith(kid)


def all_services() -> list[dict]:
    return [d for _, d in everything() if d["kind"] == "Service"]


def test_service_link_variables_are_accepted_next_to_the_configmap(tmp_path) -> None:
    deployment = one("Deployment")
    assert pod_spec(deployment)["enableServiceLinks"] is False and pod_spec(one("Job"))["enableServiceLinks"] is False
    env = env_with_secret_files(pod_env(deployment), deployment, tmp_path)
    expected = Settings.from_env(env)
    # Our Services, an IPv6 one, and one named like a setting (SEQCAST_METRICS_PORT=tcp://...).
    metrics_named = {"metadata": {"name": "seqcast-metrics"}, "spec": {"ports": [{"name": "http", "port": 9108}]}}
    cases = [(s, "10.96.0.10") for s in all_services()] + [(all_services()[0], "fd00::a"), (metrics_named, "10.96.0.11")]
    for service, ip in cases:
        links = service_links(service, ip)
        assert any(k.startswith(ENV_PREFIX) for k in links), "a Service named seqcast* makes SEQCAST_* links"
        assert Settings.from_env(links) == Settings()  # alone: none of them is a setting
        assert Settings.from_env(links | env) == expected  # the kubelet lets explicit env win
    assert service_links({"metadata": {"name": "seqcast"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}) == {}
    assert "SEQCAST_PORT_9108_TCP_ADDR" in service_links(all_services()[0])
    with pytest.raises(SettingsError, match="SEQCAST_SERVICE_HOSTS"):  # not a link, not a setting
        Settings.from_env({"SEQCAST_SERVICE_HOSTS": "10.0.0.1"})


def test_serve_with_service_links_fails_on_the_bundle_not_the_settings() -> None:
    seqcast = ROOT / ".venv/bin/seqcast"
    if not seqcast.exists():
        pytest.skip(".venv/bin/seqcast is not installed (make venv)")
    base = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    # SEQCAST_METRICS_PORT: a free port, so that a busy 9108 cannot fail the start first.
    links = {"SEQCAST_SERVICE_HOST": "10.0.0.1", "SEQCAST_PORT": "tcp://10.0.0.1:9108",
             "SEQCAST_METRICS_PORT": str(free_port()), "SEQCAST_METRICS_HOST": "127.0.0.1"}
    run = lambda extra: subprocess.run([str(seqcast), "serve", "--bundle", "/nonexistent"], env=base | links | extra,
                                       capture_output=True, text=True, timeout=60)
    out = run({})
    assert out.returncode == 1, out.stderr[-2000:]
    assert "/nonexistent: not a bundle directory" in out.stderr and "unknown setting" not in out.stderr
    typo = run({"SEQCAST_BUNDEL": "/x"})  # the same start with a misspelt setting is refused first
    assert typo.returncode == 2 and "unknown setting SEQCAST_BUNDEL" in typo.stderr


# --- consistency ---------------------------------------------------------------------------------
def test_probes_and_scrapes_use_the_metrics_port() -> None:
    deployment = one("Deployment")
    port = int(configmap_env()["SEQCAST_METRICS_PORT"])
    named = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    resolve = lambda p: named[p] if isinstance(p, str) else p
    spec = container(deployment)
    assert spec["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/livez", "a dependency outage must not restart the pod"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert resolve(spec[probe]["httpGet"]["port"]) == port, probe
    service = one("Service")
    assert [resolve(p["targetPort"]) for p in service["spec"]["ports"]] == [port]
    endpoints = one("PodMonitor")["spec"]["podMetricsEndpoints"]
    assert [resolve(e["port"]) for e in endpoints] == [port] and endpoints[0]["path"] == "/metrics"
    assert not any(port == resolve(p) for p in [9109]), "the check can fail"


def test_the_probed_paths_exist_on_the_metrics_server() -> None:
    import urllib.error
    import urllib.request

    from prometheus_client import CollectorRegistry

    from streamer.http import Health, serve_http

    port = free_port()
    server = serve_http("127.0.0.1", port, CollectorRegistry(), Health())
    try:
        spec = container(one("Deployment"))
        paths = {spec[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe", "startupProbe")}
        paths |= {e["path"] for e in one("PodMonitor")["spec"]["podMetricsEndpoints"]}
        for path in paths | {"/nope"}:
            try:
                code = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).status
            except urllib.error.HTTPError as err:
                code = err.code
            assert (code == 404) == (path == "/nope"), (path, code)
    finally:
        server.shutdown()
        server.server_close()


def test_one_set_of_labels_behind_every_selector() -> None:
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {"Deployment": deployment["spec"]["selector"], "Service": {"matchLabels": one("Service")["spec"]["selector"]},
                 "PodDisruptionBudget": one("PodDisruptionBudget")["spec"]["selector"],
                 "PodMonitor": one("PodMonitor")["spec"]["selector"],
                 "topologySpread": pod_spec(deployment)["topologySpreadConstraints"][0]["labelSelector"]}
    trainer = one("Job")["spec"]["template"]["metadata"]["labels"]
    for what, selector in selectors.items():
        assert matches(selector, labels), f"{what} does not select the streamer pods"
        assert not matches(selector, trainer), f"{what} would also select the training pods"
    target = one("ScaledObject")["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    assert not matches({"matchLabels": {**labels, "app.kubernetes.io/component": "trainer"}}, labels)


def test_keda_reads_the_group_the_streamer_commits() -> None:
    env = configmap_env()
    scaled = one("ScaledObject")
    [trigger] = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == env["SEQCAST_BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == env["SEQCAST_GROUP_ID"] and meta["topic"] == env["SEQCAST_INPUT_TOPIC"]
    assert meta["offsetResetPolicy"] == "earliest"  # the consumer starts a new group at the earliest offset
    protocol = env["SEQCAST_KAFKA_SECURITY_PROTOCOL"]
    assert meta.get("tls", "disable") == ("enable" if protocol in ("SSL", "SASL_SSL") else "disable")
    assert meta.get("sasl", "none") == (KEDA_SASL[env["SEQCAST_KAFKA_SASL_MECHANISM"]] if protocol.startswith("SASL_") else "none")
    auth = one("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    _, secret_name = secret_mount(one("Deployment"))
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert all(r["name"] == secret_name and r["key"] in example_secret(secret_name)["stringData"] for r in refs.values())
    files = {"username": "SEQCAST_KAFKA_SASL_USERNAME_FILE", "password": "SEQCAST_KAFKA_SASL_PASSWORD_FILE",
             "ca": "SEQCAST_KAFKA_SSL_CAFILE"}
    for parameter, key in files.items():  # KEDA and the pods use the same credentials
        assert env[key].rsplit("/", 1)[1] == refs[parameter]["key"], parameter
    # maxReplicaCount = partitions of the input topic; the compose stack creates `events` with 6.
    partitions = re.search(r"events:(\d+)", " ".join(compose_service("kafka-init")["command"])).group(1)
    assert scaled["spec"]["maxReplicaCount"] == int(partitions) and scaled["spec"]["minReplicaCount"] >= 1


def shutdown_bound_s() -> float:
    """The longest SIGTERM -> exit of `seqcast serve` when every dependency hangs, from the code."""
    from streamer import app, confluent_client, rollout, service, transport

    join = re.search(r"join\(timeout=([\d.]+)\)", inspect.getsource(rollout.ModelManager.stop))
    redis_timeout = inspect.signature(app.redis_client).parameters["timeout_s"].default
    producer_close = inspect.signature(confluent_client.Producer.close).parameters["timeout_s"].default
    return (Settings().poll_timeout_ms / 1000  # the loop notices the signal
            + redis_timeout                  # the batch's Redis call in flight (then abandoned)
            + service.FINAL_FLUSH_S + transport.COMMIT_TIMEOUT_MS / 1000
            + float(join.group(1)) + redis_timeout  # registry thread, then its heartbeat delete
            + confluent_client.CLOSE_TIMEOUT_S + producer_close)


def test_grace_period_outlasts_the_shutdown_bound() -> None:
    bound = shutdown_bound_s()
    assert 40 < bound < 60, bound  # 50.2 s today; a change in the code's timeouts shows up here
    grace = pod_spec(one("Deployment"))["terminationGracePeriodSeconds"]
    assert grace >= bound + 5, (grace, bound)
    assert configmap_env().get("SEQCAST_KAFKA_CLIENT", "confluent") == "confluent", "the bound is confluent's"
    assert "preStop" not in container(one("Deployment")).get("lifecycle", {})


def test_images_and_arguments_match_the_dockerfile_and_the_cli() -> None:
    import seqcast_cli

    stages = {s.name: s for s in dockerfile_stages()}
    parser = seqcast_cli.build_parser()
    built = one("Deployment", build())
    serve, train = container(built), container(one("Job"))
    for spec, stage, command in ((serve, "runtime", "serve"), (train, "trainer", "train")):
        entrypoint = exec_form(stages[stage].all("ENTRYPOINT")[-1])
        assert spec.get("command", entrypoint) == entrypoint == ["seqcast"]
        args = parser.parse_args(spec["args"])
        assert args.command == command
    assert serve["args"] == exec_form(stages["runtime"].all("CMD")[-1])
    # The image names docker-compose.yml builds for each target, under any registry and tag.
    repo = lambda image: image.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    assert repo(serve["image"]) == repo(compose_service("streamer")["image"]) and ":" in serve["image"]
    assert repo(train["image"]) == repo(compose_service("trainer")["image"])
    args = parser.parse_args(train["args"])
    env = configmap_env()
    assert args.name == env["SEQCAST_MODEL_NAME"] and str(args.models_dir) == env["SEQCAST_MODELS_DIR"]


def test_models_volume_is_shared_written_by_training_read_by_serving() -> None:
    claim = one("PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    models_dir = configmap_env()["SEQCAST_MODELS_DIR"]
    for doc, read_only in ((one("Deployment"), True), (one("Job"), False)):
        volumes = {v["name"]: v for v in pod_spec(doc)["volumes"]}
        [mount] = [m for m in container(doc)["volumeMounts"] if m["mountPath"] == models_dir]
        source = volumes[mount["name"]]["persistentVolumeClaim"]
        assert source["claimName"] == claim["metadata"]["name"]
        assert bool(mount.get("readOnly")) == read_only and bool(source.get("readOnly")) == read_only


def test_pods_run_unprivileged_as_the_image_user() -> None:
    uid = int(re.search(r"useradd .*--uid (\d+)", "\n".join(a for s in dockerfile_stages() for a in s.all("RUN"))).group(1))
    for doc in (one("Deployment"), one("Job")):
        pod, spec = pod_spec(doc), container(doc)
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == uid
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
        ctx = spec["securityContext"]
        assert ctx["readOnlyRootFilesystem"] and not ctx["allowPrivilegeEscalation"] and ctx["capabilities"]["drop"] == ["ALL"]
        assert "/tmp" in {m["mountPath"] for m in spec["volumeMounts"]}, "a writable /tmp beside the read-only root"


def test_resources_cover_the_benchmarked_figures() -> None:
    """Requests from docs/benchmarks.md (CPU) and docs/reliability.md (RSS); a change there shows up here."""
    row = re.search(r"\| lstm \| confluent \| sustained, 1 process[^|]*\| ([\d,]+) \|(?: [^|]+ \|){3} ([\d.]+) \|",
                    (ROOT / "docs/benchmarks.md").read_text())
    cores = int(row.group(1).replace(",", "")) * float(row.group(2)) / 1000
    peak_mib = int(re.search(r"member RSS MiB: .*peak (\d+)", (ROOT / "docs/reliability.md").read_text()).group(1))
    resources = container(one("Deployment"))["resources"]
    cpu = lambda q: float(q[:-1]) / 1000 if q.endswith("m") else float(q)
    mib = lambda q: int(q[:-2]) * (1024 if q.endswith("Gi") else 1)
    assert cores <= cpu(resources["requests"]["cpu"]) < cpu(resources["limits"]["cpu"]), cores
    assert peak_mib < mib(resources["requests"]["memory"]) < mib(resources["limits"]["memory"]), peak_mib


def test_monitoring_matches_the_compose_prometheus() -> None:
    job = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"][0]["job_name"]
    relabel = one("PodMonitor")["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {"action": "replace", "targetLabel": "job", "replacement": job} in relabel
    assert one("PrometheusRule")["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
