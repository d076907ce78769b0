"""Readers for the deployment files, without Docker: compose, Dockerfile, PromQL, /metrics scrapes.

Used by tests/test_deploy.py and by live tests:

- `dashboard_metric_names(path)`: the series names the Grafana dashboard's PromQL selects.
- `assert_dashboard_matches_scrape(scrape_text)`: every series the dashboard and the alert rules
  select is exposed by the streamer that produced `scrape_text` (its /metrics body).
- `compose()`, `service()`, `settings_of()`, `dockerfile_stages()`: docker-compose.yml and the
  Dockerfile read the way compose and BuildKit would read them (interpolation, merge keys,
  line continuations, stages).
"""
from __future__ import annotations

import fnmatch
import functools
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamer.metrics import Metrics
from streamer.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = ROOT / "deploy/grafana/dashboards/seqcast.json"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
DATASOURCES = ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml"
DASHBOARD_PROVIDERS = ROOT / "deploy/grafana/provisioning/dashboards/seqcast.yml"

# Metrics of the rollout work (issue 6) that the dashboard and alerts use, with the types and labels
# they must be declared with; `test_rollout_metrics_are_declared` checks streamer/metrics.py has them,
# and the live check (`assert_dashboard_matches_scrape`) accepts nothing that the scrape does not show.
ROLLOUT_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "seqcast_live_scored": ("counter", ("model_version", "arm", "head")),
    "seqcast_live_hits": ("counter", ("model_version", "arm")),
    "seqcast_live_abs_error": ("counter", ("model_version", "arm")),
    "seqcast_model_load_failures": ("counter", ()),
    "seqcast_model_swaps": ("counter", ("role",)),
    "seqcast_rollout_phase": ("gauge", ("phase",)),
    "seqcast_rollout_weight": ("gauge", ()),
    "seqcast_rollout_decisions": ("counter", ("outcome",)),
    "seqcast_rollout_leader": ("gauge", ()),
    "seqcast_rollout_delta": ("gauge", ("head", "bound")),
    "seqcast_rollout_scored": ("gauge", ("head",)),
    "seqcast_arm_errors": ("counter", ("arm",)),
}
# Series that Prometheus itself makes for every target; alert rules may use them.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"instance", "job"})


# --- PromQL ------------------------------------------------------------------------------------
PROMQL_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                             "and", "or", "unless", "offset", "inf", "nan"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _blank_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def _strip_to_names(expr: str) -> str:
    s = _blank_strings(expr)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)  # Grafana variables ($__rate_interval, ${var})
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery selectors
    return _GROUPING.sub(" ", s)  # by (...), on (...), group_left (...)


def promql_metric_names(expr: str) -> set[str]:
    """Series names selected by a PromQL expression, as written (`x_bucket`, `y_total`, `z`)."""
    if "__name__" in expr:
        raise ValueError(f"select metrics by name, not by __name__: {expr}")
    s = _strip_to_names(expr)
    names = set()
    for match in _IDENT.finditer(s):
        before = s[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":  # 1e3, 5m
            continue
        if s[match.end():].lstrip().startswith("(") or match.group().lower() in PROMQL_KEYWORDS:
            continue  # a function or aggregation, or an operator
        names.add(match.group())
    return names


def promql_label_names(expr: str) -> tuple[set[str], set[str]]:
    """(labels in matchers and grouping clauses, labels kept by `by (...)` clauses)."""
    s = _blank_strings(expr)
    used, kept = set(), set()
    for block in re.findall(r"\{([^}]*)\}", s):
        used.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", block))
    for keyword, inner in _GROUPING.findall(s):
        labels = {label.strip() for label in inner.split(",") if label.strip()}
        used |= labels
        if keyword == "by":
            kept |= labels
    return used, kept


def promql_rate_arguments(expr: str) -> set[str]:
    """Series that rate(), irate() or increase() are applied to."""
    s = re.sub(r"\{[^}]*\}", " ", _blank_strings(expr))
    return set(re.findall(r"\b(?:rate|irate|increase)\s*\(\s*([A-Za-z_:][A-Za-z0-9_:]*)", s))


# --- metric families and the series they expose ----------------------------------------------
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "info": ("_info",),
}
RATE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


@dataclass(frozen=True)
class Family:
    name: str  # as prometheus_client names it: counters without `_total`
    type: str
    labels: tuple[str, ...] | None = None  # None: unknown (a text scrape does not list them)

    def series(self) -> set[str]:
        return {self.name + suffix for suffix in SUFFIXES.get(self.type, ("",))}

    def rate_series(self) -> set[str]:
        return {self.name + suffix for suffix in RATE_SUFFIXES.get(self.type, ())}


def families_from_scrape(scrape_text: str) -> dict[str, Family]:
    """Every family in a Prometheus text exposition, including labelled ones with no samples yet
    (their `# TYPE` line is there before first use). `*_created` gauges belong to their family."""
    found = {f.name: Family(f.name, f.type) for f in text_string_to_metric_families(scrape_text)}
    return {name: fam for name, fam in found.items()
            if not (name.endswith("_created") and name[: -len("_created")] in found)}


def declared_families() -> dict[str, Family]:
    """The families every `seqcast serve` declares (`streamer.metrics.Metrics.create` and the
    rollout controller's `RolloutMetrics.create`), with their label names."""
    from streamer.rollout_controller import RolloutMetrics

    registry = CollectorRegistry()
    metrics = [*Metrics.create(registry), *RolloutMetrics.create(registry)]
    labels = {m._name: tuple(m._labelnames) for m in metrics}
    return {name: Family(name, fam.type, labels.get(name, ()))
            for name, fam in families_from_scrape(generate_latest(registry).decode()).items()}


def rollout_families() -> dict[str, Family]:
    return {name: Family(name, kind, labels) for name, (kind, labels) in ROLLOUT_METRICS.items()}


def exposed_series(families: Mapping[str, Family]) -> set[str]:
    return set().union(*(f.series() for f in families.values()))


# --- dashboard and alert expressions ----------------------------------------------------------
def _panels(dashboard: dict) -> Iterable[dict]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def dashboard_expressions(path: Path = DASHBOARD) -> list[tuple[str, str, str]]:
    """(panel title, PromQL, legend format) of every query target in a Grafana dashboard JSON."""
    dashboard = json.loads(Path(path).read_text())
    return [(panel.get("title", ""), target["expr"], target.get("legendFormat", ""))
            for panel in _panels(dashboard) for target in panel.get("targets", []) if target.get("expr")]


def dashboard_metric_names(path: Path = DASHBOARD) -> set[str]:
    """Every series name the dashboard's PromQL selects, as written (`..._bucket`, `..._total`)."""
    return set().union(*(promql_metric_names(expr) for _, expr, _ in dashboard_expressions(path)))


def alert_expressions(path: Path = ALERTS) -> list[tuple[str, str]]:
    rules = yaml.safe_load(Path(path).read_text())
    return [(rule.get("alert") or rule.get("record"), str(rule["expr"]))
            for group in rules["groups"] for rule in group["rules"]]


def alert_metric_names(path: Path = ALERTS) -> set[str]:
    return set().union(*(promql_metric_names(expr) for _, expr in alert_expressions(path))) - PROMETHEUS_SERIES


def missing_from(families: Mapping[str, Family]) -> dict[str, list[str]]:
    """Series the dashboard or alerts use that `families` cannot expose -> where they are used."""
    exposed = exposed_series(families)
    users: dict[str, list[str]] = {}
    for title, expr, _ in dashboard_expressions():
        for name in promql_metric_names(expr) - exposed:
            users.setdefault(name, []).append(f"panel {title!r}")
    for alert, expr in alert_expressions():
        for name in promql_metric_names(expr) - exposed - PROMETHEUS_SERIES:
            users.setdefault(name, []).append(f"alert {alert}")
    return users


def assert_dashboard_matches_scrape(scrape_text: str) -> None:
    """Hook for a live test: every series that the Grafana dashboard and the Prometheus alert
    rules select must be exposed by the streamer whose /metrics produced `scrape_text`.

    A family counts as exposed from its `# TYPE` line on, so labelled counters that have not
    been incremented yet still count; `_bucket/_sum/_count` are matched against histogram
    families and `_total` against counters (a `_bucket` of a counter, or a bare histogram name,
    is reported as missing). Nothing is exempt here, the rollout metrics included.
    """
    families = families_from_scrape(scrape_text)
    assert families, "the scrape holds no metric families"
    missing = missing_from(families)
    assert not missing, "not on the live /metrics:\n" + "\n".join(
        f"  {name}: {', '.join(sorted(set(where)))}" for name, where in sorted(missing.items()))


# --- compose ------------------------------------------------------------------------------------
_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Compose's variable substitution on a scalar: $$ -> $, ${X:-default}, ${X-default}, ${X:?error}, $X.
    `environ` stands for the shell and .env file; the tests use the defaults (an empty one)."""
    if not isinstance(value, str):
        return value
    environ = environ or {}

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, default = match.group(1) or match.group(4), match.group(2), match.group(3) or ""
        value = environ.get(name)
        if value is not None and not (value == "" and op in (":-", ":?")):
            return value
        if op in (":?", "?"):
            raise ValueError(f"{name} must be set: {default}")
        return default if op in (":-", "-") else ""
    return _INTERPOLATION.sub(one, value)


@functools.cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def service(name: str) -> dict:
    return compose()["services"][name]


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: _env_value(value) for key, value in env.items()}


def _env_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):  # YAML true/false; compose passes them on as "true"/"false"
        return str(value).lower()
    return str(interpolate(value))


def seqcast_env(svc: dict) -> dict[str, str]:
    return {k: v for k, v in environment(svc).items() if k.startswith(ENV_PREFIX)}


def settings_of(name: str) -> Settings:
    """The Settings a service runs with: its SEQCAST_* environment over the defaults."""
    return Settings.from_env(seqcast_env(service(name)))


def command(svc: dict) -> list[str]:
    cmd = svc.get("command") or []
    return [str(interpolate(part)) for part in (shlex.split(cmd) if isinstance(cmd, str) else cmd)]


def volume_mounts(svc: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each entry in `volumes`, short or long syntax."""
    mounts = []
    for entry in svc.get("volumes", []):
        if isinstance(entry, str):
            parts = entry.split(":")
            mounts.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            mounts.append((entry["source"], entry["target"], bool(entry.get("read_only"))))
    return mounts


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def repo_path_for(svc: dict, container_path: str) -> Path | None:
    """The repository file a bind mount of `svc` shows at `container_path`, if any."""
    for source, target, _ in volume_mounts(svc):
        if is_bind(source) and (container_path == target or container_path.startswith(target.rstrip("/") + "/")):
            return (COMPOSE.parent / source).resolve() / container_path[len(target):].lstrip("/")
    return None


def service_hosts(name: str) -> set[str]:
    svc = service(name)
    aliases = {svc["hostname"]} if "hostname" in svc else set()
    return {name} | aliases


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# --- Dockerfile ---------------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [args for name, args in self.instructions if name == op]


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    text = re.sub(r"\\\n", " ", path.read_text())  # line continuations
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, args = line.partition(" ")
        op, args = op.upper(), args.strip()
        if op == "FROM":
            words = args.split()
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, words[0]))
        else:
            stages[-1].instructions.append((op, args))
    return stages


def stage_closure(stages: list[Stage], name: str) -> list[Stage]:
    """A stage and every stage it builds on (FROM) or copies from (COPY --from)."""
    by_name = {s.name: s for s in stages}
    seen: dict[str, Stage] = {}
    todo = [name]
    while todo:
        stage = by_name[todo.pop()]
        if stage.name in seen:
            continue
        seen[stage.name] = stage
        todo += [stage.base] if stage.base in by_name else []
        todo += [m for args in stage.all("COPY") for m in re.findall(r"--from=(\S+)", args) if m in by_name]
    return list(seen.values())


def copy_sources(args: str) -> list[str]:
    words = [w for w in shlex.split(args) if not w.startswith("--")]
    return words[:-1]


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or a parent decides."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.replace("**/", "")) for c in candidates):
            excluded = not negate
    return excluded


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"use the exec form (a JSON list), got {args}"
    return value
