"""Tamper-evident and signed bundles, and registry refs confined to the models directory.

Unit tests run `load_bundle` and the CLI on copies of the session's tiny bundles; the live
tests run `seqcast serve` against the real broker and Redis and change the registry the way
an attacker with Redis access would: a raw SET of the role key and an INCR of the epoch.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REDIS_URL
from stream_helpers import covers, metric_value, read_until
from streamer.bundle import (MANIFEST, MODEL_FILE, VOCAB_FILE, BundleError, Manifest, load_bundle, make_session,
                            sha256_file, write_manifest)
from streamer.registry import Registry, ref_problem
from streamer.replay import replay
from streamer.rollout import resolve
from streamer.settings import SettingsError
from streamer.signing import (SIGNATURE_FILE, generate_keypair, load_private_key, load_trusted, sign_bundle)
from streamer.transport import DEFAULT_CLIENT
from test_rollouts import serving, stream, wait_for

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SEQCAST_") and k != "SIGNING_KEY_PASSWORD"}
    return subprocess.run([sys.executable, "-m", "seqcast_cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**base, **(env or {})})


@pytest.fixture
def keys(tmp_path):
    """Two key pairs: "a" (trusted in these tests) and "b" (someone else's)."""
    made = {}
    for name in ("a", "b"):
        private, public, kid = generate_keypair(tmp_path / "keys", name, password="")
        made[name] = {"private": private, "public": public, "id": kid, "key": load_private_key(private, "")}
    return made


def copy_bundle(src: Path, models_dir: Path) -> Path:
    """A copy of `src` at models_dir/<name>/<version> (the layout services load from)."""
    dst = models_dir / src.parent.name / src.name
    shutil.copytree(src, dst)
    return dst


def edit_manifest(bundle: Path, change) -> None:
    """Change the manifest the way a person with a text editor would (checksums untouched)."""
    raw = json.loads((bundle / MANIFEST).read_text())
    change(raw)
    (bundle / MANIFEST).write_text(json.dumps(raw, indent=2, sort_keys=True))


def test_keygen_and_sign_commands_then_inspect_reports_the_signer(bundle_dir, tmp_path):
    made = cli("keygen", "--out", str(tmp_path / "keys"))
    assert made.returncode == 0, made.stderr
    private, public = tmp_path / "keys" / "seqcast-signing.pem", tmp_path / "keys" / "seqcast-signing.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and b"PRIVATE KEY" in private.read_bytes()
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()
    assert cli("keygen", "--out", str(tmp_path / "keys")).returncode == 2  # never overwrites a key
    kid = load_trusted([str(public)]).describe().split()[0]
    bundle = copy_bundle(bundle_dir, tmp_path / "models")
    unsigned = cli("inspect", str(bundle))
    assert unsigned.returncode == 0 and "; unsigned" in unsigned.stderr
    signed = cli("sign", str(bundle), "--key", str(private))
    assert signed.returncode == 0 and kid in signed.stdout, signed.stderr
    assert json.loads((bundle / SIGNATURE_FILE).read_text())["key_id"] == kid
    trusted = {"SEQCAST_TRUSTED_KEYS": str(public)}
    ok = cli("inspect", str(bundle), env=trusted)
    assert ok.returncode == 0 and f"signed by key id {kid} (verified" in ok.stderr, ok.stderr
    assert json.loads(ok.stdout)["checksums"].endswith("fields")
    assert "not verified" in cli("inspect", str(bundle)).stderr  # without trusted keys: a claim, not a check
    refused = cli("inspect", str(bundle_dir), env=trusted)
    assert refused.returncode == 1 and "unsigned" in refused.stderr and str(bundle_dir) in refused.stderr


def test_signed_bundle_verifies_and_each_tamper_is_refused(bundle_dir, keys, tmp_path):
    trusted = load_trusted([str(keys["a"]["public"])])
    bundle = copy_bundle(bundle_dir, tmp_path / "models")
    assert sign_bundle(bundle, keys["a"]["key"]) == keys["a"]["id"]
    assert load_bundle(bundle, trusted=trusted).signer == keys["a"]["id"]

    model = tmp_path / "model" / "b"  # the model file
    shutil.copytree(bundle, model)
    with open(model / MODEL_FILE, "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00tampered\x00")
    with pytest.raises(BundleError, match=r"model\.onnx: sha256"):
        load_bundle(model, trusted=trusted)

    resealed = tmp_path / "resealed" / "b"  # an editor who also recomputes the checksums
    shutil.copytree(bundle, resealed)
    manifest = Manifest.from_file(resealed / MANIFEST)
    manifest.value_scaler["mean"] += 1000
    write_manifest(resealed, manifest)
    assert load_bundle(resealed).scaler.mean == pytest.approx(load_bundle(bundle).scaler.mean + 1000)
    with pytest.raises(BundleError, match="invalid signature by key id " + keys["a"]["id"]):
        load_bundle(resealed, trusted=trusted)  # what checksums cannot catch, the signature does

    forged = tmp_path / "forged" / "b"  # the signature file itself
    shutil.copytree(bundle, forged)
    body = json.loads((forged / SIGNATURE_FILE).read_text())
    body["signature"] = body["signature"][:10] + ("A" if body["signature"][10] != "A" else "B") + body["signature"][11:]
    (forged / SIGNATURE_FILE).write_text(json.dumps(body))
    with pytest.raises(BundleError, match=re.escape(f"{forged}: invalid signature")):
        load_bundle(forged, trusted=trusted)
    (forged / SIGNATURE_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not a readable signature"):
        load_bundle(forged, trusted=trusted)


@pytest.mark.parametrize("field,change", [
    ("value_scaler", lambda m: m["value_scaler"].update(mean=m["value_scaler"]["mean"] + 1000)),
    ("parity", lambda m: m["parity"].update(max_abs_diff=123.0)),
    ("metrics", lambda m: m["metrics"].update(note="better than it was")),
    ("window", lambda m: m.update(window=m["window"] + 1)),
])
def test_an_edited_manifest_field_is_refused_naming_it(bundle_dir, tmp_path, field, change):
    bundle = copy_bundle(bundle_dir, tmp_path / "models")
    edit_manifest(bundle, change)
    with pytest.raises(BundleError, match=f"manifest field '{field}' does not match its checksum"):
        load_bundle(bundle)  # no keys needed: integrity alone catches it
    if field == "value_scaler":  # the reported defect: inspect said "OK ... verified"
        inspected = cli("inspect", str(bundle))
        assert inspected.returncode == 1 and "'value_scaler'" in inspected.stderr, inspected.stderr


def test_a_removed_checksum_and_an_old_format_are_refused(bundle_dir, tmp_path):
    bundle = copy_bundle(bundle_dir, tmp_path / "models")
    edit_manifest(bundle, lambda m: m["checksums"].pop("top_k"))
    with pytest.raises(BundleError, match="no checksum for manifest field.*top_k"):
        load_bundle(bundle)
    edit_manifest(bundle, lambda m: m.update(format_version=1))
    with pytest.raises(BundleError, match=r"format_version 1 predates manifest checksums.*`seqcast reseal .*re-training"):
        load_bundle(bundle)


def test_wrong_key_and_unsigned_bundles_are_refused_when_keys_are_required(bundle_dir, keys, tmp_path):
    bundle = copy_bundle(bundle_dir, tmp_path / "models")
    trusted_a = load_trusted([str(keys["a"]["public"])])
    with pytest.raises(BundleError, match=re.escape(f"{bundle}: unsigned") + ".*trusted_keys requires a signature"):
        load_bundle(bundle, trusted=trusted_a)
    sign_bundle(bundle, keys["b"]["key"])
    with pytest.raises(BundleError, match=f"signed by key id {keys['b']['id']}, which is not a trusted key"):
        load_bundle(bundle, trusted=trusted_a)
    both = load_trusted([str(keys["a"]["public"]), str(keys["b"]["public"])])
    assert load_bundle(bundle, trusted=both).signer == keys["b"]["id"]  # several keys: any one of them
    assert load_bundle(bundle).signer is None  # no keys configured: signatures are not required


def test_key_files_are_checked_and_passphrases_work(tmp_path, bundle_dir, monkeypatch):
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(SettingsError, match="junk.pem: not a PEM public key"):
        load_trusted([str(tmp_path / "junk.pem")])
    monkeypatch.setenv("SIGNING_KEY_PASSWORD", "correct horse")
    private, public, kid = generate_keypair(tmp_path / "k", "locked")
    assert b"ENCRYPTED PRIVATE KEY" in private.read_bytes()
    with pytest.raises(SettingsError, match="locked.pem"):
        load_private_key(private, "wrong")
    bundle = copy_bundle(bundle_dir, tmp_path / "models")
    assert sign_bundle(bundle, load_private_key(private)) == kid
    signed = cli("sign", str(bundle), "--key", str(private))  # no passphrase in this environment
    assert signed.returncode == 2 and "locked.pem" in signed.stderr


def test_refs_are_confined_to_the_models_directory(bundle_dir, tmp_path):
    models = tmp_path / "models"
    inside = copy_bundle(bundle_dir, models)
    outside = copy_bundle(bundle_dir, tmp_path / "elsewhere")
    (models / "evil").symlink_to(outside.parent, target_is_directory=True)
    (models / "alias").symlink_to(inside.parent, target_is_directory=True)  # a symlink that stays inside
    ref = f"{inside.parent.name}/{inside.name}"
    assert resolve(models, ref) == inside.resolve() and resolve(models, f"alias/{inside.name}") == inside.resolve()
    assert resolve(models, str(inside)) == inside.resolve()  # absolute, but inside
    for bad, why in [(str(outside), "outside the models directory"), (f"../elsewhere/{ref}", r"'\.\.'"),
                     (f"{inside.parent.name}/../../elsewhere/{ref}", r"'\.\.'"),
                     (f"evil/{inside.name}", "outside the models directory"), ("", "empty")]:
        with pytest.raises(BundleError, match=why):
            resolve(models, bad)
    assert ref_problem(ref) is None and ref_problem("C:\\models\\x")


def test_models_promote_refuses_refs_outside_and_unsigned_bundles(bundle_dir, keys, tmp_path, redis_client,
                                                                   key_prefix):
    models = tmp_path / "models"
    inside = copy_bundle(bundle_dir, models)
    outside = copy_bundle(bundle_dir, tmp_path / "elsewhere")
    (models / "evil").symlink_to(outside.parent, target_is_directory=True)
    base = ["models", "--redis-url", REDIS_URL, "--key-prefix", key_prefix, "--models-dir", str(models)]
    for ref in (str(outside), f"../elsewhere/{outside.parent.name}/{outside.name}", f"evil/{outside.name}"):
        for extra in ([], ["--no-verify"]):
            refused = cli(*base, "promote", *extra, ref)
            assert refused.returncode == 2 and "models directory" in refused.stderr, (ref, refused.stderr)
    trusted = {"SEQCAST_TRUSTED_KEYS": str(keys["a"]["public"])}
    unsigned = cli(*base, "promote", str(inside), env=trusted)
    assert unsigned.returncode == 2 and "unsigned" in unsigned.stderr
    assert Registry(redis_client, key_prefix).epoch() == 0  # nothing reached the registry
    sign_bundle(inside, keys["a"]["key"])
    promoted = cli(*base, "promote", str(inside), env=trusted)
    assert promoted.returncode == 0, promoted.stderr
    assert Registry(redis_client, key_prefix).read().active == f"{inside.parent.name}/{inside.name}"


def test_train_signs_the_bundle_it_writes(keys, tmp_path):
    args = ["train", "--data", "synthetic:users=30,items=20,events=12,seed=1", "--window", "6", "--horizon", "1",
            "--epochs", "1", "--width", "8", "--quiet", "--models-dir", str(tmp_path / "models"), "--name", "s"]
    bad = cli(*args, "--sign-key", str(keys["a"]["public"]))  # a public key is not a signing key
    assert bad.returncode == 2 and "a.pub.pem" in bad.stderr and not (tmp_path / "models").exists()
    trained = cli(*args, "--sign-key", str(keys["a"]["private"]), timeout=300)
    assert trained.returncode == 0, trained.stderr
    (bundle,) = (tmp_path / "models" / "s").iterdir()
    assert f"signed with key id {keys['a']['id']}" in trained.stdout
    assert load_bundle(bundle, trusted=load_trusted([str(keys["a"]["public"])])).signer == keys["a"]["id"]


def test_a_refused_newest_bundle_does_not_stop_a_start_the_registry_decides(bundle_dir, keys, tmp_path):
    """--model-name's newest version is only a fallback when a registry is polled: an unsigned one
    must not keep every pod down (the registry may name a good signed bundle); with --bundle, or
    without a registry, the same refusal stops the start."""
    from prometheus_client import CollectorRegistry

    from streamer.app import load_models
    from streamer.metrics import Metrics
    from streamer.settings import Settings

    copy_bundle(bundle_dir, tmp_path / "models")  # unsigned
    metrics = Metrics.create(CollectorRegistry())
    trusted = {"models_dir": str(tmp_path / "models"), "trusted_keys": str(keys["a"]["public"])}
    assert load_models(Settings(model_name=bundle_dir.parent.name, **trusted), metrics) is None
    with pytest.raises(BundleError, match="unsigned"):
        load_models(Settings(model_name=bundle_dir.parent.name, registry_poll_ms=0, **trusted), metrics)
    with pytest.raises(BundleError, match="unsigned"):
        load_models(Settings(bundle=str(bundle_dir), **trusted), metrics)


# --- each file read once: what is hashed is what is served ----------------------------------------------

IN_OPEN, IN_CLOSE_WRITE, IN_CLOSE_NOWRITE = 0x20, 0x08, 0x10  # <sys/inotify.h>


def count_opens(directory: Path, action) -> dict[str, int]:
    """How often each file of `directory` is opened while `action` runs, as the kernel reports it.

    inotify, not a patched `open`: onnxruntime opens files from C++, which no Python hook sees.
    Close events are watched too, because the kernel merges identical successive events: two
    opens of one file in a row would otherwise read as one.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "inotify_init1"):
        pytest.skip("no inotify on this system")
    fd = libc.inotify_init1(os.O_NONBLOCK)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        assert libc.inotify_add_watch(fd, str(directory).encode(), IN_OPEN | IN_CLOSE_WRITE | IN_CLOSE_NOWRITE) >= 0
        action()
        counts: dict[str, int] = {}
        while True:
            try:
                buf = os.read(fd, 1 << 16)
            except BlockingIOError:
                return counts
            offset = 0
            while offset < len(buf):
                _, mask, _, size = struct.unpack_from("iIII", buf, offset)
                name = buf[offset + 16:offset + 16 + size].rstrip(b"\0").decode()
                if mask & IN_OPEN:
                    counts[name] = counts.get(name, 0) + 1
                offset += 16 + size
    finally:
        os.close(fd)


def test_load_bundle_reads_each_file_once(bundle_dir, keys, tmp_path):
    """One open per file: the session and the vocabulary come from the bytes that were hashed, so a
    file swapped on disk after its check is never what serves (time of check = time of use)."""
    bundle = copy_bundle(bundle_dir, tmp_path / "models")
    assert count_opens(bundle, lambda: load_bundle(bundle)) == {MANIFEST: 1, MODEL_FILE: 1, VOCAB_FILE: 1}
    sign_bundle(bundle, keys["a"]["key"])
    trusted = load_trusted([str(keys["a"]["public"])])
    assert count_opens(bundle, lambda: load_bundle(bundle, trusted=trusted)) == \
        {MANIFEST: 1, SIGNATURE_FILE: 1, MODEL_FILE: 1, VOCAB_FILE: 1}
    # The check can fail: hashing a path and then handing the path to onnxruntime opens it twice.
    assert count_opens(bundle, lambda: (sha256_file(bundle / MODEL_FILE), make_session(bundle / MODEL_FILE))) == \
        {MODEL_FILE: 2}


def test_a_fifo_under_a_listed_name_is_refused_not_waited_on(bundle_dir, tmp_path):
    """One open per file means opening before checking the type: O_NONBLOCK keeps a FIFO from blocking."""
    bundle = copy_bundle(bundle_dir, tmp_path / "models")
    (bundle / VOCAB_FILE).unlink()
    os.mkfifo(bundle / VOCAB_FILE)
    with pytest.raises(BundleError, match=r"items\.txt: listed in the manifest but missing \(not a regular file\)"):
        load_bundle(bundle)


# --- seqcast reseal: format_version 1 -> current, without re-training --------------------------------------

def make_v1(bundle: Path) -> None:
    """Rewrite the manifest as format_version 1 wrote it: the same fields, no `checksums`."""
    raw = Manifest.from_file(bundle / MANIFEST).to_dict()
    raw.pop("checksums")
    raw["format_version"] = 1
    (bundle / MANIFEST).write_text(json.dumps(raw, indent=2, sort_keys=True))


def test_reseal_upgrades_a_format_1_bundle_which_then_loads(bundle_dir, tmp_path):
    bundle = copy_bundle(bundle_dir, tmp_path / "models")
    original = load_bundle(bundle).manifest
    make_v1(bundle)
    with pytest.raises(BundleError, match=re.escape(f"`seqcast reseal {bundle}`") + ".*re-training"):
        load_bundle(bundle)
    refused = cli("inspect", str(bundle))
    assert refused.returncode == 1 and "seqcast reseal" in refused.stderr, refused.stderr
    done = cli("reseal", str(bundle))
    assert done.returncode == 0, done.stderr
    assert "format_version 2" in done.stdout and "unsigned: sign it again" in done.stderr
    assert load_bundle(bundle).manifest == original  # the same fields, checksums as the writer made them
    assert sorted(p.name for p in bundle.iterdir()) == sorted([MANIFEST, MODEL_FILE, VOCAB_FILE])  # no temp file
    before = (bundle / MANIFEST).read_bytes()
    again = cli("reseal", str(bundle))  # already current: nothing is rewritten
    assert again.returncode == 0 and "nothing to reseal" in again.stdout and (bundle / MANIFEST).read_bytes() == before
    edit_manifest(bundle, lambda m: m["value_scaler"].update(mean=5.0))  # a current manifest is never re-blessed
    broken = cli("reseal", str(bundle))
    assert broken.returncode == 2 and "'value_scaler' does not match its checksum" in broken.stderr


def test_reseal_removes_a_stale_signature_or_signs_again(bundle_dir, keys, tmp_path):
    trusted = load_trusted([str(keys["a"]["public"])])
    stale = copy_bundle(bundle_dir, tmp_path / "models")
    sign_bundle(stale, keys["a"]["key"])
    make_v1(stale)  # a signature.json next to a format 1 manifest
    done = cli("reseal", str(stale))
    assert done.returncode == 0, done.stderr
    assert f"key id {keys['a']['id']}" in done.stderr and "must be signed again" in done.stderr
    assert not (stale / SIGNATURE_FILE).exists()
    with pytest.raises(BundleError, match="unsigned"):  # refused as unsigned, not as tampered
        load_bundle(stale, trusted=trusted)

    signed = copy_bundle(bundle_dir, tmp_path / "other")
    make_v1(signed)
    v1_bytes = (signed / MANIFEST).read_bytes()
    wrong = cli("reseal", str(signed), "--sign-key", str(keys["a"]["public"]))  # a public key cannot sign
    assert wrong.returncode == 2 and "a.pub.pem" in wrong.stderr and (signed / MANIFEST).read_bytes() == v1_bytes
    done = cli("reseal", str(signed), "--sign-key", str(keys["a"]["private"]))
    assert done.returncode == 0 and f"signed with key id {keys['a']['id']}" in done.stdout, done.stderr
    assert load_bundle(signed, trusted=trusted).signer == keys["a"]["id"]


@pytest.mark.parametrize("damage,named", [
    (lambda b: (b / MODEL_FILE).write_bytes((b / MODEL_FILE).read_bytes()[:-10] + b"\x00tampered!"), r"model\.onnx: sha256"),
    (lambda b: (b / VOCAB_FILE).write_text((b / VOCAB_FILE).read_text() + "extra-item\n"), r"items\.txt: sha256"),
    (lambda b: (b / VOCAB_FILE).unlink(), r"items\.txt: listed in the manifest but missing"),
])
def test_reseal_refuses_a_format_1_bundle_whose_files_do_not_match(bundle_dir, tmp_path, damage, named):
    bundle = copy_bundle(bundle_dir, tmp_path / "models")
    make_v1(bundle)
    damage(bundle)
    v1_bytes = (bundle / MANIFEST).read_bytes()
    refused = cli("reseal", str(bundle))
    assert refused.returncode == 2 and re.search(named, refused.stderr), refused.stderr
    assert (bundle / MANIFEST).read_bytes() == v1_bytes  # nothing changed


# --- live service: a refused bundle leaves the old model serving and counts a load failure -----------------

@pytest.fixture
def topics(topic_factory):
    return {"input_topic": topic_factory(1, "events"), "output_topic": topic_factory(1, "predictions"),
            "dlq_topic": topic_factory(1, "dlq")}


def raw_set_role(redis_client, key_prefix: str, value: str) -> None:
    """What anyone with write access to Redis can do, bypassing the CLI's checks."""
    redis_client.set(f"{key_prefix}:model:active", value)
    redis_client.incr(f"{key_prefix}:model:epoch")


def failures(service) -> float:
    return metric_value(service.get("/metrics")[1], "seqcast_model_load_failures_total")


def refusal(redis_client, key_prefix: str) -> str:
    from streamer.served import read_served

    live, _ = read_served(redis_client, key_prefix)
    return (live[0].refused or {}).get("error", "") if live else ""


@pytest.mark.slow
@pytest.mark.parametrize("kafka_client", [DEFAULT_CLIENT])
def test_service_refuses_registry_refs_that_escape_the_models_directory(
        broker, topics, producer, consumer_factory, service_factory, redis_client, key_prefix, bundle_dir,
        bundle_dir_v2, tmp_path):
    models = tmp_path / "models"
    v1 = copy_bundle(bundle_dir, models)
    outside = copy_bundle(bundle_dir_v2, tmp_path / "elsewhere")  # a valid bundle, just not under models
    (models / "evil").symlink_to(outside.parent, target_is_directory=True)
    service = service_factory(assign_all_partitions=True, registry_poll_ms=100, models_dir=str(models),
                              bundle=str(v1), **topics)
    service.wait_ready()
    version = load_bundle(v1).manifest.version
    assert Registry(redis_client, key_prefix).read().active == f"{v1.parent.name}/{v1.name}"  # seeded, relative
    escapes = [(str(outside), "outside the models directory"), (f"../elsewhere/{outside.parent.name}/{outside.name}", "'..'"),
               (f"evil/{outside.name}", "outside the models directory")]
    for n, (value, why) in enumerate(escapes, start=1):
        raw_set_role(redis_client, key_prefix, value)
        wait_for(lambda: failures(service) == n, what=f"refusal of {value}")
        wait_for(lambda: why in refusal(redis_client, key_prefix), what=f"the heartbeat to say why ({why})")
        assert serving(service, version)
    events = stream(users=4, per_user=3)
    replay(events, producer, topics["input_topic"])
    records = read_until(consumer_factory(topics["output_topic"]), covers({e.event_id for e in events}))
    assert {json.loads(r.value)["model"]["version"] for r in records} == {version}  # the old model serves
    assert service.proc.poll() is None


@pytest.mark.slow
@pytest.mark.parametrize("kafka_client", [DEFAULT_CLIENT])
def test_service_with_trusted_keys_serves_only_bundles_signed_by_them(
        topics, service_factory, redis_client, key_prefix, bundle_dir, bundle_dir_v2, keys, tmp_path):
    models = tmp_path / "models"
    v1, v2 = copy_bundle(bundle_dir, models), copy_bundle(bundle_dir_v2, models)
    settings = {"assign_all_partitions": True, "registry_poll_ms": 100, "models_dir": str(models),
                "trusted_keys": str(keys["a"]["public"]), **topics}
    unsigned_start = service_factory(bundle=str(v1), **settings)  # an unsigned --bundle: no start at all
    assert unsigned_start.wait(60) == 1
    assert any("unsigned" in json.dumps(line) for line in unsigned_start.logs())

    sign_bundle(v1, keys["a"]["key"])
    service = service_factory(bundle=str(v1), **settings)
    service.wait_ready()
    version1, version2 = load_bundle(v1).manifest.version, load_bundle(v2).manifest.version
    registry = Registry(redis_client, key_prefix)
    registry.promote(f"{v2.parent.name}/{v2.name}")  # unsigned
    wait_for(lambda: failures(service) == 1, what="the unsigned bundle's refusal")
    wait_for(lambda: "unsigned" in refusal(redis_client, key_prefix), what="the heartbeat to say unsigned")
    sign_bundle(v2, keys["b"]["key"])  # signed, by a key the service does not trust
    registry.promote(f"{v2.parent.name}/{v2.name}")
    wait_for(lambda: failures(service) == 2, what="the wrong key's refusal")
    wait_for(lambda: "not a trusted key" in refusal(redis_client, key_prefix), what="the heartbeat to say why")
    assert serving(service, version1) and not serving(service, version2)
    sign_bundle(v2, keys["a"]["key"])
    registry.promote(f"{v2.parent.name}/{v2.name}")
    wait_for(lambda: serving(service, version2), what="the signed bundle to serve")
    assert failures(service) == 2
