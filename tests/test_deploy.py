"""The docker-compose stack, checked without Docker: files, ports, settings, commands, dashboard.

Docker cannot run here, so these tests read what `docker compose up` would read and check it
against the code it drives:

- docker-compose.yml parses (and validates against the Compose Specification's JSON schema
  when the `check-jsonschema` package that vendors it is installed); every file it references
  exists; every SEQCAST_* variable is a real `Settings` field (`Settings.from_env` rejects
  unknown ones); hosts and ports agree across Kafka, Redis, the streamer, Prometheus, Grafana.
- Dockerfile: python:3.11-slim, a non-root runtime stage without the `train` extra, `seqcast
  serve` as the default command, a /healthz healthcheck on the metrics port.
- The commands compose runs (`seqcast train`, `seqcast replay`, `seqcast serve`) are parsed by
  the real argument parsers.
- The Grafana dashboard and the Prometheus alert rules name only metrics the streamer exposes.
  `dashboard_metric_names` parses them out of the PromQL; `assert_dashboard_matches_scrape` is
  the hook for a test that scrapes a live streamer's /metrics.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from deploy_checks import (  # noqa: F401  (assert_dashboard_matches_scrape, dashboard_metric_names: for live tests)
    _blank_strings,
    _panels,
    alert_expressions,
    ALERTS,
    assert_dashboard_matches_scrape,
    command,
    COMPOSE,
    compose,
    copy_sources,
    DASHBOARD,
    dashboard_expressions,
    dashboard_metric_names,
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    declared_families,
    dockerfile_stages,
    dockerignore_excludes,
    environment,
    exec_form,
    exposed_series,
    Family,
    host_port,
    interpolate,
    is_bind,
    missing_from,
    PROMETHEUS,
    PROMETHEUS_SERIES,
    promql_label_names,
    promql_metric_names,
    promql_rate_arguments,
    repo_path_for,
    rollout_families,
    ROLLOUT_METRICS,
    ROOT,
    seqcast_env,
    service,
    service_hosts,
    settings_of,
    stage_closure,
    TARGET_LABELS,
    volume_mounts,
)
from streamer.metrics import Metrics
from streamer.settings import FOREIGN_ENV, Settings


# === tests: compose ===============================================================================
STACK = {"kafka", "kafka-init", "redis", "trainer", "streamer", "replay", "prometheus", "grafana"}


def test_compose_parses_and_holds_the_stack() -> None:
    doc = compose()
    assert set(doc["services"]) == STACK
    declared = set(doc.get("volumes") or {})
    for name, svc in doc["services"].items():
        for source, _, _ in volume_mounts(svc):
            assert is_bind(source) or source in declared, f"{name}: volume {source!r} is not declared"
        for dep in svc.get("depends_on") or {}:
            assert dep in doc["services"], f"{name} depends on unknown service {dep}"


def test_compose_matches_the_compose_spec_schema() -> None:
    check_jsonschema = pytest.importorskip("check_jsonschema")
    jsonschema = pytest.importorskip("jsonschema")
    schema_path = Path(check_jsonschema.__file__).parent / "builtin_schemas/vendor/compose-spec.json"
    schema = json.loads(schema_path.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, "\n".join(errors)


def test_every_referenced_file_exists() -> None:
    for name, svc in compose()["services"].items():
        build = svc.get("build")
        if build:
            build = {"context": build} if isinstance(build, str) else build
            context = COMPOSE.parent / build.get("context", ".")
            assert context.is_dir(), f"{name}: build context {context} missing"
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            if "target" in build:
                assert build["target"] in {s.name for s in dockerfile_stages(dockerfile)}, f"{name}: no stage {build['target']}"
        for source, target, _ in volume_mounts(svc):
            if is_bind(source):
                assert (COMPOSE.parent / source).exists(), f"{name}: mounts missing {source} at {target}"


def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    ignore = ROOT / ".dockerignore"
    assert ignore.is_file(), "a .dockerignore keeps .venv, .git and models out of the build context"
    patterns = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert {".git", ".venv", "models"} <= set(patterns)
    for stage in dockerfile_stages():
        for args in stage.all("COPY"):
            if "--from=" in args:
                continue
            sources = copy_sources(args)
            assert any((ROOT / src).exists() for src in sources), f"COPY {args}: no source exists"
            for src in sources:
                if not any(ch in src for ch in "*?["):
                    assert (ROOT / src).exists(), f"COPY {args}: {src} missing"
                    assert not dockerignore_excludes(src, patterns), f"COPY {args}: .dockerignore excludes {src}"


def test_runtime_image_serves_without_tensorflow_as_non_root() -> None:
    stages = dockerfile_stages()
    runtime = stages[-1]
    assert runtime.name == "runtime", "the default (last) stage is the runtime image"
    assert all(s.base == "python:3.11-slim" for s in stages if s.base not in {t.name for t in stages} | {"scratch"})
    assert service("streamer")["build"]["target"] == "runtime"
    assert service("trainer")["build"]["target"] == "trainer"

    closure_text = "\n".join(args for s in stage_closure(stages, "runtime") for _, args in s.instructions)
    assert "optional-dependencies" not in closure_text and "[train" not in closure_text and "tensorflow" not in closure_text
    trainer_text = "\n".join(args for s in stage_closure(stages, "trainer") for _, args in s.instructions)
    assert "['train']" in trainer_text, "the trainer image installs the train extra"

    import tomllib
    runtime_deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in runtime_deps if re.match(r"(tensorflow|keras|tf2onnx)", d)], runtime_deps

    users = runtime.all("USER")
    assert users and users[-1] not in ("root", "0"), "the runtime image runs as a non-root user"
    assert exec_form(runtime.all("ENTRYPOINT")[-1]) == ["seqcast"]
    assert exec_form(runtime.all("CMD")[-1]) == ["serve"]

    port = Settings().metrics_port
    healthcheck = runtime.all("HEALTHCHECK")[-1]
    assert "/healthz" in healthcheck and f"SEQCAST_METRICS_PORT:-{port}" in healthcheck
    assert runtime.all("EXPOSE") == [str(port)]


def test_every_seqcast_variable_is_a_setting() -> None:
    seen = 0
    for name, svc in compose()["services"].items():
        env = seqcast_env(svc)
        assert not set(env) & FOREIGN_ENV, f"{name}: {set(env) & FOREIGN_ENV} are not streamer settings"
        Settings.from_env(env)  # raises SettingsError naming an unknown or malformed variable
        seen += len(env)
    assert seen, "the stack configures the streamer through SEQCAST_* variables"
    with pytest.raises(ValueError, match="SEQCAST_METRIC_PORT"):  # the check has teeth
        Settings.from_env({"SEQCAST_METRIC_PORT": "9108"})


def test_streamer_scales_out() -> None:
    svc = service("streamer")
    assert "ports" not in svc, "a fixed host port would stop `--scale streamer=N`"
    assert "container_name" not in svc and "hostname" not in svc
    settings = settings_of("streamer")
    assert str(settings.metrics_port) in [str(p) for p in svc.get("expose", [])]
    assert settings.metrics_host == "0.0.0.0", "Prometheus scrapes from another container"
    assert not settings.assign_all_partitions, "replicas must share the partitions in one consumer group"
    assert settings.group_id and not settings.bundle, "serve the newest bundle of models_dir/model_name"
    assert isinstance(svc["deploy"]["replicas"], int)
    assert "stop_grace_period" in svc and svc.get("restart") == "unless-stopped"


def test_depends_on_waits_for_what_can_report_it() -> None:
    stages = dockerfile_stages()
    for name, svc in compose()["services"].items():
        deps = svc.get("depends_on") or {}
        for dep, spec in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
            condition = spec.get("condition", "service_started")
            target = service(dep)
            if condition == "service_healthy":
                has_check = "healthcheck" in target and not target["healthcheck"].get("disable")
                built = target.get("build", {}).get("target")
                has_check = has_check or any(s.name == built and s.all("HEALTHCHECK") for s in stages)
                assert has_check, f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
            if condition == "service_completed_successfully":
                assert target.get("restart", "no") == "no", f"{dep} is one-shot: restart must be 'no'"
    streamer_deps = service("streamer")["depends_on"]
    assert streamer_deps["trainer"]["condition"] == "service_completed_successfully"
    assert streamer_deps["kafka-init"]["condition"] == "service_completed_successfully"


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        out[name] = host_port(address)
    return out


def test_kafka_addresses_agree() -> None:
    env = environment(service("kafka"))
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, "single-node KRaft"
    listeners = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@", 1)[1]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")[0] == str(env["KAFKA_NODE_ID"])
    assert host_port(voter)[0] in service_hosts("kafka") and host_port(voter)[1] == listeners[controller][1]
    for name, (host, port) in advertised.items():
        assert host in service_hosts("kafka") and listeners[name][1] == port
    bootstrap = {(h, p) for h, p in advertised.values()}
    for name in ("streamer", "replay"):
        for address in settings_of(name).bootstrap_servers.split(","):
            assert host_port(address) in bootstrap, f"{name}: {address} is not an advertised listener"
    init_script = " ".join(command(service("kafka-init")))
    for address in re.findall(r"--bootstrap-server\s+(\S+)", init_script):
        assert host_port(address) in bootstrap


def test_topics_are_created_with_partitions_to_scale_on() -> None:
    init_script = " ".join(command(service("kafka-init")))
    specs = dict(spec.split(":") for spec in re.search(r"for spec in ([^;]+);", init_script).group(1).split())
    raw = service("kafka-init")["command"][0]
    assert "$${spec%%:*}" in raw and "${spec%%:*}" in init_script, "$$ keeps compose from interpolating shell variables"
    assert environment(service("kafka"))["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for name in ("streamer", "replay"):
        settings = settings_of(name)
        assert {settings.input_topic, settings.output_topic, settings.dlq_topic} <= set(specs)
    events = int(specs[settings_of("streamer").input_topic])
    assert events >= 3, "enough partitions for `--scale streamer=3`"
    replay = command(service("replay"))
    assert replay[replay.index("--partitions") + 1] == str(events)


def test_redis_address_agrees() -> None:
    url = urlparse(settings_of("streamer").redis_url)
    assert url.scheme == "redis" and url.hostname in service_hosts("redis")
    redis_cmd = command(service("redis"))
    port = int(redis_cmd[redis_cmd.index("--port") + 1]) if "--port" in redis_cmd else 6379
    assert url.port == port
    assert not settings_of("streamer").redis_cluster


def _strict(parser):
    """The parser and its sub-command parsers without prefix matching: `--epoch` is not `--epochs`."""
    parser.allow_abbrev = False
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for sub in action.choices.values():
            _strict(sub)
    return parser


def _parse(parser, argv: list[str]):
    try:
        return parser.parse_args(argv)
    except SystemExit as exit_:
        raise AssertionError(f"the CLI refuses {argv}") from exit_


def _synthetic_options(spec: str) -> dict[str, str]:
    assert spec.startswith("synthetic:")
    return dict(part.split("=") for part in spec.split(":", 1)[1].split(","))


def test_compose_commands_parse_with_the_real_cli() -> None:
    import seqcast_cli

    parser = _strict(seqcast_cli.build_parser())
    assert _parse(parser, exec_form(dockerfile_stages()[-1].all("CMD")[-1])).command == "serve"

    replay = _parse(parser, command(service("replay")))
    assert replay.command == "replay" and replay.rate > 0

    script = command(service("trainer"))[-1]
    train_argv = shlex.split(re.search(r"exec seqcast (train [^;]+);", script).group(1))
    train = _parse(parser, train_argv)
    streamer = settings_of("streamer")
    assert str(train.models_dir) == streamer.models_dir and train.name == streamer.model_name
    assert f"{streamer.models_dir}/{streamer.model_name}/" in script.split("then")[0], "the skip test looks there"
    assert train.horizon > 0 and not train.no_items, "the stack shows both heads: HR@K and MAE"
    # replayed events use the trained catalogue, or every item would be out of vocabulary
    assert _synthetic_options(replay.spec)["items"] == _synthetic_options(train.data)["items"]
    assert _synthetic_options(replay.spec)["seed"] != _synthetic_options(train.data)["seed"]


def test_models_volume_is_shared_between_trainer_and_streamer() -> None:
    models_dir = settings_of("streamer").models_dir
    trainer = {target: (source, ro) for source, target, ro in volume_mounts(service("trainer"))}
    streamer = {target: (source, ro) for source, target, ro in volume_mounts(service("streamer"))}
    assert trainer[models_dir][0] == streamer[models_dir][0] and not is_bind(trainer[models_dir][0])
    assert not trainer[models_dir][1] and streamer[models_dir][1], "trainer writes, streamer reads"


# === tests: Prometheus and Grafana wiring =========================================================
def test_prometheus_scrapes_every_streamer_replica() -> None:
    prom = service("prometheus")
    config_target = next(a.split("=", 1)[1] for a in command(prom) if a.startswith("--config.file="))
    assert repo_path_for(prom, config_target) == PROMETHEUS.resolve()
    config = yaml.safe_load(PROMETHEUS.read_text())
    for rule_file in config["rule_files"]:
        assert repo_path_for(prom, rule_file) == ALERTS.resolve()
    (job,) = config["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["streamer"] and sd.get("type", "SRV") == "A", "one A record per replica"
    assert sd["port"] == settings_of("streamer").metrics_port
    assert job.get("metrics_path", "/metrics") == "/metrics"
    for alert, expr in alert_expressions():
        for job_name in re.findall(r'job\s*=\s*"([^"]+)"', expr):
            assert job_name == job["job_name"], f"alert {alert} selects job {job_name!r}"


def _prometheus_port() -> int:
    for arg in command(service("prometheus")):
        if arg.startswith("--web.listen-address="):
            return host_port(arg.split("=", 1)[1])[1]
    return 9090


def test_grafana_datasource_points_at_prometheus() -> None:
    grafana = service("grafana")
    assert repo_path_for(grafana, "/etc/grafana/provisioning/datasources/prometheus.yml") == DATASOURCES.resolve()
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    url = urlparse(source["url"])
    assert source["type"] == "prometheus" and url.hostname in service_hosts("prometheus")
    assert url.port == _prometheus_port()
    assert f"{_prometheus_port()}:{_prometheus_port()}" in service("prometheus")["ports"]


def test_grafana_loads_the_dashboard_file() -> None:
    grafana = service("grafana")
    assert repo_path_for(grafana, "/etc/grafana/provisioning/dashboards/seqcast.yml") == DASHBOARD_PROVIDERS.resolve()
    (provider,) = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    folder = repo_path_for(grafana, provider["options"]["path"])
    assert folder == DASHBOARD.parent.resolve() and DASHBOARD.is_file()
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert repo_path_for(grafana, home) == DASHBOARD.resolve()


# === tests: the dashboard ==========================================================================
def test_dashboard_panels_have_a_datasource_queries_units_and_legends() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    panels = [p for p in _panels(dashboard) if p["type"] != "row"]
    assert len(panels) >= 10
    assert len({p["id"] for p in _panels(dashboard)}) == len(list(_panels(dashboard)))
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, title
        assert panel["targets"], f"{title}: no queries"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title}: set a unit"
        assert panel.get("description"), f"{title}: say what it shows"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, title
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid and target["expr"].strip(), title
            if panel["type"] == "timeseries":
                assert target.get("legendFormat"), f"{title}: {target['expr']} needs a legend"


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", duration))


def test_rate_windows_span_several_scrapes() -> None:
    """rate() needs at least two samples in its window; four scrape intervals leave room for a miss."""
    scrape = _seconds(yaml.safe_load(PROMETHEUS.read_text())["global"]["scrape_interval"])
    expressions = [(f"panel {t!r}", e) for t, e, _ in dashboard_expressions()] + [
        (f"alert {a}", e) for a, e in alert_expressions()]
    for where, expr in expressions:
        for window in re.findall(r"\b(?:rate|irate|increase)\s*\([^\[]*\[([^\]:]+)\]", _blank_strings(expr)):
            assert _seconds(window) >= 4 * scrape, f"{where}: [{window}] with a {scrape:g} s scrape interval"


def test_dashboard_shows_what_operators_need() -> None:
    exprs = [expr for _, expr, _ in dashboard_expressions()]
    joined = "\n".join(exprs)
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(seqcast_event_latency_seconds_bucket" in joined
    required = {"seqcast_events_consumed_total", "seqcast_consumer_lag", "seqcast_inference_seconds_bucket",
                "seqcast_batch_size_bucket", "seqcast_events_invalid_total", "seqcast_model_info",
                "seqcast_live_hits_total", "seqcast_live_scored_total", "seqcast_live_abs_error_total",
                "seqcast_model_swaps_total", "seqcast_model_load_failures_total",
                "seqcast_predictions_emitted_total"}
    assert required <= dashboard_metric_names()
    assert 'sum by (reason) (rate(seqcast_events_invalid_total' in joined
    assert "by (partition)" in joined
    hr = next(e for e in exprs if "seqcast_live_hits_total" in e)
    assert 'head="items"' in hr and "by (model_version, arm)" in hr
    mae = next(e for e in exprs if "seqcast_live_abs_error_total" in e)
    assert 'head="forecast"' in mae and "by (model_version, arm)" in mae


def test_dashboard_and_alerts_watch_reliability() -> None:
    """Issue 10: pauses, outages, commits, rebalances, rewinds and bugs have a row and alerts."""
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert rows[-1]["title"] == "Reliability"
    row_y = rows[-1]["gridPos"]["y"]
    below = {name for panel in _panels(dashboard) if panel["gridPos"]["y"] > row_y
             for target in panel.get("targets", []) for name in promql_metric_names(target["expr"])}
    assert {"seqcast_paused", "seqcast_outages_total", "seqcast_commits_total", "seqcast_rebalances_total",
            "seqcast_delivery_failures_total", "seqcast_events_invalid_total", "seqcast_live_skipped_total",
            "seqcast_live_errors_total"} <= below
    joined = "\n".join(expr for _, expr, _ in dashboard_expressions())
    assert "sum by (dependency) (seqcast_paused)" in joined and 'reason="internal_error"' in joined
    alerts = dict(alert_expressions())
    assert 'seqcast_paused{dependency="redis"}' in alerts["SeqcastPausedForRedis"]
    assert "seqcast_delivery_failures_total" in alerts["SeqcastDeliveryFailing"]
    assert 'reason="internal_error"' in alerts["SeqcastInternalErrors"]


def _overlaps(panels: list[dict]) -> list[str]:
    cells: dict[tuple[int, int], str] = {}
    clashes = []
    for panel in panels:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    clashes.append(f"{panel.get('title')!r} overlaps {cells[(x, y)]!r}")
                cells[(x, y)] = panel.get("title")
    return sorted(set(clashes))


def test_dashboard_panels_do_not_overlap() -> None:
    assert not _overlaps(json.loads(DASHBOARD.read_text())["panels"])
    assert _overlaps([{"title": "a", "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8}},
                     {"title": "b", "gridPos": {"x": 6, "y": 7, "w": 12, "h": 8}}])


def test_promql_parsing_on_hand_checked_expressions() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, arm) (rate(a_seconds_bucket{job="x", reason=~"b_c|d"}[5m]))) '
            '/ on() group_left() sum(increase(c_total[$__rate_interval] offset 1h)) > 1e3 '
            'or vector(0) and deriv(sum(d_gauge)[10m:1m]) unless e')
    assert promql_metric_names(expr) == {"a_seconds_bucket", "c_total", "d_gauge", "e"}
    assert promql_rate_arguments(expr) == {"a_seconds_bucket", "c_total"}
    used, kept = promql_label_names(expr)
    assert used == {"le", "arm", "job", "reason"} and kept == {"le", "arm"}
    assert promql_metric_names("sum(x) without (instance)") == {"x"}
    with pytest.raises(ValueError):
        promql_metric_names('{__name__=~"seqcast_.*"}')
    assert interpolate("$${spec%%:*} ${RATE:-500} ${UNSET} ${SET-no}", {"SET": ""}) == "${spec%%:*} 500  "


def _selector_names(node, pp) -> set[str]:
    if isinstance(node, pp.VectorSelector):
        return {node.name}
    children = [getattr(node, attr, None) for attr in ("expr", "lhs", "rhs", "vector_selector", "param")]
    children += list(getattr(node, "args", None) or [])
    return set().union(*(_selector_names(c, pp) for c in children if isinstance(c, pp.Expr)))


def test_expressions_are_valid_promql() -> None:
    """A real PromQL parser accepts every expression and finds the names the regex finds."""
    pp = pytest.importorskip("promql_parser")
    expressions = [(f"panel {t!r}", e) for t, e, _ in dashboard_expressions()] + [
        (f"alert {a}", e) for a, e in alert_expressions()]
    for where, expr in expressions:
        try:
            tree = pp.parse(expr)
        except Exception as err:  # the binding raises a plain ValueError/RuntimeError
            raise AssertionError(f"{where}: {expr}: {err}") from None
        assert _selector_names(tree, pp) == promql_metric_names(expr), where


def _check_expression(where: str, expr: str, legend: str, families: Mapping[str, Family]) -> list[str]:
    by_series = {s: fam for fam in families.values() for s in fam.series()}
    problems = []
    names = promql_metric_names(expr) - PROMETHEUS_SERIES
    for name in promql_rate_arguments(expr):
        fam = by_series.get(name)
        if fam and name not in fam.rate_series():
            problems.append(f"{where}: rate/increase over {name}, a {fam.type} series")
    for name in re.findall(r"histogram_quantile\([^,]+,.*?([A-Za-z_:][\w:]*)(?=[{\[])", expr):
        if not name.endswith("_bucket") or (name in by_series and by_series[name].type != "histogram"):
            problems.append(f"{where}: histogram_quantile over {name}")
    labels = set(TARGET_LABELS)
    for name in names:
        fam = by_series.get(name)
        if fam:
            labels |= set(fam.labels or ()) | ({"le"} if name.endswith("_bucket") else set())
    used, kept = promql_label_names(expr)
    if unknown := used - labels:
        problems.append(f"{where}: labels {sorted(unknown)} are not on {sorted(names)}")
    placeholders = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
    shown = kept if kept else labels
    if missing := placeholders - shown:
        problems.append(f"{where}: legend {legend!r} uses {sorted(missing)}, which the query drops")
    return problems


def test_dashboard_and_alerts_use_declared_metrics_types_and_labels() -> None:
    """Against what streamer.metrics declares (plus the announced rollout metrics): names,
    rate() only over counters and histogram series, histogram_quantile only over `_bucket`,
    label names that exist on the metrics, legends that use labels the query keeps."""
    declared = declared_families()
    families = {**rollout_families(), **declared}
    missing = missing_from(families)
    assert not missing, f"not declared by streamer.metrics nor announced: {missing}"
    problems = []
    for title, expr, legend in dashboard_expressions():
        problems += _check_expression(f"panel {title!r}", expr, legend, families)
    for alert, expr in alert_expressions():
        problems += _check_expression(f"alert {alert}", expr, "", families)
    assert not problems, "\n".join(problems)
    for name, (kind, labels) in ROLLOUT_METRICS.items():
        if name in declared:  # once declared, it must be what the dashboard assumes
            assert declared[name].type == kind and set(labels) <= set(declared[name].labels), name


def test_rollout_metrics_are_declared() -> None:
    assert not missing_from(declared_families())


def test_scrape_hook_compares_against_families_not_samples() -> None:
    """The hook on an exposition made like a live one: labelled families with no samples yet
    count as exposed; a family that is absent, or a suffix its type does not have, does not."""
    from streamer.rollout_controller import RolloutMetrics

    registry = CollectorRegistry()
    Metrics.create(registry)
    RolloutMetrics.create(registry)  # every `seqcast serve` exposes the controller's families too
    text = generate_latest(registry).decode()
    assert_dashboard_matches_scrape(text)
    without = lambda family: "".join(line for line in text.splitlines(keepends=True) if family not in line)
    with pytest.raises(AssertionError, match="seqcast_live_hits_total"):
        assert_dashboard_matches_scrape(without("seqcast_live_hits"))
    with pytest.raises(AssertionError, match="seqcast_batch_size_bucket"):
        assert_dashboard_matches_scrape(without("seqcast_batch_size"))
    with pytest.raises(AssertionError, match="seqcast_paused"):  # a labelled gauge: no samples until an outage
        assert_dashboard_matches_scrape(without("seqcast_paused"))
