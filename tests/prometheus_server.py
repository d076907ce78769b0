"""A real Prometheus for the live observability test: binaries, configs derived from deploy/, the HTTP API.

Why a real one: the dashboard and the alert rules are PromQL that only a Prometheus evaluates the
way production does (staleness, rate() extrapolation, `or vector(0)`, `on() group_left()`, empty
aggregations). Parsing them (tests/test_deploy.py) cannot tell a query that returns nothing.

- `require(name)`: the path of `prometheus` / `promtool`, or a test failure that says how to install
  them (CI installs Debian's `prometheus` package in .ci/run; a missing binary must not pass silently).
- `live_config`: deploy/prometheus/prometheus.yml with its compose-only service discovery (Docker
  DNS name `streamer`) replaced by static targets, short intervals, and the rule files given.
- `shortened_for`: alerts.yml text with only the `for:` durations changed, so an alert can fire in
  seconds; `rules_without_for` lets a test prove nothing else changed.
- `grafana_expr`: a dashboard query with Grafana's macros and template variables substituted.
- `PrometheusServer`: the server process on a free loopback port with a temp TSDB, and its API.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterable

import pytest
import yaml

from streamer.embedded import free_port

INSTALL_HINT = ("install Debian's `prometheus` package (`apt-get install -y prometheus`, as .ci/run does): "
                "it provides /usr/bin/prometheus and /usr/bin/promtool")

# What Grafana substitutes before a query reaches Prometheus, for a scrape interval of ~1 s and a
# 30 min dashboard range: $__rate_interval is max(4 x scrape interval, $__interval + scrape interval);
# 1m keeps rate() over several samples at any sensible scrape interval.
GRAFANA_MACROS = {"__rate_interval": "1m", "__interval": "15s", "__range": "30m", "__range_s": "1800",
                  "__range_ms": "1800000", "__interval_ms": "15000"}


def require(name: str) -> str:
    """The binary's path, or fail (not skip) the test with how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: {INSTALL_HINT}", pytrace=False)
    return path


def promtool(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([require("promtool"), *args], capture_output=True, text=True, timeout=timeout_s)


def live_config(source: Path, targets: list[str], rule_files: Iterable[Path], interval: str = "1s") -> dict:
    """The compose Prometheus config, pointed at `targets` instead of Docker DNS.

    Job names, metrics paths and everything else a job sets are kept (the alerts select
    `job="seqcast-streamer"`); only the service discovery, the intervals and the rule file paths change.
    """
    config = yaml.safe_load(Path(source).read_text())
    config["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    config["rule_files"] = [str(Path(p).resolve()) for p in rule_files]
    for job in config["scrape_configs"]:
        for key in [k for k in job if k.endswith("_sd_configs")]:
            del job[key]
        job["static_configs"] = [{"targets": list(targets)}]
    return config


_FOR = re.compile(r"^(\s+for:\s*)\S+\s*$", re.MULTILINE)


def shortened_for(rules_text: str, duration: str = "1s") -> str:
    """The rule file's text with every `for:` duration set to `duration`, nothing else touched."""
    return _FOR.sub(lambda m: m.group(1) + duration, rules_text)


def rules_without_for(rules_text: str) -> list[dict]:
    """Every rule as parsed, minus `for`: two files that differ only in `for:` compare equal."""
    groups = yaml.safe_load(rules_text)["groups"]
    return [{k: v for k, v in rule.items() if k != "for"} | {"group": g["name"]} for g in groups for rule in g["rules"]]


def dashboard_variables(dashboard: dict) -> dict[str, str]:
    """Template variable -> the value Grafana would substitute (its current value; All -> `.*`)."""
    values = {}
    for var in dashboard.get("templating", {}).get("list", []):
        current = var.get("current", {}).get("value", var.get("query", ""))
        if isinstance(current, list):
            current = "|".join(current)
        values[var["name"]] = ".*" if current in ("$__all", "All") else str(current)
    return values


def grafana_expr(expr: str, variables: dict[str, str]) -> str:
    """`expr` as Grafana sends it: $__macros and $var / ${var} / [[var]] substituted; unknown ones fail."""
    known = {**GRAFANA_MACROS, **variables}

    def one(match: re.Match) -> str:
        name = next(g for g in match.groups() if g)
        name = name.split(":", 1)[0]  # ${var:regex} formats: the value as is
        if name not in known:
            raise AssertionError(f"unknown Grafana variable ${name} in {expr}")
        return known[name]
    return re.sub(r"\$\{([^}]+)\}|\[\[(\w+)\]\]|\$(\w+)", one, expr)


class PrometheusServer:
    """`prometheus` on 127.0.0.1:<free port> with its own TSDB dir; `stop()` kills it."""

    def __init__(self, config: dict, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.log_path = self.workdir / "prometheus.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [require("prometheus"), f"--config.file={self.config_path}",
             f"--storage.tsdb.path={self.workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready after {timeout_s}s:\n{self.log_tail()}")

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a success, an AssertionError with Prometheus' error otherwise."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:  # 400/422: a bad query; the body says why
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query's result (a vector); a scalar or string result is wrapped as one sample."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def targets(self) -> list[dict]:
        return self.api("targets", state="active")["activeTargets"]

    def alerts(self) -> list[dict]:
        return self.api("alerts")["alerts"]

    def rules(self) -> list[dict]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def firing(self) -> set[str]:
        return {a["labels"]["alertname"] for a in self.alerts() if a["state"] == "firing"}

    def wait_for(self, condition, what: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{self.log_tail()}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
