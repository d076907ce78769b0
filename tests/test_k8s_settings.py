"""deploy/k8s's pod environments checked without a cluster: settings, service links, mounts, signing keys.

No Kubernetes API server runs here, so these tests build each pod's environment the way the
kubelet would (tests/k8s_manifests.py), with the example Secret's keys written out as files:

- every SEQCAST_* variable of the Deployment and the Job is a real setting and the streamer pod's
  whole environment parses (`Settings.from_env`), and not without the password file;
- every path a setting or `--sign-key` names lies in a volume mounted in that pod, and a Secret's
  file is one of its keys;
- signing: the streamer pods trust a public key from their Secret, the training Job signs with a
  private key from another Secret, which no streamer pod mounts, and serve loads that key;
- the service-link variables Kubernetes would inject for every Service of the manifests (and for
  an IPv6 one, and one named like a setting) change no setting next to the ConfigMap, and
  `seqcast serve` started with them fails on its bundle, not on its settings.

Schemas and the consistency of the files are checked in tests/test_k8s_manifests.py.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from deploy_checks import ROOT
from k8s_manifests import container, everything, example_secret, one, pod_env, pod_spec, secret_mount
from streamer.embedded import free_port
from streamer.settings import ENV_PREFIX, Settings, SettingsError, setting_of

TRUSTED_KEYS = f"{ENV_PREFIX}TRUSTED_KEYS"


def mounted_file(doc: dict, path: str) -> tuple[dict, str]:
    """(volume, path inside it) of the volume mounted over `path` in the pod of `doc`."""
    volumes = {v["name"]: v for v in pod_spec(doc)["volumes"]}
    mounts = [m for m in container(doc)["volumeMounts"]
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{path} is under no volume mount of the {doc['kind']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))  # the innermost mount wins, as in the kubelet
    return volumes[mount["name"]], path[len(mount["mountPath"]):].lstrip("/")


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
