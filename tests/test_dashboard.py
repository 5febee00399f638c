"""deploy/grafana/tensorgate.json and deploy/prometheus/rules.yml against a real tensorgate server.

(a) the committed dashboard is what deploy/grafana/generate.py writes; (b) every panel target and
variable query parses as PromQL once Grafana's variables are replaced; (c) every series they name is
in the server's /metrics (or is a recording rule's), and a real Prometheus scraping the server, with
the rules loaded, returns data for every dashboard expression and every rule expression.

Allowed to be empty (the test prints which it let through):
- GPU series (nv_gpu_*, nv_energy_consumption) when the server has no GPU, that is when its /metrics
  has no nv_gpu_ line; then those names need not be in /metrics either.
- Engine build and FP16 gate series (tensorgate_engine_build*, tensorgate_fp16_gate*), which have
  samples only once a GPU server has built an engine; their names must still be declared in /metrics
  (a `# TYPE` line: prometheus_client declares a labelled family before its first sample).
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import promql_parser
import pytest
import tritonclient.grpc as grpcclient
import yaml
from conftest import ROOT, Server
from prom import PROMETHEUS, query, running_prometheus
from tritonclient.utils import InferenceServerException

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "tensorgate.json"
RULES = DEPLOY / "prometheus" / "rules.yml"
GPU_SERIES = ("nv_gpu_", "nv_energy_consumption")  # only a server with a GPU exports them
BUILD_SERIES = ("tensorgate_engine_build", "tensorgate_fp16_gate")  # samples only after an engine build
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count")}
BUILTINS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")
COMPARISONS = {"==", "!=", ">", "<", ">=", "<=", "and", "or", "unless"}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tensorgate_dashboard", DEPLOY / "grafana" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def panels() -> list[dict[str, Any]]:
    """Every panel, rows included (and the panels of a collapsed row)."""
    return [item for panel in dashboard()["panels"] for item in (panel, *panel.get("panels", []))]


def targets() -> list[tuple[str, str]]:
    """(panel title, expression) of every query target."""
    return [(p["title"], t["expr"]) for p in panels() for t in p.get("targets", [])]


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def variable_selectors() -> list[tuple[str, str, str]]:
    """(variable, selector, label) of every label_values variable query."""
    out = []
    for name, variable in variables().items():
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"])
            assert match, f"${name}: not a label_values(selector, label) query: {variable['query']!r}"
            out.append((name, match["selector"], match["label"]))
    return out


def substitute(expr: str) -> str:
    """Grafana's variables replaced: intervals by durations, any other ($model, ${datasource}) by .*"""

    def value(match: re.Match[str]) -> str:
        return BUILTINS.get(match[1] or match[2], ".*")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of everything the dashboard and the rules ask Prometheus."""
    out = [(f"panel {title!r}", substitute(expr)) for title, expr in targets()]
    out += [(f"variable ${name}", substitute(selector)) for name, selector, _ in variable_selectors()]
    out += [
        (f"record {rule['record']}" if "record" in rule else f"alert {rule['alert']}", rule["expr"]) for rule in rules()
    ]
    return out


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def operands(node: promql_parser.Expr) -> list[str]:
    """The parts of an expression that must each return data: an alert's comparison (x > 0.5) or set
    operation (x unless y) is empty while all is well, so its sides are asked on their own."""
    if isinstance(node, promql_parser.ParenExpr):
        return operands(node.expr)
    if isinstance(node, promql_parser.BinaryExpr) and str(node.op) in COMPARISONS:
        return [part for side in (node.lhs, node.rhs) for part in operands(side)]
    if isinstance(node, promql_parser.NumberLiteral):
        return []
    return [str(node)]


# ---- (a) and (b): no server needed ----


def test_committed_dashboard_is_the_generators_output() -> None:
    assert DASHBOARD.read_text() == load_generator().render(), "run: python deploy/grafana/generate.py"


def test_every_expression_parses() -> None:
    assert len(targets()) >= 20
    for where, expr in expressions():
        try:
            names = metric_names(expr)
        except Exception as error:  # promql_parser raises ValueError-like errors
            pytest.fail(f"{where}: {expr!r} does not parse: {error}")
        assert names, f"{where}: {expr!r} names no series"


def test_dashboard_structure() -> None:
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert isinstance(panel.get("options"), dict), f"{panel['title']}: options must be an object"
            assert panel.get("targets"), panel["title"]
    for title, expr in targets():
        assert set(re.findall(r"\[([^\]]*)\]", expr)) <= {"$__rate_interval"}, f"{title}: use $__rate_interval"
        if 'model=~"$model"' in expr:
            assert 'version=~"$version"' in expr and 'pod=~"$pod"' in expr, title
    found = variables()
    assert found["datasource"]["type"] == "datasource" and found["datasource"]["query"] == "prometheus"
    for name in ("model", "version", "pod"):
        assert found[name]["includeAll"] and found[name]["allValue"] == ".*", name
    assert found["pod"]["current"]["value"] == "$__all"


def test_rules_have_severity_and_annotations() -> None:
    alerts = [rule for rule in rules() if "alert" in rule]
    assert len(alerts) >= 7
    for rule in alerts:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


# ---- (c): a real server and a real Prometheus ----


def send_traffic(server: Server) -> None:
    """Requests to identity and add_sub, and one that fails (an input of the wrong shape)."""
    ones = np.ones((2, 16), np.float32)
    pair = [grpcclient.InferInput(name, [2, 16], "FP32") for name in ("INPUT0", "INPUT1")]
    for tensor in pair:
        tensor.set_data_from_numpy(ones)
    for _ in range(20):
        server.client.infer("identity", pair[:1])
        server.client.infer("add_sub", pair)
    wrong = grpcclient.InferInput("INPUT0", [2, 7], "FP32")
    wrong.set_data_from_numpy(np.ones((2, 7), np.float32))
    with pytest.raises(InferenceServerException):
        server.client.infer("add_sub", [wrong, pair[1]])


@pytest.fixture(scope="module")
def traffic(server: Server) -> str:
    """The /metrics exposition after some traffic."""
    send_traffic(server)
    return server.exposition()


def samples(exposition: str) -> set[str]:
    return {m[0] for line in exposition.splitlines() if (m := re.match(r"[a-zA-Z_:][\w:]*", line))}


def declared(exposition: str) -> set[str]:
    """The sample names of every family a ``# TYPE`` line declares, samples or not."""
    types = re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE)
    return {name + suffix for name, kind in types for suffix in SUFFIXES.get(kind, ("",))}


def has_gpu(exposition: str) -> bool:
    return any(line.startswith("nv_gpu_") for line in exposition.splitlines())


def may_be_empty(name: str, exposition: str) -> bool:
    if name.startswith(GPU_SERIES):
        return not has_gpu(exposition)
    return name.startswith(BUILD_SERIES) and name not in samples(exposition)


def test_every_named_series_is_exported(traffic: str) -> None:
    names = samples(traffic) | declared(traffic) | recorded() | {"up"}  # up: Prometheus makes it per target
    missing = {
        name: where
        for where, expr in expressions()
        for name in sorted(metric_names(expr))
        if name not in names and not (name.startswith(GPU_SERIES) and not has_gpu(traffic))
    }
    assert not missing, f"named but not in the server's /metrics: {missing}"


@pytest.fixture(scope="module")
def prometheus(traffic: str, server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if PROMETHEUS is None:
        pytest.skip("no prometheus binary (scripts/install_prometheus.sh installs Debian's)")
    work = tmp_path_factory.mktemp("prometheus")
    log = work / "log"
    with running_prometheus(work, server.metrics_port, [RULES]) as url:
        assert not wait_for_data(url, {'up{job="tensorgate"} == 1': ""}, 60), f"no scrape:\n{log.read_text()}"
        send_traffic(server)  # while scraped, so that rates are above 0
        served = 'sum(rate(nv_inference_request_success{model="identity"}[1m])) > 0'
        # Once a 5m recording rule has data, every rate over the scrapes so far has too.
        recorded = "model_version:tensorgate_request_duration_seconds:p99_5m"
        assert not wait_for_data(url, {served: "", recorded: ""}, 60), f"no rates, no rules:\n{log.read_text()}"
        yield url


def wait_for_data(url: str, exprs: dict[str, str], timeout: float) -> dict[str, str]:
    """Asks every expression until each has returned data; returns those that never did."""
    deadline = time.monotonic() + timeout
    pending = dict(exprs)
    while pending:
        for expr in list(pending):
            try:
                if query(url, expr):
                    del pending[expr]
            except OSError:
                pass  # Prometheus still starting
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return pending


def test_every_expression_returns_data(traffic: str, prometheus: str) -> None:
    asked: dict[str, str] = {}  # expression -> where it comes from
    for where, expr in expressions():
        query(prometheus, expr)  # every one valid: Prometheus answers success (an alert's may be empty)
        if where.startswith("alert "):  # empty while all is well: each side of its comparison instead
            asked.update((part, f"{where}, operand") for part in operands(promql_parser.parse(expr)))
        else:
            asked.setdefault(expr, where)
    asked.update((name, f"recorded series {name}") for name in recorded())
    # Expressions of GPU or build series only may be empty (see the module docstring).
    exempt = {expr for expr in asked if all(may_be_empty(name, traffic) for name in metric_names(expr))}
    empty = wait_for_data(prometheus, {e: w for e, w in asked.items() if e not in exempt}, 30)
    assert not empty, f"no data from Prometheus for: {json.dumps({w: e for e, w in empty.items()}, indent=1)}"
    for name, selector, label in variable_selectors():
        values = {series["metric"].get(label) for series in query(prometheus, substitute(selector))}
        assert name == "pod" or values - {None}, f"${name} would list no {label}"  # pod: optional
    if exempt:
        print(f"no GPU or no engine build: {len(exempt)} expressions not required to return data: {sorted(exempt)}")
