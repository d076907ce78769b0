"""seqcast on secured Kafka and Redis, end to end, with the real commands in subprocesses.

- The whole pipeline over TLS: `seqcast replay` produces through a TLS listener (Tansu behind a
  TLS proxy that it advertises, tests/secure_infra.py), `seqcast serve` consumes over TLS and
  keeps its windows, live accuracy and registry in a TLS Redis as an ACL user whose password
  comes from a file (the Kubernetes secrets convention), `seqcast tail` reads the predictions
  over TLS and `seqcast models list` reads the registry. Every output (logs at DEBUG, HTTP
  endpoints, predictions, CLI output) is then searched for the passwords: none may appear.
- Refusals in operator terms: a wrong CA names the TLS handshake and the CA file; a SASL
  login the broker refuses names the user and the mechanism (here Tansu itself, which refuses
  every mechanism in the handshake; full SCRAM/PLAIN logins run through tests/sasl_proxy.py in
  tests/test_secure_sasl.py); a wrong Redis password names the user.
- An outage is not a refusal: a secured broker that is down is waited for.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.register_assert_rewrite("secure_infra")
from conftest import ROOT  # noqa: E402
from secure_infra import REDIS_PASSWORD, KafkaTls, RedisTls  # noqa: E402
from streamer.embedded import free_port  # noqa: E402
from schema_oracle import schema_errors

pytest_plugins = ["secure_infra"]
pytestmark = pytest.mark.slow

SASL_PASSWORD = "Sasl-Pw-5e1d-MARKER"


def seqcast(args: list[str], env: dict[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import seqcast_cli; raise SystemExit(seqcast_cli.main())", *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)


def environment(tmp_path: Path, **values: object) -> dict[str, str]:
    """os.environ without SEQCAST_*, plus these settings; *_password values go through *_FILE files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQCAST_")}
    env["PYTHONPATH"] = str(ROOT)
    for name, value in values.items():
        if name.endswith("_password"):
            path = tmp_path / f"{name}.secret"
            path.write_text(f"{value}\n")
            env[f"SEQCAST_{name.upper()}_FILE"] = str(path)
        else:
            env[f"SEQCAST_{name.upper()}"] = str(value)
    return env


def secured(kafka: KafkaTls, redis_tls: RedisTls, **more: object) -> dict[str, object]:
    """Settings for the TLS broker and the TLS Redis (ACL user), as SEQCAST_* values."""
    values = {"bootstrap_servers": kafka.bootstrap, "kafka_security_protocol": "SSL",
              "kafka_ssl_cafile": kafka.cafile, **{k: getattr(redis_tls.settings(), k) for k in (
                  "redis_url", "redis_username", "redis_ssl_cafile")},
              "redis_password": REDIS_PASSWORD}
    return values | more


def http(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.read().decode()


def wait_ready(port: int, proc: subprocess.Popen, log_path: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            if json.loads(http(port, "/healthz")).get("ready"):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready after {timeout_s}s: {log_path.read_text()[-3000:]}")


def pipeline(env: dict[str, str], port: int, tmp_path: Path, events: int) -> dict[str, str]:
    """`seqcast replay` of `events` synthetic events, `seqcast serve` until `seqcast tail` has read a
    prediction for each, `/healthz` (ready), `/metrics`, `/livez`, `seqcast models list`, SIGTERM
    (exit 0): every output, by name, for the caller to search for secrets."""
    sent = seqcast(["replay", "synthetic:users=20,items=30,seed=3", "--limit", str(events), "--partitions", "2"], env)
    assert sent.returncode == 0, sent.stderr[-2000:]
    assert f"sent {events} events" in sent.stderr
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        serve = subprocess.Popen([sys.executable, "-m", "streamer", "serve"], env=env, cwd=ROOT, stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        wait_ready(port, serve, log_path)  # serve creates the predictions topic that tail reads
        tail = seqcast(["tail", "--from-beginning", "--limit", str(events)], env, timeout_s=120)
        assert tail.returncode == 0, tail.stderr[-2000:] + log_path.read_text()[-3000:]
        predictions = [json.loads(line) for line in tail.stdout.splitlines()]
        for prediction in predictions:  # every prediction the end-to-end tests read keeps the published schema
            assert not schema_errors("prediction", prediction), (schema_errors("prediction", prediction), prediction)
        assert len({p["event_id"] for p in predictions}) == events
        health, metrics, live = http(port, "/healthz"), http(port, "/metrics"), http(port, "/livez")
        assert json.loads(health)["ready"] is True
        listing = seqcast(["models", "list"], env)
        assert listing.returncode == 0, listing.stderr
        serve.terminate()
        assert serve.wait(timeout=60) == 0
    finally:
        serve.kill()
    logs = log_path.read_text()
    assert '"msg": "started"' in logs
    return {"serve logs": logs, "replay": sent.stdout + sent.stderr, "tail": tail.stdout + tail.stderr,
            "/healthz": health, "/metrics": metrics, "/livez": live, "models list": listing.stdout + listing.stderr}


def test_the_pipeline_runs_over_tls_with_an_acl_user_and_prints_no_secret(kafka_tls, redis_tls, bundle_dir,
                                                                          tmp_path, kafka_client) -> None:
    run = f"sec{time.monotonic_ns() % 10**8}"
    port = free_port()
    values = secured(kafka_tls, redis_tls, input_topic=f"{run}-events", output_topic=f"{run}-predictions",
                     dlq_topic=f"{run}-dlq", key_prefix=run, group_id=run, assign_all_partitions="true",
                     bundle=bundle_dir, metrics_port=port, metrics_host="127.0.0.1", poll_timeout_ms=100,
                     log_level="DEBUG", stats_interval_s=1, kafka_client=kafka_client)
    outputs = pipeline(environment(tmp_path, **values), port, tmp_path, events=200)
    for name, text in outputs.items():
        assert REDIS_PASSWORD not in text, f"the Redis password appears in {name}"


def test_a_wrong_ca_is_named_by_serve_replay_and_tail(kafka_tls, redis_tls, pki, bundle_dir, tmp_path) -> None:
    env = environment(tmp_path, **secured(kafka_tls, redis_tls, kafka_ssl_cafile=pki.other_ca, bundle=bundle_dir,
                                          metrics_port=0))
    for args in (["tail", "--limit", "1"], ["replay", "synthetic:users=2,items=3,events=5"], ["serve"]):
        done = seqcast(args, env, timeout_s=60)
        assert done.returncode == 1, (args, done.stderr[-2000:])
        assert f"TLS handshake with {kafka_tls.bootstrap} failed: certificate verify failed" in done.stderr, done.stderr
        assert f"CA file {pki.other_ca}" in done.stderr


def test_a_wrong_redis_password_is_named_without_the_password(kafka_tls, redis_tls, bundle_dir, tmp_path) -> None:
    wrong = "Wrong-Redis-Pw-MARKER"
    env = environment(tmp_path, **secured(kafka_tls, redis_tls, redis_password=wrong, bundle=bundle_dir,
                                          metrics_port=0))
    done = seqcast(["serve"], env, timeout_s=60)
    assert done.returncode == 1
    assert "Redis authentication failed for user 'seqcast'" in done.stderr, done.stderr[-2000:]
    listing = seqcast(["models", "list"], env)
    assert listing.returncode != 0 and "authentication failed" in listing.stderr.lower()
    for text in (done.stdout, done.stderr, listing.stdout, listing.stderr):
        assert wrong not in text


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_a_refused_sasl_login_is_named_and_the_password_never_printed(broker, bundle_dir, tmp_path, client) -> None:
    env = environment(tmp_path, bootstrap_servers=broker, kafka_client=client,
                      kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-256",
                      kafka_sasl_username="svc-seqcast", kafka_sasl_password=SASL_PASSWORD, bundle=bundle_dir,
                      metrics_port=0, log_level="DEBUG")
    for args in (["tail", "--limit", "1"], ["replay", "synthetic:users=2,items=3,events=5"], ["serve"]):
        done = seqcast(args, env, timeout_s=90)
        assert done.returncode == 1, (args, done.stderr[-2000:])
        assert "SASL authentication failed for user 'svc-seqcast' (mechanism SCRAM-SHA-256)" in done.stderr, \
            done.stderr[-2000:]
        assert SASL_PASSWORD not in done.stdout + done.stderr


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_a_secured_broker_that_is_down_is_waited_for_not_refused(pki, bundle_dir, tmp_path, kafka_client,
                                                                 protocol) -> None:
    """An outage is not a refusal: with TLS/SASL settings and nothing listening, serve stays up
    (alive, not ready), logs that it waits, and stops cleanly; librdkafka's "sasl_ssl://..."
    prefixes and kafka-python's connection names must not be read as a refused login."""
    port = free_port()
    sasl = {"kafka_sasl_mechanism": "SCRAM-SHA-256", "kafka_sasl_username": "svc-seqcast",
            "kafka_sasl_password": SASL_PASSWORD} if protocol == "SASL_SSL" else {}
    env = environment(tmp_path, bootstrap_servers=f"localhost:{free_port()}", kafka_client=kafka_client,
                      kafka_security_protocol=protocol, kafka_ssl_cafile=pki.ca, bundle=bundle_dir,
                      metrics_port=port, metrics_host="127.0.0.1", group_id="sasl-glassline",
                      key_prefix=f"scw{time.monotonic_ns() % 10**8}", registry_poll_ms=0, **sasl)
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        serve = subprocess.Popen([sys.executable, "-m", "streamer", "serve"], env=env, cwd=ROOT, stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while '"waiting for the broker"' not in log_path.read_text():
            assert serve.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(3)  # a few reconnect attempts later: still waiting, still alive
        assert serve.poll() is None, log_path.read_text()[-3000:]
        assert json.loads(http(port, "/healthz"))["ready"] is False
        assert json.loads(http(port, "/livez"))
        serve.terminate()
        assert serve.wait(timeout=30) == 0
    finally:
        serve.kill()
    logs = log_path.read_text()
    for refusal in ("refused seqcast", "TLS handshake with", "SASL authentication failed", '"fatal"'):
        assert refusal not in logs, logs[-3000:]
    assert SASL_PASSWORD not in logs

