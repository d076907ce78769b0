"""`seqcast demo` against a user's own secured cluster, and the embedded one beside a user's settings.

- With --bootstrap and --redis the demo's own clients (topic creation, the feed's producer, the
  prediction and DLQ readers, the Redis checks and key cleanup) and the service it starts reach the
  cluster with the SEQCAST_KAFKA_* / SEQCAST_REDIS_* settings from the environment: here Kafka over
  TLS (Tansu behind the TLS proxy of tests/secure_infra.py, whose `accepted` count proves the
  connections went through it) and TLS Redis as the least-privilege `seqcast` ACL user, its password
  from a *_FILE. No output of the demo, and no line of the service's log, may carry that password.
- A wrong CA or a wrong Redis password ends the demo at start (before any training) with the
  operator's sentence, exit code 1, no traceback, and nothing started.
- When the demo starts Tansu and redis-server itself they are plaintext: the user's security
  variables (a CA file, an ACL password file) must not reach the service, or it would try TLS and a
  login against them.

Run time: the demo bundle is trained once per training-code change and cached in pytest's cache dir
(like conftest's `bundle_dir`), so after the first run no test here trains.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.register_assert_rewrite("secure_infra")
from conftest import _sources_digest  # noqa: E402
from secure_infra import REDIS_PASSWORD, REDIS_USER, KafkaTls, RedisTls  # noqa: E402
from test_demo import SMALL, alive, demo_env, marked, started, summary_numbers  # noqa: E402
from training.demo_procs import KAFKA_SECURITY, REDIS_SECURITY, without_security  # noqa: E402

pytest_plugins = ["secure_infra"]

EVENTS, BAD = 1000, 2


@pytest.fixture(scope="module")
def demo_models(request) -> Path:
    """A models dir whose demo bundle (trained by the first demo run here, on SMALL's log) outlives the
    session, keyed by the training sources like conftest's bundle cache; only demo runs write to it."""
    if getattr(request.config, "cache", None) is not None:
        root = Path(request.config.cache.mkdir("seqcast-demo-models"))
    else:  # -p no:cacheprovider
        root = Path(tempfile.gettempdir()) / "seqcast-test-cache" / "seqcast-demo-models"
    for stale in root.iterdir() if root.is_dir() else []:
        if stale.name != _sources_digest():
            shutil.rmtree(stale, ignore_errors=True)
    return root / _sources_digest()


def run_demo(models: Path, tmp_path: Path, env: dict[str, str], *extra: str,
             timeout_s: float = 300) -> subprocess.CompletedProcess:
    argv = [*SMALL, "--models-dir", str(models), "--pid-file", str(tmp_path / "pids"),
            "--log-dir", str(tmp_path / "logs"), *extra]
    return subprocess.run([sys.executable, "-m", "seqcast_cli", "demo", *argv],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout_s)


def secured_env(tmp_path: Path, kafka: KafkaTls, redis_tls: RedisTls, cafile: str | None = None,
                redis_password: str = REDIS_PASSWORD) -> dict[str, str]:
    """demo_env() plus the user's security settings for the TLS broker and the TLS Redis (ACL user,
    password through SEQCAST_REDIS_PASSWORD_FILE, as Kubernetes secrets are mounted)."""
    secret = tmp_path / "redis-password"
    secret.write_text(redis_password + "\n")
    return demo_env() | {
        "SEQCAST_KAFKA_SECURITY_PROTOCOL": "SSL", "SEQCAST_KAFKA_SSL_CAFILE": cafile or kafka.cafile,
        "SEQCAST_REDIS_USERNAME": REDIS_USER, "SEQCAST_REDIS_PASSWORD_FILE": str(secret),
        "SEQCAST_REDIS_SSL_CAFILE": str(redis_tls.pki.ca)}


def assert_nothing_survived(tmp_path: Path) -> dict[str, int]:
    run_id, pids = started(tmp_path / "pids")
    assert not [name for name, pid in pids.items() if alive(pid)], pids
    assert marked(run_id) == []
    return pids


def logs_of(tmp_path: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((tmp_path / "logs").glob("*.log")))


def test_the_service_inherits_no_security_setting_of_what_the_demo_starts_itself():
    environ = {"PATH": "/bin", "SEQCAST_KAFKA_SECURITY_PROTOCOL": "SSL", "SEQCAST_KAFKA_SASL_PASSWORD_FILE": "/s",
               "SEQCAST_KAFKA_SSL_CAFILE": "/ca", "SEQCAST_KAFKA_CLIENT": "kafka-python",
               "SEQCAST_REDIS_USERNAME": "u", "SEQCAST_REDIS_PASSWORD_FILE": "/p", "SEQCAST_REDIS_SSL_CAFILE": "/rca",
               "SEQCAST_REDIS_SSL_CHECK_HOSTNAME": "false", "SEQCAST_LOG_LEVEL": "DEBUG"}
    kept = {"PATH", "SEQCAST_KAFKA_CLIENT", "SEQCAST_LOG_LEVEL"}
    assert set(without_security(environ, own_kafka=True, own_redis=True)) == kept
    assert set(without_security(environ, own_kafka=False, own_redis=False)) == set(environ)
    assert set(without_security(environ, own_kafka=True, own_redis=False)) == kept | {
        k for k in environ if k.startswith("SEQCAST_REDIS_")}
    assert {"kafka_security_protocol", "kafka_sasl_password", "kafka_ssl_key_password"} <= set(KAFKA_SECURITY)
    assert {"redis_username", "redis_password", "redis_ssl_certfile", "redis_cluster"} <= set(REDIS_SECURITY)


@pytest.mark.slow
def test_demo_runs_over_tls_kafka_and_tls_redis_as_an_acl_user_and_prints_no_password(
        kafka_tls, redis_tls, demo_models, tmp_path):
    accepted_before = kafka_tls.proxy.accepted
    done = run_demo(demo_models, tmp_path, secured_env(tmp_path, kafka_tls, redis_tls), "--bootstrap",
                    kafka_tls.bootstrap, "--redis", redis_tls.url, "--events", str(EVENTS), "--bad-events", str(BAD))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:] + logs_of(tmp_path)[-3000:]
    assert f"broker       {kafka_tls.bootstrap} (SSL)" in out and f"(user {REDIS_USER})" in out
    numbers = summary_numbers(done.stdout)
    assert numbers["valid"] == EVENTS and numbers["predictions"] == EVENTS and numbers["dlq"] == BAD
    assert 0 < numbers["hr_scored"] < EVENTS and 0.0 <= numbers["hr"] <= 1.0
    # The demo's checks, admin client, producer and two readers, and the service's clients: all through TLS.
    assert kafka_tls.proxy.accepted >= accepted_before + 5, (accepted_before, kafka_tls.proxy.accepted)
    pids = assert_nothing_survived(tmp_path)
    assert set(pids) == {"service"}  # neither Tansu nor redis-server: the user's cluster was used
    assert REDIS_PASSWORD not in out, "the Redis password appears in the demo's output"
    assert REDIS_PASSWORD not in logs_of(tmp_path), "the Redis password appears in the service's log"
    # The service's least-privilege ACL user may not SCAN: then the demo says which keys remain.
    run_id, _ = started(tmp_path / "pids")
    admin = redis_tls.admin()
    try:
        left = list(admin.scan_iter(match=f"scdemo{run_id}:*", count=1000))
        if left:
            admin.delete(*left)
    finally:
        admin.close()
    remain = f"this run's Redis keys scdemo{run_id}:* remain: Redis user '{REDIS_USER}'"
    assert bool(left) == (remain in done.stderr), (len(left), done.stderr[-2000:])


@pytest.mark.slow
def test_a_wrong_ca_ends_the_demo_at_start_with_the_tls_handshake_sentence(kafka_tls, redis_tls, pki, demo_models,
                                                                           tmp_path):
    env = secured_env(tmp_path, kafka_tls, redis_tls, cafile=str(pki.other_ca))
    done = run_demo(demo_models, tmp_path, env, "--bootstrap", kafka_tls.bootstrap, "--redis", redis_tls.url,
                    timeout_s=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert (f"seqcast demo: TLS handshake with {kafka_tls.bootstrap} failed: certificate verify failed"
            in done.stderr), done.stderr
    assert f"CA file {pki.other_ca}" in done.stderr
    assert "Traceback" not in done.stderr and "training" not in done.stdout  # refused before a minute of training
    assert started(tmp_path / "pids")[1] == {}


@pytest.mark.slow
def test_a_wrong_redis_password_ends_the_demo_naming_the_user_not_the_password(kafka_tls, redis_tls, demo_models,
                                                                               tmp_path):
    wrong = "Wrong-Demo-Redis-Pw-MARKER"
    env = secured_env(tmp_path, kafka_tls, redis_tls, redis_password=wrong)
    done = run_demo(demo_models, tmp_path, env, "--bootstrap", kafka_tls.bootstrap, "--redis", redis_tls.url,
                    timeout_s=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"seqcast demo: Redis authentication failed for user '{REDIS_USER}' at {redis_tls.url}" in done.stderr, \
        done.stderr
    assert "Traceback" not in done.stderr and wrong not in done.stdout + done.stderr
    assert started(tmp_path / "pids")[1] == {}


@pytest.mark.slow
def test_the_embedded_broker_and_redis_run_plaintext_whatever_security_the_environment_holds(
        kafka_tls, redis_tls, pki, demo_models, tmp_path):
    """The user's settings for their own cluster stay in the environment; the demo's own Tansu and
    redis-server are plaintext, so neither the demo nor the service may use them there."""
    env = secured_env(tmp_path, kafka_tls, redis_tls) | {"SEQCAST_KAFKA_SSL_CERTFILE": str(pki.client_cert),
                                                         "SEQCAST_KAFKA_SSL_KEYFILE": str(pki.client_key)}
    done = run_demo(demo_models, tmp_path, env, "--redis", "embedded", "--events", "300", "--bad-events", "1")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:] + logs_of(tmp_path)[-3000:]
    numbers = summary_numbers(done.stdout)
    assert numbers["predictions"] == 300 and numbers["dlq"] == 1
    assert set(assert_nothing_survived(tmp_path)) == {"tansu", "redis-server", "service"}
