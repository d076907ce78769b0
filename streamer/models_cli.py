"""`seqcast models list|promote|canary|shadow|rollback`: roll models out against running services.

The commands only write the registry in Redis (`streamer.registry`); every
running `seqcast serve` of the same key prefix picks the change up within
`registry_poll_ms`, loads the bundle off its hot path and swaps between two
batches. `promote`, `canary` and `shadow` verify the bundle (checksums, a
warm-up inference and, when `trusted_keys` is set, its signature) before
touching the registry unless `--no-verify`; the services verify again and
refuse a bad bundle on their own. A REF outside the models directory is
refused even with `--no-verify`: the services would refuse it anyway.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from streamer.settings import Settings, SettingsError

ROLE_HELP = "REF: <name>/<version> under --models-dir, or the path of a bundle directory inside it"


def add_command(subparsers) -> None:
    p = subparsers.add_parser(
        "models", help="list bundles and roll them out: promote, canary, shadow, rollback",
        description="Model rollouts without restarts. The registry lives in Redis under "
        "<key_prefix>:model:{active,canary,shadow,history}; running services poll it and swap models "
        "between batches. " + ROLE_HELP + ".")
    p.add_argument("--redis-url", help="default: SEQCAST_REDIS_URL or redis://127.0.0.1:6379/0")
    p.add_argument("--key-prefix", help="default: SEQCAST_KEY_PREFIX or sc")
    p.add_argument("--models-dir", help="default: SEQCAST_MODELS_DIR or models")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="bundles, their roles, offline metrics, live accuracy per arm, and what each "
                       "running service actually serves")
    promote = actions.add_parser("promote", help="make REF the active version (the old one goes on the history)")
    promote.add_argument("ref", metavar="REF")
    canary = actions.add_parser("canary", help="send a stable PERCENT of users to REF (or --off)")
    canary.add_argument("ref", metavar="REF", nargs="?")
    canary.add_argument("--percent", type=float, default=10.0, help="share of users, 0 < P <= 100")
    canary.add_argument("--off", action="store_true", help="end the canary")
    shadow = actions.add_parser("shadow", help="score REF on live traffic without emitting it (or --off)")
    shadow.add_argument("ref", metavar="REF", nargs="?")
    shadow.add_argument("--off", action="store_true", help="end the shadow")
    actions.add_parser("rollback", help="re-activate the previous active version and end any canary")
    for sub in (promote, canary, shadow):
        sub.add_argument("--no-verify", action="store_true",
                         help="skip the local checksum, signature and warm-up check")
    p.set_defaults(handler=cmd_models)


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(redis_url=args.redis_url, key_prefix=args.key_prefix, models_dir=args.models_dir)


def _ref(settings: Settings, raw: str, verify: bool) -> str:
    """The registry ref for REF, checked to lie inside models_dir and (unless not `verify`) to load."""
    from streamer.bundle import BundleError, load_bundle
    from streamer.rollout import ref_for, resolve
    from streamer.signing import trusted_from_settings

    path = Path(raw)
    ref = ref_for(settings.models_dir, path) if path.is_dir() else raw
    if path.is_dir() and Path(ref).is_absolute():
        raise BundleError(f"{raw} is outside the models directory {Path(settings.models_dir).resolve()}: "
                          "services only load bundles under it (move the bundle there, or set --models-dir)")
    directory = resolve(settings.models_dir, ref)  # BundleError for '..', absolute refs, symlink escapes
    if verify:
        load_bundle(directory, trusted=trusted_from_settings(settings))  # raises BundleError naming the problem
    return ref


def cmd_models(args: argparse.Namespace) -> int:
    import redis

    from streamer.bundle import BundleError
    from streamer.connections import check_redis, redis_client
    from streamer.registry import Registry
    from streamer.security import SecurityError

    try:
        settings = _settings(args)
        client = redis_client(settings)  # ACL user, password and TLS like the services
        check_redis(settings, client)  # a wrong password or CA is named, as `serve` names it
        registry = Registry(client, settings.key_prefix)
        if args.action == "list":
            print(list_models(client, settings, registry))
            return 0
        if args.action == "rollback":
            print(f"active: {registry.rollback()}")
            return 0
        if args.action in ("canary", "shadow") and args.off:
            (registry.set_canary(None) if args.action == "canary" else registry.set_shadow(None))
            print(f"{args.action}: off")
            return 0
        if not args.ref:
            raise SettingsError(f"models {args.action}: give a REF or --off")
        ref = _ref(settings, args.ref, not args.no_verify)
        if args.action == "promote":
            registry.promote(ref)
        elif args.action == "canary":
            registry.set_canary(ref, args.percent)
        else:
            registry.set_shadow(ref)
        print(f"{args.action}: {ref}" + (f" ({args.percent:g}% of users)" if args.action == "canary" else ""))
        return 0
    except (SettingsError, SecurityError, BundleError, LookupError, ValueError, redis.RedisError) as err:
        print(f"seqcast models: {err}", file=sys.stderr)
        return 2


def _headline(metrics: dict) -> str:
    parts = []
    items = metrics.get("items", {}).get("model")
    if items:
        parts.append(f"HR@10 {items['HR@10']:.3f}")
    forecast = metrics.get("forecast", {}).get("original_units", {}).get("model")
    if forecast:
        parts.append(f"MAE {forecast['MAE']:.3f}")
    return ", ".join(parts) or "-"


def _live(client, prefix: str, version: str) -> str:
    from streamer.live_accuracy import read_totals

    out = []
    for arm, t in sorted(read_totals(client, prefix, version).items()):
        hr = "" if math.isnan(t["HR"]) else f"HR@K {t['HR']:.3f} (n={t['items_scored']:.0f})"
        mae = "" if math.isnan(t["MAE"]) else f"MAE {t['MAE']:.3f} (n={t['forecast_scored']:.0f})"
        out.append(f"{arm}: " + " ".join(x for x in (hr, mae) if x))
    return "; ".join(out) or "-"


ROLE_ARMS = {"active": "primary", "canary": "canary", "shadow": "shadow"}  # registry role -> served arm


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _registry_roles(wanted) -> dict[str, list[tuple[str, str]]]:
    """ref -> [(role, label)] as the registry names them, e.g. ("canary", "canary 20%")."""
    roles: dict[str, list[tuple[str, str]]] = {}
    for ref, role, label in ((wanted.active, "active", "active"),
                             (wanted.canary, "canary", f"canary {wanted.canary_percent:g}%"),
                             (wanted.shadow, "shadow", "shadow")):
        if ref:
            roles.setdefault(ref, []).append((role, label))
    return roles


def _not_served_why(missing: list) -> str:
    """Why these live instances do not serve a ref: their refusal (first one's reason) or not applied yet."""
    from streamer.served import short_error

    refused = [e for e in missing if e.refused]
    why = [f"refused by {len(refused)}: {short_error(refused[0].refused.get('error', ''))}"] if refused else []
    if len(missing) > len(refused):
        why.append(f"{len(missing) - len(refused)} not applied yet")
    return "; ".join(why)


def _role_cell(ref: str, roles: list[tuple[str, str]], live: list) -> str:
    """The registry's roles for `ref`, each checked against what the live instances serve."""
    if not live:
        return f"{', '.join(label for _, label in roles)} (registry; no live instance reports)" if roles else "-"
    parts, n = [], len(live)
    for role, label in roles:
        missing = [e for e in live if not e.serves(ref, ROLE_ARMS[role])]
        if not missing:
            parts.append(f"{label} (served by {n}/{n})")
        else:
            parts.append(f"{label} (registry) — NOT served by {len(missing)}/{n} live instances: "
                         f"{_not_served_why(missing)}")
    named_arms = {ROLE_ARMS[role] for role, _ in roles}
    for arm in ROLE_ARMS.values():
        count = sum(e.serves(ref, arm) for e in live)
        if arm not in named_arms and count:
            parts.append(f"served as {arm} by {count}/{n} (not its registry role)")
    return _cell("; ".join(parts) or "-")


def _instances(live: list, stale: list, epoch: int) -> list[str]:
    """What each live instance serves, by heartbeat; stale ones only by name."""
    now = time.time()
    if not live:
        lines = [f"\nlive instances: none report (registry epoch {epoch}); the roles above are what the registry "
                 "asks for, not what serves"]
    else:
        lines = [f"\nlive instances: {len(live)} (registry epoch {epoch})",
                 "| instance | serves | epoch applied | refused | heartbeat |", "|---|---|---|---|---|"]
    for e in live:
        serves = "; ".join(f"{arm} {a.get('ref')} ({a.get('version')})" for arm, a in sorted(e.arms.items()))
        if "canary" in e.arms:
            serves += f"; canary {e.canary_percent:g}%"
        refused = f"epoch {e.refused.get('epoch')} {e.refused.get('ref')}: {e.refused.get('error')}" \
            if e.refused else "-"
        applied = "--bundle" if e.epoch is None else e.epoch
        cells = (e.instance, serves or "-", str(applied), refused, f"{e.age(now):.1f} s ago")
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if stale:
        lines.append("stale instances (ignored, no recent heartbeat): "
                     + ", ".join(f"{e.instance} ({e.age(now):.0f} s ago)" for e in stale))
    return lines


def _refs(settings: Settings, roles: dict, live: list) -> list[str]:
    """Every bundle under models_dir, then registry refs and served refs outside it."""
    root = Path(settings.models_dir)
    refs = sorted(str(p.parent.relative_to(root)) for p in root.glob("*/*/manifest.json")) if root.is_dir() else []
    served = {a.get("ref") for e in live for a in e.arms.values() if a.get("ref")}
    return refs + sorted(r for r in set(roles) | served if r not in refs)


def list_models(client, settings: Settings, registry) -> str:
    """A table of every bundle with the registry's roles checked against the live instances' heartbeats."""
    from streamer.bundle import BundleError
    from streamer.rollout import resolve
    from streamer.served import read_served

    roles = _registry_roles(registry.read())
    live, stale = read_served(client, settings.key_prefix)
    lines = ["| ref | role | arch | L | H | offline test | live accuracy |", "|---|---|---|---|---|---|---|"]
    for ref in _refs(settings, roles, live):
        try:  # a ref outside models_dir (a service's --bundle) is listed, but its files are not read
            manifest = json.loads((resolve(settings.models_dir, ref) / "manifest.json").read_text())
        except (OSError, ValueError, BundleError):
            manifest = {}
        version = manifest.get("version", Path(ref).name)
        lines.append(f"| {ref} | {_role_cell(ref, roles.get(ref, []), live)} | {manifest.get('arch', '?')} | "
                     f"{manifest.get('window', '?')} | {manifest.get('horizon', '?')} | "
                     f"{_headline(manifest.get('metrics', {}))} | {_live(client, settings.key_prefix, version)} |")
    history = registry.history()
    lines.append(f"\nhistory (newest first): {', '.join(history) if history else '-'}")
    lines.append(_rollout_line(client, settings.key_prefix))
    lines += _instances(live, stale, registry.epoch())
    return "\n".join(lines)


def _rollout_line(client, prefix: str) -> str:
    """The automated rollout in one line: what it does now, or how the last one ended and why."""
    from streamer.rollout_state import RolloutStore

    _, state = RolloutStore(client, prefix).load()
    if state is None:
        return "rollout: none (seqcast rollout start REF)"
    return (f"rollout {state.id}: {state.ref} against {state.baseline_ref}: {state.describe()} "
            f"({state.reason}); details: seqcast rollout status")
