"""A rollout's state in Redis, its decision history, and the lease that lets one controller act.

Keys (one hash slot, `{rollout}`, so the compare-and-set below works on Redis Cluster too):

- `{prefix}:{rollout}:state`      JSON of `RolloutState`: what is rolling out, the phase and step
                                  it is in, and whether the registry has been made to match it yet
- `{prefix}:{rollout}:decisions`  list of decisions, newest first (JSON: outcome, reason, evidence)
- `{prefix}:{rollout}:evidence`   JSON of the latest evidence, for `seqcast rollout status`
- `{prefix}:{rollout}:lock`       the controller lease: owner id, expires unless renewed

Why this survives a crash without a double step: a decision is ONE script call
that replaces the state (new phase/step, `applied: false`) and appends the
decision, only if the state is still the one the controller read and the
lease is still its own. Making the model registry match the state comes
after and is idempotent (each write first checks the registry), then marks
`applied: true` the same compare-and-set way. A controller killed anywhere
in between leaves a state that the next one (after the lease expires)
completes: the step is taken once, recorded once.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field, replace

SHADOW, CANARY, PROMOTED, ROLLED_BACK, ABORTED = "shadow", "canary", "promoted", "rolled_back", "aborted"
PHASES = ("idle", SHADOW, CANARY, PROMOTED, ROLLED_BACK, ABORTED)
TERMINAL = (PROMOTED, ROLLED_BACK, ABORTED)
OUTCOMES = ("advance", "promote", "rollback", "abort")
DECISIONS_KEPT = 200

# KEYS: state, lock, decisions. ARGV: expected state ("" = none), new state, owner ("" = no lease
# needed: an operator's start/abort), decision JSON ("" = none), decisions kept.
COMMIT_SCRIPT = """
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('LPUSH', KEYS[3], ARGV[4])
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
end
return 1
"""
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class RolloutStateError(ValueError):
    """The stored rollout state does not parse; the message says which key to look at."""


@dataclass(frozen=True)
class RolloutState:
    id: str
    ref: str  # the candidate's registry ref
    version: str  # its manifest version (live totals are kept by version)
    baseline_ref: str  # the active ref when the rollout started: what it is compared with
    baseline_version: str
    policy: dict
    phase: str = SHADOW
    step: int = -1  # index into policy steps while in canary
    applied: bool = False  # the registry matches phase/step
    started_at: float = 0.0
    phase_started_at: float = 0.0  # set when applied
    step_started_at: float = 0.0
    reason: str = ""  # why the rollout is in this phase (the last decision's reason)
    # live totals when the phase / step was applied: evidence counts what came after
    phase_snapshot: dict = field(default_factory=dict)
    step_snapshot: dict = field(default_factory=dict)
    applied_at: float = 0.0  # when the registry was last made to match
    hands_off: bool = False  # ended because a person changed the registry: never touch it again

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    @property
    def weight(self) -> float:
        """Percent of users the candidate serves in this phase."""
        if self.phase == CANARY:
            return float(self.policy["steps"][self.step])
        return 100.0 if self.phase == PROMOTED else 0.0

    def describe(self) -> str:
        if self.phase == CANARY:
            return f"canary step {self.step + 1}/{len(self.policy['steps'])} ({self.weight:g}% of users)"
        return self.phase

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> "RolloutState":
        try:
            return cls(**json.loads(raw))
        except (TypeError, ValueError) as err:  # a corrupt value, or one written by a newer version
            raise RolloutStateError(f"the rollout state in Redis cannot be read ({err}); inspect the key "
                                    "'<prefix>:{rollout}:state', or delete it to forget the rollout") from None

    def moved(self, **changes) -> "RolloutState":
        return replace(self, **changes)


def redis_now(client) -> float:
    """The Redis server's clock: every controller and CLI that times a rollout step reads the same one,
    whatever their hosts' clocks say (a step's start and its length are measured on one clock)."""
    seconds, micros = client.time()
    return seconds + micros / 1e6


def owner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class RolloutStore:
    """Read and change the rollout keys; every change is a compare-and-set."""

    def __init__(self, client, prefix: str = "sc") -> None:
        self.client = client
        self.prefix = prefix
        self._commit = client.register_script(COMMIT_SCRIPT)
        self._renew = client.register_script(RENEW_SCRIPT)

    def key(self, name: str) -> str:
        return f"{self.prefix}:{{rollout}}:{name}"

    def load(self) -> tuple[str, RolloutState | None]:
        """(the raw stored state, "" if none, for the compare-and-set; the state)."""
        raw = self.client.get(self.key("state"))
        if raw is None:
            return "", None
        raw = raw.decode() if isinstance(raw, bytes) else raw
        return raw, RolloutState.from_json(raw)

    def commit(self, expected_raw: str, new: RolloutState, owner: str = "", decision: dict | None = None) -> bool:
        """Replace the state (and record `decision`) iff it is still `expected_raw` and, with an
        `owner`, the lease is still that owner's. False: someone else moved first; read again."""
        done = self._commit(keys=[self.key("state"), self.key("lock"), self.key("decisions")],
                            args=[expected_raw, new.to_json(), owner,
                                  json.dumps(decision, sort_keys=True) if decision else "", DECISIONS_KEPT])
        return bool(done)

    def decisions(self, count: int = 20) -> list[dict]:
        return [json.loads(raw) for raw in self.client.lrange(self.key("decisions"), 0, count - 1)]

    def publish_evidence(self, evidence: dict) -> None:
        self.client.set(self.key("evidence"), json.dumps(evidence, sort_keys=True), ex=3600)

    def evidence(self) -> dict | None:
        raw = self.client.get(self.key("evidence"))
        return None if raw is None else json.loads(raw)

    # -- the lease ------------------------------------------------------------------------------

    def hold_lease(self, owner: str, lease_ms: int) -> bool:
        """Take the lease if free, renew it if ours; True while we hold it."""
        if self._renew(keys=[self.key("lock")], args=[owner, lease_ms]):
            return True
        return bool(self.client.set(self.key("lock"), owner, nx=True, px=lease_ms))

    def lease_holder(self) -> str | None:
        raw = self.client.get(self.key("lock"))
        return raw.decode() if isinstance(raw, bytes) else raw

    def release_lease(self, owner: str) -> None:
        """Give the lease up at a clean stop, so another controller need not wait for it to expire."""
        self.client.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
                         "return 0", 1, self.key("lock"), owner)


def new_state(ref: str, version: str, baseline_ref: str, baseline_version: str, policy: dict,
              now: float | None = None) -> RolloutState:
    now = time.time() if now is None else now
    shadow = policy["shadow_min_scored"] > 0
    return RolloutState(id=secrets.token_hex(6), ref=ref, version=version, baseline_ref=baseline_ref,
                        baseline_version=baseline_version, policy=policy, phase=SHADOW if shadow else CANARY,
                        step=-1 if shadow else 0, started_at=now, reason="started")
