"""A rollout's policy: its phases, what decides, how sure it must be, and the guard rails.

`seqcast rollout start REF` alone uses the defaults below; every field can be
set by a flag or a JSON file (`--policy FILE`, the same names). The defaults
aim at a service doing hundreds to thousands of events per second: a bad
model is usually stopped in the shadow phase (no user saw it), and a good one
needs about twenty minutes of canary steps.

What each field means for the decision is in docs/rollouts.md; the
statistics are `streamer.sequential`.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

HEADS = ("items", "forecast")


class PolicyError(ValueError):
    """A policy that cannot work; the message names the field."""


@dataclass(frozen=True)
class Policy:
    # shadow: the candidate predicts every event next to the primary, scored, never emitted (paired test)
    shadow_min_scored: int = 2000  # paired judgments before it may go on; 0 skips the shadow phase
    shadow_max_seconds: float = 3600.0
    # canary: a stable share of users (crc32 of user_id) is served by the candidate (unpaired test)
    steps: tuple[float, ...] = (5.0, 25.0, 50.0)  # percent of users per step; then promoted to 100
    step_min_scored: int = 1000  # candidate predictions scored during the step before it may go on
    step_min_seconds: float = 60.0
    step_max_seconds: float = 1800.0  # still undecided then: rolled back (the model did not prove itself)
    # the statistics
    heads: tuple[str, ...] = HEADS  # heads that decide, where both models have them (HR@K, MAE)
    max_regression: float = 0.02  # the largest tolerated loss, relative to the primary (2% of its HR or MAE)
    alpha: float = 0.05  # chance of rolling back a model that is within tolerance (split over the heads)
    beta: float = 0.05  # chance of going on with a model worse than tolerated (split over the heads)
    min_evidence: int = 200  # no statistical call on fewer judgments (the variance is estimated)
    # guard rails, per step, against the primary over the same time
    max_error_rate: float = 0.01  # predictions the candidate's arm failed to make / asked of it
    max_latency_ratio: float = 2.0  # candidate p99 model call time <= ratio x primary p99 + slack
    latency_slack_ms: float = 5.0
    guard_min_calls: int = 20  # model calls per arm before the latency rail is judged

    def __post_init__(self) -> None:
        problems = []
        if not self.steps or any(not (0 < p < 100) or not math.isfinite(p) for p in self.steps):
            problems.append(f"steps: each canary step is a percent in (0, 100), got {list(self.steps)}")
        elif list(self.steps) != sorted(set(self.steps)):
            problems.append(f"steps: must increase, got {list(self.steps)}")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not 0 < value < 0.5:
                problems.append(f"{name}: an error rate in (0, 0.5), got {value}")
        if not 0 <= self.max_regression < 1:
            problems.append(f"max_regression: a fraction of the primary's metric in [0, 1), got {self.max_regression}")
        if not 0 <= self.max_error_rate <= 1:
            problems.append(f"max_error_rate: in [0, 1], got {self.max_error_rate}")
        if self.max_latency_ratio < 1 or self.latency_slack_ms < 0:
            problems.append("max_latency_ratio must be >= 1 and latency_slack_ms >= 0")
        for name in ("shadow_min_scored", "step_min_scored", "min_evidence", "guard_min_calls"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("shadow_max_seconds", "step_min_seconds", "step_max_seconds"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name}: seconds >= 0, got {getattr(self, name)}")
        if self.step_max_seconds < self.step_min_seconds:
            problems.append("step_max_seconds must be >= step_min_seconds")
        unknown = [h for h in self.heads if h not in HEADS]
        if not self.heads or unknown:
            problems.append(f"heads: some of {list(HEADS)}, got {list(self.heads)}")
        if problems:
            raise PolicyError("rollout policy: " + "; ".join(problems))

    @property
    def shadow(self) -> bool:
        return self.shadow_min_scored > 0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["steps"], out["heads"] = list(self.steps), list(self.heads)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "Policy":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise PolicyError(f"rollout policy: unknown field(s) {unknown}; known: {sorted(known)}")
        clean = {}
        for name, value in values.items():
            if name in ("steps", "heads"):
                if isinstance(value, str):
                    value = [v.strip() for v in value.split(",") if v.strip()]
                if not isinstance(value, (list, tuple)):
                    raise PolicyError(f"rollout policy: {name} must be a list, got {value!r}")
                try:
                    clean[name] = tuple(float(v) for v in value) if name == "steps" else tuple(str(v) for v in value)
                except (TypeError, ValueError):
                    raise PolicyError(f"rollout policy: {name} must be a list of numbers, got {value!r}") from None
                continue
            kind = type(getattr(cls(), name))
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PolicyError(f"rollout policy: {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise PolicyError(f"rollout policy: {name} must be a finite number, got {value!r}")
            if kind is int and float(value) != int(value):
                raise PolicyError(f"rollout policy: {name} must be a whole number, got {value!r}")
            clean[name] = kind(value)
        return cls(**clean)

    @classmethod
    def from_file(cls, path: str | Path) -> "Policy":
        try:
            values = json.loads(Path(path).read_text())
        except OSError as err:
            raise PolicyError(f"rollout policy file {path}: {err.strerror or err}") from None
        except json.JSONDecodeError as err:
            raise PolicyError(f"rollout policy file {path}: not JSON ({err})") from None
        if not isinstance(values, dict):
            raise PolicyError(f"rollout policy file {path}: must hold a JSON object of fields")
        return cls.from_dict(values)

    def with_overrides(self, overrides: dict) -> "Policy":
        """This policy with the fields in `overrides` (None values ignored) replaced."""
        merged = self.to_dict()
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return Policy.from_dict(merged)
