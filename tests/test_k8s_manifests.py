"""deploy/k8s checked without a cluster: the schemas, and what ties the files together.

No Kubernetes API server runs here, so these tests read the manifests the way the cluster would
(tests/k8s_manifests.py):

- kustomization.yaml lists every manifest but the ones applied separately, once, and our reading
  of it equals `kubectl kustomize` where kubectl is installed;
- every built-in kind validates against the Kubernetes OpenAPI schemas bundled with the
  `kubernetes-validate` package (strict: unknown fields are errors), offline, for the oldest and
  newest Kubernetes targeted;
- the custom resources (KEDA ScaledObject and TriggerAuthentication, prometheus-operator
  PodMonitor and PrometheusRule) against the minimal schemas in deploy/k8s/schemas/crds.yaml,
  which reject what KEDA would not take;
- consistency: probes on the metrics port (and those paths served), one set of labels behind every
  selector, KEDA's brokers/group/topic/credentials equal the ConfigMap's and the Secret's, the grace
  period outlasts the shutdown bound computed from the code, images and arguments match the
  Dockerfile and parse with `seqcast`, the models volume, unprivileged pods, resources that cover
  the benchmarked figures, and monitoring equal to the compose Prometheus.

The SEQCAST_* settings, mounted paths and signing keys are checked in tests/test_k8s_settings.py.
"""
from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys
import textwrap

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from deploy_checks import ALERTS, PROMETHEUS, ROOT, dockerfile_stages, exec_form, service as compose_service
from k8s_manifests import (K8S, build, configmap_env, container, everything, example_secret, kustomization,
                           manifest_files, one, pod_spec, secret_mount)
from streamer.embedded import free_port
from streamer.settings import Settings

CRD_SCHEMAS = yaml.safe_load((K8S / "schemas/crds.yaml").read_text())
APPLIED_SEPARATELY = {"secret.example.yaml", "train-job.yaml"}  # see kustomization.yaml
BUILT_IN = {"v1", "apps/v1", "policy/v1", "batch/v1"}
# The oldest Kubernetes the manifests target (PDB unhealthyPodEvictionPolicy is on by default from
# 1.27, GA in 1.31) and the newest the pinned kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", all_versions()[-1])
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


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
