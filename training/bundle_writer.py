"""Write a model bundle atomically: build it in a temporary directory, then rename.

A reader (the streamer, `seqcast inspect`) therefore sees either no bundle or a
complete one with its checksums (files and manifest fields, `write_manifest`), never a
half-written directory. Signing (`seqcast train --sign-key`) happens in the staging directory too,
before the rename: a service that loads the newest version never meets it unsigned. The version
is the UTC creation time plus the first hex digits of the model's sha256, so
versions sort by time and two different models never share one.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from streamer.bundle import MODEL_FILE, VOCAB_FILE, Manifest, sha256_file, write_manifest
from streamer.features import FORECAST, INPUT_NAMES, ITEM_SCORES, ValueScaler, Vocabulary


def io_signature(window: int, vocab_size: int, horizon: int, has_items: bool) -> tuple[list, list]:
    """Input and output descriptions for the manifest (batch dimension is dynamic: null)."""
    dtypes = {"items": "int32", "values": "float32", "dts": "float32", "mask": "float32"}
    inputs = [{"name": n, "shape": [None, window], "dtype": dtypes[n]} for n in INPUT_NAMES]
    outputs = []
    if has_items:
        outputs.append({"name": ITEM_SCORES, "shape": [None, vocab_size], "dtype": "float32"})
    if horizon > 0:
        outputs.append({"name": FORECAST, "shape": [None, horizon], "dtype": "float32"})
    return inputs, outputs


def write_bundle(models_dir: Path, name: str, onnx_file: Path, vocab: Vocabulary, scaler: ValueScaler,
                 *, arch: str, window: int, horizon: int, top_k: int, has_items: bool,
                 training_data: dict, metrics: dict, parity: dict, hyperparameters: dict,
                 signing_key=None) -> Path:
    """Assemble `models_dir/name/<version>/` from an exported ONNX file, signed with `signing_key`
    (an Ed25519 private key) when one is given; return its path."""
    parent = Path(models_dir) / name
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=parent))
    try:
        shutil.copyfile(onnx_file, staging / MODEL_FILE)
        vocab.save(staging / VOCAB_FILE)
        now = datetime.now(timezone.utc)
        model_sha = sha256_file(staging / MODEL_FILE)
        version = f"{now:%Y-%m-%dT%H-%M-%S}Z-{model_sha[:6]}"
        inputs, outputs = io_signature(window, len(vocab), horizon, has_items)
        manifest = Manifest(
            name=name, version=version, arch=arch, window=window, horizon=horizon,
            top_k=top_k if has_items else 0, vocab_size=len(vocab), value_scaler=scaler.to_dict(),
            inputs=inputs, outputs=outputs,
            files={MODEL_FILE: model_sha, VOCAB_FILE: sha256_file(staging / VOCAB_FILE)},
            created_at=now.isoformat(timespec="seconds"), training_data=training_data,
            metrics=metrics, parity=parity, hyperparameters=hyperparameters,
        )
        write_manifest(staging, manifest)
        if signing_key is not None:
            from streamer.signing import sign_bundle

            sign_bundle(staging, signing_key)
        final = parent / version
        os.replace(staging, final)
        return final
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
