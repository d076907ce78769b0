"""Signed bundles: an Ed25519 signature over the canonical manifest, checked against trusted keys.

Why a signature on top of the checksums: the sha256 digests in a manifest detect corruption
and naive edits, but anyone who can write the models directory can recompute them. A
signature by a key the services trust cannot be recomputed without the private key. It
covers the canonical manifest bytes (`streamer.bundle.canonical_json`), which carry the
digest of every file (`files`) and of every other manifest field (`checksums`), so it covers
the whole bundle; re-indenting manifest.json does not void it, changing any value does.

On disk, next to the manifest, `signature.json`:

    {"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64, 64 bytes>"}

The key id is the first 16 hex digits of the sha256 of the raw 32-byte public key, so the
same key has the same id wherever its PEM file lives. Verification looks the signer up among
the trusted keys by that id and checks the signature with the trusted key, never with
anything the bundle supplies.

Private keys are PKCS#8 PEM, encrypted when the command-line tools find a passphrase in
`SIGNING_KEY_PASSWORD` (deliberately not a SEQCAST_* variable: services never hold private
keys, only public ones, through the `trusted_keys` setting).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from streamer.bundle import BundleError, Manifest, canonical_json, upgrade_v1, verify_integrity, write_manifest
from streamer.settings import Settings, SettingsError

SIGNATURE_FILE = "signature.json"
ALGORITHM = "ed25519"
DOMAIN = b"seqcast bundle manifest v1\0"  # signatures made for bundles cannot be replayed as anything else
PASSWORD_ENV = "SIGNING_KEY_PASSWORD"


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signed_bytes(manifest: Manifest) -> bytes:
    """What a signature covers: the domain tag, then the canonical manifest (checksums included)."""
    return DOMAIN + canonical_json(manifest.to_dict())


@dataclass(frozen=True)
class TrustedKeys:
    """Public keys whose signatures a process accepts, by key id; `files` names where each came from."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return ", ".join(f"{kid} ({self.files.get(kid, '?')})" for kid in sorted(self.keys)) or "none"


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file; SettingsError naming the file otherwise."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as err:
        raise SettingsError(f"trusted key {path}: cannot read it ({err.strerror or err})") from None
    except ValueError as err:
        raise SettingsError(f"trusted key {path}: not a PEM public key ({err})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SettingsError(f"trusted key {path}: a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_trusted(paths: list[str]) -> TrustedKeys | None:
    """The keys in these PEM files, or None when no file is named (signatures not required)."""
    if not paths:
        return None
    keys, files = {}, {}
    for path in paths:
        key = load_public_key(path)
        keys[key_id(key)], files[key_id(key)] = key, str(path)
    return TrustedKeys(keys, files)


def trusted_from_settings(settings: Settings) -> TrustedKeys | None:
    """The `trusted_keys` setting, loaded (None when it is empty)."""
    return load_trusted(settings.trusted_key_files())


def load_private_key(path: str | Path, password: str | None = None) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file (passphrase: `password`, else $SIGNING_KEY_PASSWORD)."""
    password = os.environ.get(PASSWORD_ENV) if password is None else password
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(),
                                                 password.encode() if password else None)
    except OSError as err:
        raise SettingsError(f"signing key {path}: cannot read it ({err.strerror or err})") from None
    except TypeError as err:  # encrypted without a password, or a password for a plain key
        raise SettingsError(f"signing key {path}: {err} (passphrase: ${PASSWORD_ENV})") from None
    except ValueError as err:
        raise SettingsError(f"signing key {path}: not a usable PEM private key or wrong passphrase ({err})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SettingsError(f"signing key {path}: a {type(key).__name__}, not an Ed25519 private key")
    return key


def generate_keypair(out_dir: str | Path, name: str = "seqcast-signing",
                     password: str | None = None) -> tuple[Path, Path, str]:
    """Write `<name>.pem` (private, mode 0600) and `<name>.pub.pem` under out_dir; never overwrite.

    Returns (private path, public path, key id).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_path, public_path = out / f"{name}.pem", out / f"{name}.pub.pem"
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} exists; refusing to overwrite a key (choose another --out or --name)")
    key = Ed25519PrivateKey.generate()
    password = os.environ.get(PASSWORD_ENV) if password is None else password
    encryption = serialization.BestAvailableEncryption(password.encode()) if password \
        else serialization.NoEncryption()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(pem)
    public = key.public_key()
    public_path.write_bytes(public.public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path, key_id(public)


def sign_bundle(directory: str | Path, private_key: Ed25519PrivateKey) -> str:
    """Verify the bundle's integrity, then write its signature.json (atomically); returns the key id.

    Integrity first: signing vouches for the bundle as it is, so a corrupted one is never signed.
    """
    directory = Path(directory)
    manifest = verify_integrity(directory)
    kid = key_id(private_key.public_key())
    body = {"algorithm": ALGORITHM, "key_id": kid,
            "signature": base64.b64encode(private_key.sign(signed_bytes(manifest))).decode("ascii"),
            "bundle": f"{manifest.name}/{manifest.version}"}  # for people; the signature covers the manifest
    tmp = directory / f".{SIGNATURE_FILE}.tmp"
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, directory / SIGNATURE_FILE)
    return kid


def read_signature(directory: str | Path) -> dict | None:
    """signature.json as a dict (None when absent); BundleError when it is not a signature."""
    path = Path(directory) / SIGNATURE_FILE
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: not a readable signature ({err})") from None
    if not isinstance(body, dict) or body.get("algorithm") != ALGORITHM \
            or not isinstance(body.get("key_id"), str) or not isinstance(body.get("signature"), str):
        raise BundleError(f"{path}: not an {ALGORITHM} signature with key_id and signature")
    return body


def verify_signature(directory: str | Path, manifest: Manifest, trusted: TrustedKeys) -> str:
    """The trusted key id that signed this manifest; BundleError naming the bundle and the reason otherwise."""
    directory = Path(directory)
    body = read_signature(directory)
    if body is None:
        raise BundleError(f"{directory}: unsigned (no {SIGNATURE_FILE}) but trusted_keys requires a signature "
                          f"by {trusted.describe()}; sign it with `seqcast sign`")
    kid = body["key_id"]
    public = trusted.keys.get(kid)
    if public is None:
        raise BundleError(f"{directory}: signed by key id {kid}, which is not a trusted key "
                          f"(trusted: {trusted.describe()})")
    try:
        signature = base64.b64decode(body["signature"], validate=True)
        public.verify(signature, signed_bytes(manifest))
    except (ValueError, InvalidSignature):
        raise BundleError(f"{directory}: invalid signature by key id {kid}: the manifest changed after signing, "
                          f"or {SIGNATURE_FILE} was altered") from None
    return kid


@dataclass(frozen=True)
class Resealed:
    """What `reseal_bundle` did: the new manifest, the key id of the signature it removed, the new signer."""

    manifest: Manifest
    removed_signature: str | None  # key id ("?" if unreadable) of the signature.json removed; None if none
    signer: str | None  # key id of the new signature (None: left unsigned)


def reseal_bundle(directory: str | Path, private_key: Ed25519PrivateKey | None = None) -> Resealed:
    """Upgrade a format_version 1 bundle in place: check its files, write a sealed current manifest.

    Nothing changes unless every listed file matches its digest (BundleError naming the file).
    The new manifest has different bytes, so any signature.json can no longer verify: it is
    removed rather than left stale, so that nothing claims a signature the bundle does not have
    (`seqcast inspect` would report the stale key id, and services with trusted keys would refuse
    it as tampered rather than as unsigned, with `seqcast sign` as the fix). With `private_key`
    the resealed bundle is signed again at once. The manifest is replaced atomically; readers see
    the old one (refused: format 1) or the new one.
    """
    directory = Path(directory)
    manifest = upgrade_v1(directory)
    signature = directory / SIGNATURE_FILE
    removed = None
    if signature.exists() or signature.is_symlink():
        try:
            body = read_signature(directory)
        except BundleError:
            body = None
        removed = body["key_id"] if body else "?"
        signature.unlink()
    sealed = write_manifest(directory, manifest)
    signer = sign_bundle(directory, private_key) if private_key is not None else None
    return Resealed(sealed, removed, signer)
