"""The model bundle contract: `models/<name>/<version>/{model.onnx, items.txt, manifest.json}`.

The trainer writes bundles (training/bundle_writer.py); the streamer only reads
them, through `load_bundle`, which refuses anything it cannot trust: a missing
file, a manifest that does not parse, a checksum that does not match, or an
ONNX graph whose inputs/outputs differ from what the manifest promises. The
session is warmed up with one dummy batch before the bundle is handed out, so
the first real event does not pay for onnxruntime's lazy initialisation.

Integrity covers the manifest itself (format 2): `files` holds the sha256 of
every file, and `checksums` the sha256 of the canonical JSON of every other
manifest field (scaler, window, outputs, parity, metrics, ...), so an edited
manifest is refused with the name of the field that changed. Checksums detect
accidents and naive edits, not an attacker who recomputes them: that is what
signatures are for (`streamer.signing`, checked when `trusted` keys are given),
and a signature covers the canonical manifest, hence every digest in it.

Each file is read once: `load_bundle` hashes the bytes it read and builds the onnxruntime
session and the vocabulary from those same bytes, never from a second read of the path, so a
file swapped after its check (by whoever can write the models directory, the very threat
signing addresses) is never the one served.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streamer.features import FORECAST, INPUT_NAMES, ITEM_SCORES, ValueScaler, Vocabulary

if TYPE_CHECKING:
    from streamer.signing import TrustedKeys

FORMAT_VERSION = 2  # 2: the manifest's own fields are checksummed (`checksums`)
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


def canonical_json(value) -> bytes:
    """One byte string per JSON value (sorted keys, no whitespace): what checksums and signatures cover."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _field_digest(value) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


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
    checksums: dict[str, str] = field(default_factory=dict)  # field name -> sha256 of its canonical JSON

    @property
    def has_items(self) -> bool:
        return any(o["name"] == ITEM_SCORES for o in self.outputs)

    @property
    def has_forecast(self) -> bool:
        return any(o["name"] == FORECAST for o in self.outputs)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def to_dict(self) -> dict:
        """The manifest as its JSON file holds it (tuples as lists), for digests and signatures."""
        return json.loads(json.dumps(asdict(self)))

    def field_checksums(self) -> dict[str, str]:
        """sha256 of the canonical JSON of every field but `checksums` itself."""
        return {name: _field_digest(value) for name, value in self.to_dict().items() if name != "checksums"}

    def sealed(self) -> "Manifest":
        """This manifest with `checksums` computed: what a writer saves (see `write_manifest`)."""
        return replace(self, checksums=self.field_checksums())

    @classmethod
    def from_file(cls, path: Path) -> "Manifest":
        raw = _read_raw(path)
        if raw.get("format_version") == 1:
            raise BundleError(f"{path}: format_version 1 predates manifest checksums and cannot be verified: "
                              f"upgrade it in place with `seqcast reseal {path.parent}` (checks its files, adds "
                              f"the checksums; sign it again where signatures are required), or re-export it "
                              f"by re-training with `seqcast train` (writes format_version {FORMAT_VERSION})")
        if raw.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{path}: format_version {raw.get('format_version')!r} is not {FORMAT_VERSION}")
        return cls._from_raw(path, raw, set(cls.__dataclass_fields__))

    @classmethod
    def _from_raw(cls, path: Path, raw: dict, known: set[str]) -> "Manifest":
        unknown = set(raw) - known
        if unknown:
            raise BundleError(f"{path}: unknown manifest fields {sorted(unknown)}")
        try:
            return cls(**raw)
        except TypeError as err:
            raise BundleError(f"{path}: {err}") from None


def _read_raw(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: manifest not found") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: manifest is not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: manifest is not a JSON object")
    return raw


def upgrade_v1(directory: str | Path) -> Manifest:
    """The format_version 1 manifest of `directory` as a current one, once its listed files match.

    Not written (`write_manifest` does that, see `streamer.signing.reseal_bundle`) and not sealed
    yet. Format 1 had no field checksums, so its fields are taken as they are now: the files are
    what can still be checked, and a mismatch refuses the upgrade naming the file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"{directory}: not a bundle directory")
    path = directory / MANIFEST
    raw = _read_raw(path)
    if raw.get("format_version") != 1:
        raise BundleError(f"{path}: format_version {raw.get('format_version')!r}, not 1: nothing to reseal")
    v1_fields = set(Manifest.__dataclass_fields__) - {"checksums"}  # format 1 = format 2 without checksums
    manifest = Manifest._from_raw(path, raw, v1_fields)
    manifest = replace(manifest, format_version=FORMAT_VERSION)
    verify_files(directory, manifest)
    return manifest


def write_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """Seal `manifest` (field checksums) and write it as directory/manifest.json; return the sealed one.

    Anything that edits a manifest (a writer, a tool that re-versions a copy) goes through here;
    an edit made any other way is refused by `verify_manifest`. Editing a signed bundle's manifest
    voids its signature: sign it again (`seqcast sign`).
    """
    sealed = manifest.sealed()
    target = Path(directory) / MANIFEST
    tmp = target.with_name(f".{MANIFEST}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:  # atomic: a reader sees the old manifest or the new one
        fh.write(sealed.to_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return sealed


def verify_manifest(directory: Path, manifest: Manifest) -> None:
    """Raise BundleError naming the first manifest field whose checksum does not match."""
    path = Path(directory) / MANIFEST
    if not isinstance(manifest.checksums, dict) or not all(isinstance(v, str) for v in manifest.checksums.values()):
        raise BundleError(f"{path}: manifest field 'checksums' is not a map of field name to sha256")
    want = manifest.field_checksums()
    missing = sorted(set(want) - set(manifest.checksums))
    if missing:
        raise BundleError(f"{path}: no checksum for manifest field(s) {', '.join(missing)}")
    extra = sorted(set(manifest.checksums) - set(want))
    if extra:
        raise BundleError(f"{path}: checksums name unknown field(s) {', '.join(extra)}")
    for name in sorted(want):
        if want[name] != manifest.checksums[name]:
            raise BundleError(f"{path}: manifest field {name!r} does not match its checksum "
                              f"(sha256 {want[name][:12]}… != {str(manifest.checksums[name])[:12]}…): "
                              "the manifest was edited after it was written")


def verify_integrity(directory: str | Path) -> Manifest:
    """The manifest of `directory` once its own fields and every listed file match their checksums.

    No onnxruntime here: this is what signing checks before it signs, and the first half of
    `load_bundle`.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"{directory}: not a bundle directory")
    manifest = Manifest.from_file(directory / MANIFEST)
    verify_manifest(directory, manifest)
    verify_files(directory, manifest)
    return manifest


def verify_files(directory: Path, manifest: Manifest, keep: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Raise BundleError unless every listed file exists and matches its sha256.

    Returns the verified bytes of the files named in `keep`: each file is opened once and hashed
    as it is read, so what the caller uses is exactly what was checked (see `load_bundle`).
    """
    for required in (MODEL_FILE, manifest.vocabulary):
        if required not in manifest.files:
            raise BundleError(f"{directory / MANIFEST}: no checksum listed for {required}")
    kept: dict[str, bytes] = {}
    for name, expected in manifest.files.items():
        path = directory / name
        data = _read_checked(path, expected, name in keep)
        if name in keep:
            kept[name] = data
    return kept


def _read_checked(path: Path, expected: str, keep: bool) -> bytes:
    """One open of `path`: its sha256 checked against `expected`; its bytes if `keep` (else b"").

    O_NONBLOCK and fstat: a FIFO or a device planted under a listed name is refused, not waited on.
    """
    digest, chunks = hashlib.sha256(), []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise BundleError(f"{path}: listed in the manifest but missing") from None
    except OSError as err:
        raise BundleError(f"{path}: cannot read it ({err.strerror or err})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BundleError(f"{path}: listed in the manifest but missing (not a regular file)")
        try:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
                if keep:
                    chunks.append(chunk)
        except OSError as err:
            raise BundleError(f"{path}: cannot read it ({err.strerror or err})") from None
    actual = digest.hexdigest()
    if actual != expected:
        raise BundleError(f"{path}: sha256 {actual[:12]}… does not match the manifest's {expected[:12]}…")
    return b"".join(chunks)


@dataclass
class Bundle:
    """A verified, warmed-up model ready to serve."""

    path: Path
    manifest: Manifest
    vocab: Vocabulary
    scaler: ValueScaler
    session: object  # onnxruntime.InferenceSession
    signer: str | None = None  # key id of the trusted key whose signature was verified (None: not checked)

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


def make_session(model: Path | bytes, threads: int = 1):
    """An onnxruntime CPU session; one intra-op thread by default (Kafka and Redis need the other core).

    `model` is a path (training, benchmarks) or the model's bytes (`load_bundle`: the bytes it verified).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # fatal only: a failing call already raises with onnxruntime's message (counted per arm, logged once a
    # minute); at "error" it also wrote a multi-line, non-JSON stderr message on every failed batch
    options.log_severity_level = 4
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def load_bundle(directory: str | Path, threads: int = 1, trusted: "TrustedKeys | None" = None) -> Bundle:
    """Load, verify and warm up a bundle; raise BundleError naming the problem.

    With `trusted` keys (the `trusted_keys` setting), the bundle must carry a valid signature by
    one of them; it is checked before the file digests, since those are what the signature vouches for.
    Every file is read once; the session and the vocabulary are built from the bytes whose digests
    were checked, so swapping a file on disk after the check changes nothing that is served.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"{directory}: not a bundle directory")
    manifest = Manifest.from_file(directory / MANIFEST)
    verify_manifest(directory, manifest)
    signer = None
    if trusted is not None:
        from streamer.signing import verify_signature

        signer = verify_signature(directory, manifest, trusted)
    verified = verify_files(directory, manifest, keep=(MODEL_FILE, manifest.vocabulary))
    try:
        vocab = Vocabulary.from_bytes(verified[manifest.vocabulary], directory / manifest.vocabulary)
        scaler = ValueScaler.from_dict(manifest.value_scaler)
    except (ValueError, KeyError) as err:
        raise BundleError(f"{directory}: {err}") from None
    if len(vocab) != manifest.vocab_size:
        raise BundleError(f"{directory / manifest.vocabulary}: {len(vocab)} entries, manifest says {manifest.vocab_size}")
    try:
        session = make_session(verified[MODEL_FILE], threads)
    except Exception as err:  # onnxruntime raises its own exception types
        raise BundleError(f"{directory / MODEL_FILE}: onnxruntime cannot load it ({err})") from None
    _check_signature(directory, manifest, session)
    bundle = Bundle(directory, manifest, vocab, scaler, session, signer)
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
