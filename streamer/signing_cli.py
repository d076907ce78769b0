"""`seqcast keygen`, `seqcast sign`, `seqcast reseal`: make an Ed25519 key pair, sign a bundle with
it, upgrade a format_version 1 bundle to the checksummed format.

The private key stays with whoever publishes bundles (a CI job, a release engineer); the
services get only the public key, through the `trusted_keys` setting. A passphrase for the
private key, if wanted, comes from $SIGNING_KEY_PASSWORD (read by these commands and by
`seqcast train --sign-key`, never by `seqcast serve`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamer.settings import SettingsError


def add_commands(subparsers) -> None:
    keygen = subparsers.add_parser(
        "keygen", help="create an Ed25519 key pair for signing bundles",
        description="Write OUT/NAME.pem (the private key, mode 0600; encrypted with $SIGNING_KEY_PASSWORD when "
        "set) and OUT/NAME.pub.pem (the public key, for the services' SEQCAST_TRUSTED_KEYS). Never overwrites.")
    keygen.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the two files")
    keygen.add_argument("--name", default="seqcast-signing", help="file name stem (default seqcast-signing)")
    keygen.set_defaults(handler=cmd_keygen)

    sign = subparsers.add_parser(
        "sign", help="sign a bundle (writes signature.json next to its manifest)",
        description="Check BUNDLE's integrity (manifest fields and file checksums), then sign its canonical "
        "manifest with the Ed25519 private KEY. Services with trusted_keys set serve only bundles signed by "
        "one of those keys. Signing again replaces the signature.")
    sign.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle directory models/<name>/<version>")
    sign.add_argument("--key", type=Path, required=True, metavar="PRIVATE.pem",
                      help="private key from `seqcast keygen` (passphrase: $SIGNING_KEY_PASSWORD)")
    sign.set_defaults(handler=cmd_sign)

    reseal = subparsers.add_parser(
        "reseal", help="upgrade a format_version 1 bundle in place (adds manifest checksums)",
        description="Upgrade BUNDLE from format_version 1, which services now refuse, without re-training: check "
        "every file the manifest lists against its sha256 (refused, with the file named, on any mismatch; "
        "nothing is changed then), and rewrite manifest.json atomically as the current format with a checksum "
        "of every field. Format 1 had no field checksums, so reseal vouches for the fields as they are now: "
        "reseal only bundles you trust, and check the result with `seqcast inspect`. Resealing changes the manifest's "
        "bytes, so an existing signature.json cannot verify any more: it is removed, not left stale, so that "
        "nothing claims a signature the bundle no longer has (a stale one would be reported by `seqcast inspect` "
        "and refused by services as tampering); services with trusted keys refuse the bundle as unsigned until "
        "it is signed again (--sign-key here, or `seqcast sign`). Needs write access to the bundle directory.")
    reseal.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle directory models/<name>/<version>")
    reseal.add_argument("--sign-key", type=Path, metavar="PRIVATE.pem",
                        help="sign the resealed bundle with this private key (passphrase: $SIGNING_KEY_PASSWORD)")
    reseal.set_defaults(handler=cmd_reseal)


def cmd_keygen(args: argparse.Namespace) -> int:
    from streamer.signing import generate_keypair

    try:
        private, public, kid = generate_keypair(args.out, args.name)
    except OSError as err:  # FileExistsError included: a key is never overwritten
        print(f"seqcast keygen: {err}", file=sys.stderr)
        return 2
    print(f"key id {kid}\nprivate key: {private} (mode 0600: keep it secret)\n"
          f"public key:  {public} (give it to the services: SEQCAST_TRUSTED_KEYS={public})")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from streamer.bundle import BundleError
    from streamer.signing import SIGNATURE_FILE, load_private_key, sign_bundle

    try:
        kid = sign_bundle(args.bundle, load_private_key(args.key))
    except (SettingsError, BundleError, OSError) as err:
        print(f"seqcast sign: {err}", file=sys.stderr)
        return 2
    print(f"signed {args.bundle} with key id {kid} ({args.bundle / SIGNATURE_FILE})")
    return 0


def cmd_reseal(args: argparse.Namespace) -> int:
    from streamer.bundle import BundleError, Manifest, verify_integrity
    from streamer.signing import SIGNATURE_FILE, load_private_key, reseal_bundle

    try:
        raw_version = _format_version(args.bundle)
        if raw_version is not None and raw_version != 1:  # current (or unknown): nothing to upgrade, never rewrite
            manifest: Manifest = verify_integrity(args.bundle)
            print(f"{args.bundle}: already format_version {manifest.format_version}; nothing to reseal")
            return 0
        key = load_private_key(args.sign_key) if args.sign_key else None  # before anything changes
        done = reseal_bundle(args.bundle, key)
    except (SettingsError, BundleError, OSError) as err:
        print(f"seqcast reseal: {err}", file=sys.stderr)
        return 2
    print(f"resealed {args.bundle}: format_version {done.manifest.format_version}, "
          f"{len(done.manifest.checksums)} field checksums, {len(done.manifest.files)} files verified")
    if done.removed_signature:
        print(f"removed its {SIGNATURE_FILE} (key id {done.removed_signature}): it signed the old manifest "
              "and cannot verify the new one: the bundle must be signed again", file=sys.stderr)
    if done.signer:
        print(f"signed with key id {done.signer} ({args.bundle / SIGNATURE_FILE})")
    else:
        print(f"unsigned: sign it again (`seqcast sign {args.bundle} --key PRIVATE.pem`) before promoting it "
              "where SEQCAST_TRUSTED_KEYS is set", file=sys.stderr)
    return 0


def _format_version(bundle: Path):
    """The manifest's format_version as written (None when it cannot be read: reseal reports why)."""
    import json

    from streamer.bundle import MANIFEST

    try:
        raw = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return raw.get("format_version") if isinstance(raw, dict) else None
