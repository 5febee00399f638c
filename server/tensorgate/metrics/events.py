"""Counters of events off the request path (engine builds, the FP16 gate), recorded where they happen."""

from __future__ import annotations

import prometheus_client
from prometheus_client import Counter, Histogram

# A `_created` gauge beside each counter and histogram is OpenMetrics' idea; in the text format it is one
# more series per child that no Triton dashboard reads (prometheus_client checks this at each scrape).
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

ENGINE_BUILDS = Counter(
    "tensorgate_engine_builds",
    "Background engine builds that ended, by outcome (built: the version moved to it; failed; dropped: "
    "the model was reloaded or unloaded meanwhile)",
    ["model", "version", "engine", "outcome"],
)
ENGINE_BUILD_SECONDS = Histogram(
    "tensorgate_engine_build_duration_seconds",
    "Time a background engine build took, FP16 conversion and accuracy gate included",
    ["engine", "outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
FP16_GATE = Counter(
    "tensorgate_fp16_gate",
    "FP16 conversions judged by the accuracy gate (refused: the engine is built in FP32)",
    ["model", "version", "outcome"],
)
