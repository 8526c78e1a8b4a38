"""Prometheus metrics of one serving process (`GET /metrics`): requests, generations, billing, queue, model caches.

Counters and histograms are updated where the event happens (the request log, the ledger write); gauges and the
model caches' counters are read from the live objects at scrape time, so nothing has to remember to update them.
One registry per app (never the process-wide default), so tests and several apps in one process do not mix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("easel_http_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("easel_http_request_seconds", "HTTP request duration", ["route", "method"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.generation = Histogram("easel_generation_seconds", "generation time (denoise + decode) per execution",
                                    ["model", "mode", "status"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.billed = Counter("easel_billed_seconds", "device seconds written to the ledger", ["model", "mode"],
                              registry=self.registry)
        self._live: list[Callable[[], Iterator]] = []
        self.registry.register(_Live(self._live))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def observe_execution(self, model: str, mode: str, status: str, generate_s: float, billed_s: float) -> None:
        """One ledger record written by this process (sync request or queued task)."""
        self.generation.labels(model, mode, status).observe(generate_s)
        self.billed.labels(model, mode).inc(billed_s)

    def add_live(self, source: Callable[[], Iterator]) -> None:
        """A function yielding metric families from live state, called at every scrape."""
        self._live.append(source)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Live:
    def __init__(self, sources: list[Callable[[], Iterator]]):
        self.sources = sources

    def describe(self):
        return []  # families are only known at scrape time

    def collect(self):
        for source in self.sources:
            yield from source()


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def counter(name: str, doc: str, values: dict[tuple[str, ...], float], label_names: list[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=label_names)
    for labels, value in values.items():
        family.add_metric(list(labels), value)
    return family
