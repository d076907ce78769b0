"""Live accuracy totals in Redis: their key names, their fields, and reading them back.

Written by `streamer.live_accuracy` (one Lua script per batch, exactly once),
read by `seqcast models list` and by the rollout controller. Two kinds:

- an arm's own totals, `{prefix}:model:live:<version>`, fields `<arm>:<stat>`
  with stat in TALLY_FIELDS: how often the arm's top-K held the user's next
  item, and its absolute forecast errors (their squares too, so a sequential
  test can estimate the error's variance without per-event records);
- a shadow paired with the served arm, `{prefix}:model:paired:<shadow version>`,
  fields `<served version>:<stat>` with stat in PAIR_FIELDS: both predicted the
  same event for the same user (their marks name the same previous event), so
  the difference per event is summed with its square. The paired test of
  `streamer.sequential` needs exactly these sums.

On Redis Cluster every total is sharded by hash slot (`<key>:{<tag>}`, the
tags listed in `<key>:shards`), so each script call stays in one slot; the
readers here sum the shards.
"""
from __future__ import annotations

import math
import zlib
from collections import defaultdict

TALLY_FIELDS = ("items_scored", "hits", "forecast_scored", "abs_error", "forecast_skipped", "sq_error")
# per user bucket (BUCKETS buckets by a hash of the user id): the same sums split by bucket, so the
# rollout controller can estimate a variance that counts users, not events (judgments of one user
# are correlated; every user's judgments fall into one bucket)
BUCKET_FIELDS = ("items_scored", "hits", "forecast_scored", "abs_error")
PAIR_BUCKET_FIELDS = ("pairs_items", "hit_diff", "pairs_forecast", "err_diff")
BUCKETS = 64
# d = candidate - baseline in "higher is better" units: hit_diff = hit_shadow - hit_served,
# err_diff = err_served - err_shadow; base_* are the served arm's own sums over the same pairs
PAIR_FIELDS = ("pairs_items", "hit_diff", "hit_diff_sq", "base_hits",
               "pairs_forecast", "err_diff", "err_diff_sq", "base_abs_error")


def _sharded_key(kind: str):
    """`key(prefix, version, shard=None)` for one kind of totals: `{prefix}:model:<kind>:<version>`, or its
    slot shard `...:{<shard>}` on Redis Cluster."""
    def key(prefix: str, version: str, shard: str | None = None) -> str:
        base = f"{prefix}:model:{kind}:{version}"
        return base if shard is None else f"{base}:{{{shard}}}"
    return key


totals_key = _sharded_key("live")
paired_key = _sharded_key("paired")
bucket_key = _sharded_key("buckets")
paired_bucket_key = _sharded_key("paired_buckets")


def bucket_of(user_id: str) -> int:
    """A user's bucket: crc32 like the canary routing (`streamer.registry.on_canary`, which uses
    crc32 % 10,000), but its higher digits, so buckets cut across the canary share."""
    return zlib.crc32(user_id.encode("utf-8")) // 10_000 % BUCKETS


def _sum_shards(client, base: str) -> dict[str, dict[str, float]]:
    """label -> {stat: value} of a sharded hash whose fields are `<label>:<stat>`."""
    shards = [s.decode() if isinstance(s, bytes) else s for s in client.smembers(f"{base}:shards")]
    labels: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for key in [base, *(f"{base}:{{{shard}}}" for shard in sorted(shards))]:
        for name, value in client.hgetall(key).items():
            name = name.decode() if isinstance(name, bytes) else name
            label, stat = name.rsplit(":", 1)  # a version may hold ':'; a stat never does
            labels[label][stat] += float(value)
    return {label: dict(stats) for label, stats in labels.items()}


def read_totals(client, prefix: str, version: str) -> dict[str, dict[str, float]]:
    """arm -> {"items_scored", "hits", "HR", "forecast_scored", "abs_error", "sq_error", "MAE", ...}
    from Redis, summed over the slot shards on Redis Cluster."""
    out = {}
    for arm, t in _sum_shards(client, totals_key(prefix, version)).items():
        t["HR"] = t.get("hits", 0.0) / t["items_scored"] if t.get("items_scored") else math.nan
        t["MAE"] = t.get("abs_error", 0.0) / t["forecast_scored"] if t.get("forecast_scored") else math.nan
        out[arm] = t
    return out


def read_paired(client, prefix: str, version: str) -> dict[str, dict[str, float]]:
    """served version -> PAIR_FIELDS sums for shadow `version` (missing fields are 0)."""
    return {base: {f: stats.get(f, 0.0) for f in PAIR_FIELDS}
            for base, stats in _sum_shards(client, paired_key(prefix, version)).items()}


def read_buckets(client, prefix: str, version: str, label: str, paired: bool = False) -> dict[str, list[float]]:
    """bucket ("b<k>") -> amounts in BUCKET_FIELDS (or PAIR_BUCKET_FIELDS) order, for one arm (or, paired,
    one served version) of `version`."""
    base = (paired_bucket_key if paired else bucket_key)(prefix, version)
    names = PAIR_BUCKET_FIELDS if paired else BUCKET_FIELDS
    out = {}
    for bucket_label, stats in _sum_shards(client, base).items():
        owner, _, bucket = bucket_label.rpartition(":")
        if owner == label:
            out[bucket] = [stats.get(f, 0.0) for f in names]
    return out
