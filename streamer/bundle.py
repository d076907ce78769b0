"""The model bundle contract: `models/<name>/<version>/{model.onnx, items.txt, manifest.json}`.

The trainer writes bundles (training/bundle_writer.py); the streamer only reads
them, through `load_bundle`, which refuses anything it cannot trust: a missing
file, a manifest that does not parse, a checksum that does not match, or an
ONNX graph whose inputs/outputs differ from what the manifest promises. The
session is warmed up with one dummy batch before the bundle is handed out, so
the first real event does not pay for onnxruntime's lazy initialisation.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from streamer.features import FORECAST, INPUT_NAMES, ITEM_SCORES, ValueScaler, Vocabulary

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
VOCAB_FILE = "items.txt"
INFERENCE_CHUNK = 128  # rows per onnxruntime call (see Bundle.predict)


class BundleError(RuntimeError):
    """A bundle that must not be served; the message names the file and the problem."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Manifest:
    """Everything the streamer needs to know about a bundle, and its provenance."""

    name: str
    version: str
    arch: str  # "lstm" | "transformer"
    window: int  # L: events per window
    horizon: int  # H: forecast steps (0 = no forecast head)
    top_k: int  # default number of recommendations (0 = no item head)
    vocab_size: int
    value_scaler: dict
    inputs: list[dict]
    outputs: list[dict]
    files: dict[str, str]  # file name -> sha256
    created_at: str = ""
    format_version: int = FORMAT_VERSION
    vocabulary: str = VOCAB_FILE
    training_data: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    parity: dict = field(default_factory=dict)
    hyperparameters: dict = field(default_factory=dict)

    @property
    def has_items(self) -> bool:
        return any(o["name"] == ITEM_SCORES for o in self.outputs)

    @property
    def has_forecast(self) -> bool:
        return any(o["name"] == FORECAST for o in self.outputs)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_file(cls, path: Path) -> "Manifest":
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BundleError(f"{path}: manifest not found") from None
        except (ValueError, UnicodeDecodeError) as err:
            raise BundleError(f"{path}: manifest is not valid JSON ({err})") from None
        if raw.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{path}: format_version {raw.get('format_version')!r} is not {FORMAT_VERSION}")
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise BundleError(f"{path}: unknown manifest fields {sorted(unknown)}")
        try:
            return cls(**raw)
        except TypeError as err:
            raise BundleError(f"{path}: {err}") from None


def verify_files(directory: Path, manifest: Manifest) -> None:
    """Raise BundleError unless every listed file exists and matches its sha256."""
    for required in (MODEL_FILE, manifest.vocabulary):
        if required not in manifest.files:
            raise BundleError(f"{directory / MANIFEST}: no checksum listed for {required}")
    for name, expected in manifest.files.items():
        path = directory / name
        if not path.is_file():
            raise BundleError(f"{path}: listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(f"{path}: sha256 {actual[:12]}… does not match the manifest's {expected[:12]}…")


@dataclass
class Bundle:
    """A verified, warmed-up model ready to serve."""

    path: Path
    manifest: Manifest
    vocab: Vocabulary
    scaler: ValueScaler
    session: object  # onnxruntime.InferenceSession

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs for a batch of windows, run in slices of at most INFERENCE_CHUNK rows.

        Rows are independent, so slicing changes no output (bit-identical on the LSTM and the
        Transformer); slices keep the per-row activations (attention maps, gates) in cache, which
        makes a 500-row batch ~30% cheaper for the Transformer (python -m bench.stream measures it).
        """
        names = [o["name"] for o in self.manifest.outputs]
        feed = {k: inputs[k] for k in INPUT_NAMES}
        rows = len(feed[INPUT_NAMES[0]])
        if rows <= INFERENCE_CHUNK:
            return dict(zip(names, self.session.run(names, feed)))
        parts = [self.session.run(names, {k: v[start:start + INFERENCE_CHUNK] for k, v in feed.items()})
                 for start in range(0, rows, INFERENCE_CHUNK)]
        return {name: np.concatenate([part[i] for part in parts]) for i, name in enumerate(names)}


def _check_signature(directory: Path, manifest: Manifest, session) -> None:
    got_inputs = {i.name for i in session.get_inputs()}
    got_outputs = {o.name for o in session.get_outputs()}
    if got_inputs != set(INPUT_NAMES):
        raise BundleError(f"{directory / MODEL_FILE}: inputs {sorted(got_inputs)} != {sorted(INPUT_NAMES)}")
    want_outputs = {o["name"] for o in manifest.outputs}
    if not want_outputs <= got_outputs:
        raise BundleError(f"{directory / MODEL_FILE}: outputs {sorted(got_outputs)} lack {sorted(want_outputs - got_outputs)}")


def make_session(model_path: Path, threads: int = 1):
    """An onnxruntime CPU session; one intra-op thread by default (Kafka and Redis need the other core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def load_bundle(directory: str | Path, threads: int = 1) -> Bundle:
    """Load, verify and warm up a bundle; raise BundleError naming the problem."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"{directory}: not a bundle directory")
    manifest = Manifest.from_file(directory / MANIFEST)
    verify_files(directory, manifest)
    try:
        vocab = Vocabulary.load(directory / manifest.vocabulary)
        scaler = ValueScaler.from_dict(manifest.value_scaler)
    except (ValueError, KeyError) as err:
        raise BundleError(f"{directory}: {err}") from None
    if len(vocab) != manifest.vocab_size:
        raise BundleError(f"{directory / manifest.vocabulary}: {len(vocab)} entries, manifest says {manifest.vocab_size}")
    try:
        session = make_session(directory / MODEL_FILE, threads)
    except Exception as err:  # onnxruntime raises its own exception types
        raise BundleError(f"{directory / MODEL_FILE}: onnxruntime cannot load it ({err})") from None
    _check_signature(directory, manifest, session)
    bundle = Bundle(directory, manifest, vocab, scaler, session)
    warm_up(bundle)
    return bundle


def warm_up(bundle: Bundle, batch: int = 8) -> None:
    """Run one dummy batch so lazy initialisation happens before real traffic."""
    L = bundle.manifest.window
    dummy = {
        "items": np.zeros((batch, L), np.int32),
        "values": np.zeros((batch, L), np.float32),
        "dts": np.zeros((batch, L), np.float32),
        "mask": np.ones((batch, L), np.float32),
    }
    try:
        bundle.predict(dummy)
    except Exception as err:
        raise BundleError(f"{bundle.path / MODEL_FILE}: warm-up inference failed ({err})") from None
