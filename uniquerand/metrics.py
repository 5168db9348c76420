"""Prometheus metrics: what every request and store event adds up to, and the stores' levels read at scrape time.

Under gunicorn every worker is a process of its own: a registry per worker would show each scrape one
worker's share. So the counters and histograms run in prometheus-client's multiprocess mode whenever
PROMETHEUS_MULTIPROC_DIR is set (gunicorn.conf.py sets it in the master, before any worker imports
prometheus-client, and cleans it): each worker writes its values to files of that folder, and `/metrics`, in
whichever worker answers, adds them up. Without it (the `flask` commands, the test client) one process holds
them all. No metric carries a number served: labels are stage, type, outcome, client, shard and event names.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from uniquerand import logs
from uniquerand.numbers import KINDS
from uniquerand.stages import Stage
from uniquerand.storage.contract import StoreError

# From a /v5 number served from memory (well under a millisecond) to a request that waited out a store's
# lock (LOCK_TIMEOUT, 5 s by default).
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The stores' levels are read at most this often per worker: a scrape must not cost serving; /v1's and
# /v2's stats read their whole file.
LEVELS_TTL = 5.0
Observe = Callable[[str, str, str, float, int], None]


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    """The app's metrics. Built by `create_app`; `observer(stage)` is what a stage's requests report to."""

    def __init__(self, stages: tuple[Stage, ...]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.stages = stages
        # In multiprocess mode the values live in files and this registry is only used without it.
        self.registry = CollectorRegistry(auto_describe=True)
        self.numbers = Counter(
            "uniquerand_numbers_issued",
            "Numbers handed out, by stage and type.",
            ["stage", "type", "client"],
            registry=self.registry,
        )
        self.requests = Counter(
            "uniquerand_requests",
            "Requests to /vN/random, by stage, type and outcome (ok, or the error's code).",
            ["stage", "type", "outcome", "client"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "uniquerand_request_duration_seconds",
            "Time to answer a /vN/random request, by stage.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.events = Counter(
            "uniquerand_store_events",
            "Store events by stage and name: lease_taken (/v5), refill_finished and refill_failed (/v4), ...",
            ["stage", "event"],
            registry=self.registry,
        )
        self._levels = _Levels(stages)
        if not multiprocess():
            self.registry.register(self._levels)
        logs.on_event(self._count_event)

    def observer(self, stage: str) -> Observe:
        """`observe(type, outcome, client, seconds, numbers)` for one stage's requests. The labelled children
        are kept per label set: looking them up is most of what a metric costs."""
        numbers, requests, latency = {}, {}, self.latency.labels(stage)

        def observe(kind: str, outcome: str, client: str, seconds: float, issued: int) -> None:
            key = (kind, outcome, client)
            counter = requests.get(key)
            if counter is None:
                counter = requests[key] = self.requests.labels(stage, kind, outcome, client)
            counter.inc()
            latency.observe(seconds)
            if issued:
                counted = numbers.get(key)
                if counted is None:
                    counted = numbers[key] = self.numbers.labels(stage, kind, client)
                counted.inc(issued)

        return observe

    def exposition(self) -> tuple[bytes, str]:
        """The text a scrape gets, and its content type: every worker's values added up (multiprocess)."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        if not multiprocess():
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(self._levels)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def _count_event(self, name: str, fields: dict[str, object]) -> None:
        stage = fields.get("stage")
        if isinstance(stage, str):
            self.events.labels(stage, name).inc()


class _Levels:
    """A collector of the stores' levels, read from their stats when scraped (at most every LEVELS_TTL)."""

    def __init__(self, stages: tuple[Stage, ...]) -> None:
        self.stages = stages
        self._lock = threading.Lock()
        self._read_at = -LEVELS_TTL
        self._stats: dict[str, dict | None] = {}
        self._spaces: dict[str, list] = {}

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        stats, spaces = self._read()
        remaining = GaugeMetricFamily(
            "uniquerand_numbers_remaining", "Numbers of the space not handed out yet.", labels=["stage", "type"]
        )
        size = GaugeMetricFamily("uniquerand_space_size", "Numbers in the space.", labels=["stage", "type"])
        up = GaugeMetricFamily(
            "uniquerand_store_up", "1 if the stage's store answered its stats at the last read.", labels=["stage"]
        )
        pool = GaugeMetricFamily(
            "uniquerand_v4_pool_available", "Numbers waiting in a /v4 pool.", labels=["stage", "shard"]
        )
        refilling = GaugeMetricFamily(
            "uniquerand_v4_pool_refilling", "1 while a /v4 pool is being refilled.", labels=["stage", "shard"]
        )
        space_labels = ["stage", "space", "type"]
        named_issued = GaugeMetricFamily(
            "uniquerand_named_space_issued",
            "Numbers taken from a named space: served, or leased to a worker that will serve them.",
            labels=space_labels,
        )
        named_remaining = GaugeMetricFamily(
            "uniquerand_named_space_remaining", "Numbers of a named space not taken yet.", labels=space_labels
        )
        named_size = GaugeMetricFamily("uniquerand_named_space_size", "Numbers in a named space.", labels=space_labels)
        for stage, levels in spaces.items():
            for name, kind, numbers, counter in levels:
                named_issued.add_metric([stage, name, kind], counter)
                named_remaining.add_metric([stage, name, kind], numbers - counter)
                named_size.add_metric([stage, name, kind], numbers)
        for name, types in stats.items():
            up.add_metric([name], 0 if types is None else 1)
            for kind in KINDS if types else ():
                remaining.add_metric([name, kind], types[kind]["remaining"])
                size.add_metric([name, kind], types[kind]["space_size"])
                for shard, level in types[kind].get("shards", {}).items():
                    pool.add_metric([name, shard], level["available"])
                    refilling.add_metric([name, shard], 1 if level["refilling"] else 0)
        yield from (remaining, size, up, pool, refilling, named_issued, named_remaining, named_size)

    def describe(self) -> list:
        return []

    def _read(self) -> tuple[dict[str, dict | None], dict[str, list]]:
        with self._lock:
            if time.monotonic() - self._read_at >= LEVELS_TTL:
                self._stats = {stage.name: _stats_of(stage) for stage in self.stages}
                self._spaces = {s.name: _levels_of(s) for s in self.stages if s.named_spaces is not None}
                self._read_at = time.monotonic()
            return self._stats, self._spaces


def _levels_of(stage: Stage) -> list:
    """The named spaces' levels; none while the store cannot answer (uniquerand_store_up says so)."""
    try:
        return stage.named_spaces.levels()
    except StoreError:
        return []


def _stats_of(stage: Stage) -> dict | None:
    try:
        return stage.store.stats()
    except StoreError:
        return None
