"""``/metrics``: the run's live figures in Prometheus' text format (prometheus-client).

A collector reads one stats snapshot per scrape and registers in a registry of its own, so
nothing leaks into (or from) the process-wide default registry another library may use.
"""
from __future__ import annotations

from typing import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

PREFIX = "nystra"
Snapshot = Callable[[], Mapping]

# (stats key, metric name, help); counters get Prometheus' _total suffix from the client.
COUNTERS = (
    ("frames_in", "frames_in", "frames that arrived from the input"),
    ("frames_out", "frames_out", "restored frames encoded"),
    ("reconnects", "reconnects", "times a live input came back after a stall or loss"),
    ("stalls", "stalls", "times a live input sent nothing for --stall-timeout"),
    ("decode_errors", "decode_errors", "input packets that did not decode"),
)
GAUGES = (
    ("fps", "fps", "restored frames per second over the last few seconds"),
    ("viewers", "viewers", "browser viewers of the MJPEG stream now"),
    ("elapsed_s", "elapsed_seconds", "seconds since the run started"),
)
QUANTILES = (("latency_ms_p50", "0.5"), ("latency_ms_p95", "0.95"), ("latency_ms_p99", "0.99"))


class RunCollector:
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        stats = self._snapshot()
        for key, name, text in COUNTERS:
            if stats.get(key) is not None:
                yield CounterMetricFamily(f"{PREFIX}_{name}", text, value=stats[key])
        dropped = CounterMetricFamily(f"{PREFIX}_frames_dropped", "live frames dropped, by reason",
                                      labels=["reason"])
        for reason, count in sorted((stats.get("drop_reasons") or {}).items()):
            dropped.add_metric([reason], count)
        yield dropped
        for key, name, text in GAUGES:
            if stats.get(key) is not None:
                yield GaugeMetricFamily(f"{PREFIX}_{name}", text, value=stats[key])
        latency = GaugeMetricFamily(f"{PREFIX}_latency_seconds", "arrival to encoded, over the last frames",
                                    labels=["quantile"])
        for key, quantile in QUANTILES:
            if stats.get(key) is not None:
                latency.add_metric([quantile], stats[key] / 1000)
        yield latency


class Metrics:
    """The registry ``/metrics`` renders."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RunCollector(snapshot))

    def render(self) -> bytes:
        return generate_latest(self.registry)
