"""Redis Cluster hash slots: which slot a key lives in, and a short hash tag that lands in a given slot.

A Lua script on Redis Cluster may only touch keys of one slot. Per-user keys
carry the user's hash tag, so a script for a group of users of one slot can
also update a per-slot shard of a shared total if that shard's key carries a
tag of the same slot: `tag_for(key)` returns such a tag (the smallest decimal
number whose CRC16 lands in the slot; the whole table costs ~0.1 s to build
once). On a single Redis there are no slots: `tag_for` returns None and
callers use one unsharded key.
"""
from __future__ import annotations

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot


def _slot_tags() -> list[str]:
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    missing, n = REDIS_CLUSTER_HASH_SLOTS, 0
    while missing:
        text = str(n)
        slot = key_slot(text.encode())
        if tags[slot] is None:
            tags[slot] = text
            missing -= 1
        n += 1
    return tags  # type: ignore[return-value]


class SlotTags:
    """`tag_for(key)`: a hash tag in the same cluster slot as `key`, or None on a single Redis."""

    def __init__(self, client) -> None:
        self.cluster = isinstance(client, redis.RedisCluster)
        self._tags = _slot_tags() if self.cluster else []

    def slot(self, key: str) -> int:
        """The cluster slot of `key` (callers group per-user script calls by it)."""
        return key_slot(key.encode())

    def tag_for(self, key: str) -> str | None:
        if not self.cluster:
            return None
        return self._tags[key_slot(key.encode())]
