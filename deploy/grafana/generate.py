"""Writes deploy/grafana/tensorgate.json, the tensorgate dashboard, with grafana-foundation-sdk.

Run ``python deploy/grafana/generate.py`` after editing this file (``--check`` only compares, and exits
1 when the committed JSON is stale); tests/test_dashboard.py checks that the two agree.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, common, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement, TooltipDisplayMode, VisibilityMode
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).with_name("tensorgate.json")
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
# Per-model series carry model and version; any series may carry pod (a Kubernetes scrape adds it).
# pod's All is ".*", which also matches a series without the label, so a plain scrape still shows.
MODEL = 'model=~"$model", version=~"$version", pod=~"$pod"'
HOST = 'pod=~"$pod"'
BY = "model, version"
MV = "{{model}} v{{version}}"

LAST = common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)

Panel = timeseries.Panel | heatmap.Panel | table.Panel | stat.Panel | bargauge.Panel


def query(expr: str, legend: str = "__auto", *, fmt: PromQueryFormat | None = None) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE)
    if fmt == PromQueryFormat.TABLE:
        return q.instant().format(fmt)
    q = q.range()
    return q.format(fmt) if fmt is not None else q


def rate(series: str, selector: str = MODEL, fn: str = "rate") -> str:
    return f"{fn}({series}{{{selector}}}[{RATE}])"


def by_model(expr: str, agg: str = "sum", by: str = BY) -> str:
    return f"{agg} by ({by}) ({expr})"


def quantile(q: float, histogram: str, by: str = BY, selector: str = MODEL) -> str:
    return f"histogram_quantile({q}, {by_model(rate(histogram + '_bucket', selector), by=by + ', le')})"


def per_request_s(counter: str) -> str:
    """Triton's way: a cumulative microsecond counter over the successful requests, in seconds."""
    return f"{by_model(rate(counter))} / {by_model(rate('nv_inference_request_success'))} / 1e6"


def place(panel: Panel, title: str, text: str, targets: list[prometheus.Dataquery], w: int = 12, h: int = 8) -> Panel:
    panel.title(title).description(text).datasource(DATASOURCE).span(w).height(h)
    for number, target in enumerate(targets):
        panel.with_target(target.ref_id(chr(ord("A") + number)))
    return panel


def graph(title: str, unit: str, text: str, *targets: prometheus.Dataquery, w: int = 12, h: int = 8) -> Panel:
    panel = (
        timeseries.Panel()
        .unit(unit)
        .fill_opacity(10)
        .show_points(VisibilityMode.NEVER)
        .span_nulls(True)
        .legend(
            common.VizLegendOptions()
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(common.VizTooltipOptions().mode(TooltipDisplayMode.MULTI))
    )
    if unit == "percentunit":
        panel.min(0).max(1)
    return place(panel, title, text, list(targets), w, h)


def requests() -> list[Panel]:
    return [
        graph(
            "Request rate",
            "reqps",
            "Successful requests, inferences (a batch of n counts n) and model executions per second.",
            query(by_model(rate("nv_inference_request_success")), f"{MV} success"),
            query(by_model(rate("nv_inference_count")), f"{MV} inferences"),
            query(by_model(rate("nv_inference_exec_count")), f"{MV} executions"),
        ),
        graph(
            "Failures by reason",
            "reqps",
            "Failed requests per second by Triton's reason (REJECTED: queue full or queue timeout; CANCELED: "
            "the client gave up; BACKEND: the engine failed; OTHER), and requests failed by a server bug.",
            query(by_model(rate("nv_inference_request_failure"), by=f"{BY}, reason"), f"{MV} {{{{reason}}}}"),
            query(f"sum({rate('tensorgate_internal_errors_total', HOST)})", "internal errors"),
        ),
    ]


def latency() -> list[Panel]:
    compute = [
        query(per_request_s(f"nv_inference_compute_{part}_duration_us"), f"compute {part} {MV}")
        for part in ("input", "infer", "output")
    ]
    return [
        graph(
            "Request latency p50 / p90 / p99",
            "s",
            "Time in the server (queue + compute) of successful requests, from tensorgate_request_duration_seconds.",
            *(query(quantile(q, "tensorgate_request_duration_seconds"), f"p{round(q * 100)} {MV}")
              for q in (0.5, 0.9, 0.99)),
        ),
        graph(
            "Queue vs compute time (p99)",
            "s",
            "99th percentile of the time requests wait in the queue, and of their compute time (input, infer, output).",
            query(quantile(0.99, "tensorgate_queue_duration_seconds"), f"queue {MV}"),
            query(quantile(0.99, "tensorgate_compute_duration_seconds"), f"compute {MV}"),
        ),
        graph(
            "Queue vs compute time per request (average, Triton counters)",
            "s",
            "Triton's cumulative nv_inference_*_duration_us counters divided by the successful requests.",
            query(per_request_s("nv_inference_queue_duration_us"), f"queue {MV}"),
            *compute,
        ),
        place(
            heatmap.Panel().calculate(False).show_tooltip(),
            "Batch size distribution",
            "Model executions by the batch size the scheduler formed (tensorgate_batch_size).",
            [query(by_model(rate("tensorgate_batch_size_bucket", fn="increase"), by="le"), "{{le}}",
                   fmt=PromQueryFormat.HEATMAP)],
        ),
    ]  # fmt: skip


def queueing() -> list[Panel]:
    return [
        graph(
            "Pending requests",
            "short",
            "Requests waiting in the queue for an execution (nv_inference_pending_request_count, as Triton's).",
            query(by_model(f"nv_inference_pending_request_count{{{MODEL}}}"), MV),
            w=8,
        ),
        graph(
            "Requests in flight",
            "short",
            "Requests each version holds: queued, running or being decoded (tensorgate_requests_in_flight).",
            query(by_model(f"tensorgate_requests_in_flight{{{MODEL}}}"), MV),
            w=8,
        ),
        graph(
            "Event-loop saturation",
            "percentunit",
            "CPU seconds per second of the thread that takes every request off gRPC: 1 = saturated, new calls "
            "then wait inside gRPC (alert above 0.9).",
            query(by_model(rate("tensorgate_event_loop_cpu_seconds_total", HOST), "max", "instance, pod")),
            w=8,
        ),
    ]


def models() -> list[Panel]:
    hide = {"excludeByName": {"Time": True, "Value": True, "__name__": True}}
    return [
        place(
            table.Panel()
            .show_header(True)
            .with_transformation(dm.DataTransformerConfig(id_val="organize", options=hide)),
            "Engine per model",
            "The engine, precision and device each served model version runs on (tensorgate_model_engine_info).",
            [query(f"tensorgate_model_engine_info{{{MODEL}}}", fmt=PromQueryFormat.TABLE)],
        ),
        place(
            bargauge.Panel().unit("s").reduce_options(LAST),
            "Model load duration",
            "Time each version took to load (engine, instances, warmup), and Triton's nv_model_load_duration_secs.",
            [
                query(by_model(f"tensorgate_model_load_duration_seconds{{{MODEL}}}", "max"), MV),
                query(by_model(f"nv_model_load_duration_secs{{{MODEL}}}", "max"), f"{MV} (Triton)"),
            ],
        ),
        place(
            stat.Panel().reduce_options(LAST),
            "Server ready",
            "tensorgate_server_ready: 1 when every server reports ready.",
            [query(f"min(tensorgate_server_ready{{{HOST}}})", "ready")],
            w=6,
            h=6,
        ),
        graph(
            "Engine builds and FP16 gate (GPU only)",
            "short",
            "Engine builds by outcome and FP16 gate decisions per interval, p90 build time; only GPU servers build.",
            query(by_model(rate("tensorgate_engine_builds_total", fn="increase"), by=f"{BY}, engine, outcome"),
                  "build {{model}} {{engine}} {{outcome}}"),
            query(by_model(rate("tensorgate_fp16_gate_total", fn="increase"), by=f"{BY}, outcome"),
                  "fp16 {{model}} {{outcome}}"),
            query(quantile(0.9, "tensorgate_engine_build_duration_seconds", "engine, outcome", HOST),
                  "p90 build {{engine}} {{outcome}}"),
            w=18,
            h=6,
        ),
    ]  # fmt: skip


def host() -> list[Panel]:
    def gauge(name: str) -> str:
        return f"{name}{{{HOST}}}"

    return [
        graph("GPU utilization", "percentunit", "nv_gpu_utilization per GPU.",
              query(gauge("nv_gpu_utilization"), "{{gpu_uuid}}"), w=8),
        graph("GPU memory", "bytes", "Used and total memory per GPU.",
              query(gauge("nv_gpu_memory_used_bytes"), "used {{gpu_uuid}}"),
              query(gauge("nv_gpu_memory_total_bytes"), "total {{gpu_uuid}}"), w=8),
        graph("GPU power", "watt", "Power draw and limit per GPU, and the average draw from the energy counter.",
              query(gauge("nv_gpu_power_usage"), "usage {{gpu_uuid}}"),
              query(gauge("nv_gpu_power_limit"), "limit {{gpu_uuid}}"),
              query(rate("nv_energy_consumption", HOST), "from energy {{gpu_uuid}}"), w=8),
        graph("CPU utilization", "percentunit", "Host CPU utilization over every core (nv_cpu_utilization).",
              query(gauge("nv_cpu_utilization"), "{{instance}}")),
        graph("CPU memory", "bytes", "Host memory used and total.",
              query(gauge("nv_cpu_memory_used_bytes"), "used {{instance}}"),
              query(gauge("nv_cpu_memory_total_bytes"), "total {{instance}}")),
    ]  # fmt: skip


ROWS: tuple[tuple[str, Callable[[], list[Panel]]], ...] = (
    ("Requests", requests),
    ("Latency", latency),
    ("Queue and server", queueing),
    ("Models", models),
    ("GPU and CPU", host),
)


def label_variable(name: str, query: str, description: str) -> db.QueryVariable:
    """A multi-value label_values variable whose All is ".*" (matches every value, and no label)."""
    return (
        db.QueryVariable(name)
        .label(name)
        .description(description)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(selected=True, text="All", value="$__all"))
    )


def variables() -> list[db.DatasourceVariable | db.QueryVariable]:
    return [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        label_variable("model", "label_values(nv_inference_request_success, model)", "Model name."),
        label_variable(
            "version", 'label_values(nv_inference_request_success{model=~"$model"}, version)', "Model version."
        ),
        label_variable(
            "pod",
            'label_values(nv_inference_request_success{model=~"$model"}, pod)',
            "Optional: a plain scrape has no pod label; All (.*) matches series without it.",
        ),
    ]


def build() -> dict[str, object]:
    dashboard = (
        db.Dashboard("tensorgate")
        .uid("tensorgate")
        .description("tensorgate inference server: requests, latency, queueing, batching, models, GPU and CPU.")
        .tags(["tensorgate", "triton", "inference"])
        .refresh("30s")
        .time("now-1h", "now")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
    )
    for variable in variables():
        dashboard.with_variable(variable)
    for title, panels in ROWS:
        dashboard.with_row(db.Row(title))
        for panel in panels():
            dashboard.with_panel(panel)
    model = dashboard.build()
    for number, item in enumerate(model.panels or [], start=1):
        item.id_val = number
    return json.loads(json.dumps(model, cls=JSONEncoder))  # type: ignore[no-any-return]


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python {__file__}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
