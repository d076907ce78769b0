"""The README is the user's reference: it must name every setting, metric and command that exists."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from prometheus_client import CollectorRegistry

from seqcast_cli import build_parser
from streamer.metrics import Metrics
from streamer.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_documented_with_its_env_var() -> None:
    missing = [f.name for f in dataclasses.fields(Settings) if f"`SEQCAST_{f.name.upper()}`" not in README]
    assert not missing


def test_every_metric_is_documented() -> None:
    registry = CollectorRegistry()
    Metrics.create(registry)
    names = {m.name + ("_total" if m.type == "counter" else "") for m in registry.collect()}
    assert not sorted(n for n in names if f"`{n}`" not in README)


def test_every_command_is_documented() -> None:
    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    assert not sorted(c for c in commands if f"seqcast {c}" not in README and f"make {c}" not in README)
