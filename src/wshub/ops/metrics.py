"""Prometheus metrics of a hub, at ``/metrics``, right with one process or several.

Nothing here runs per delivery. The hub counts into plain integers (`HubStats`,
`wshub.buckets.Buckets`: once per publication, per writer batch, per connection),
and `HubMetrics.sync` copies what changed into ``prometheus_client`` objects:

- one process: on every scrape, so a scrape is exact and costs nothing in between;
- several processes (``PROMETHEUS_MULTIPROC_DIR`` set, which ``wshub serve --workers N``
  does by itself): every ``metrics_interval`` seconds in each worker, into
  prometheus_client's multiprocess files, and a scrape of any worker adds them up
  (counters and histograms summed; gauges summed over live workers).

Metric names (all prefixed ``wshub_``):

======================================  =========  =====================================
name                                    type       meaning
======================================  =========  =====================================
connections                             gauge      open WebSocket connections
subscriptions                           gauge      channel memberships of open connections
channels                                gauge      channels with at least one local member
connections_accepted_total              counter    connections accepted
received_frames_total                   counter    WebSocket messages received from clients
sent_frames_total                       counter    frames sent (packed ones counted each)
sent_bytes_total                        counter    bytes of the frames sent
publications_total                      counter    publications fanned out by a process
deliveries_total                        counter    frames enqueued for connections by fan-out
dropped_frames_total{reason}            counter    drop_oldest, drop_newest, slow_consumer
closes_total{code}                      counter    ended connections by close code
auth_failures_total{reason}             counter    missing, invalid, expired, timeout, other
rate_limited_frames_total               counter    client frames refused by the rate limit
broker_state{state}                     gauge      1 for the broker's state (processes, summed)
broker_reconnects_total                 counter    broker connections re-established
broker_probe_failures_total             counter    broker liveness probes that failed
history_evictions_total                 counter    history entries evicted by a byte cap or budget
gap_refills_total                       counter    holes in live delivery refilled from history
gap_refilled_messages_total             counter    publications delivered by those refills
gaps_unrecoverable_total                counter    holes past the history (``gap`` frames sent)
send_queue_depth                        histogram  frames queued per connection, sampled *
publish_enqueue_seconds                 histogram  Hub.publish to enqueued for local members
======================================  =========  =====================================

* at each scrape (one process) or each sync (several): every open connection's queue
  length is observed once, which costs nothing on the send path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections import Counter as Tally
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from wshub.brokers import BrokerState
from wshub.core.buckets import LATENCY_BOUNDS, QUEUE_DEPTH_BOUNDS, Buckets
from wshub.core.errors import CloseCode
from wshub.hub.facade import Hub, HubStats

#: The environment variable that turns prometheus_client's multiprocess mode on.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Close codes shown as themselves; any other code a client sends is counted as "other".
_CODES = frozenset({*CloseCode, *range(1000, 1016)})


def multiprocess_enabled() -> bool:
    """Tell whether ``PROMETHEUS_MULTIPROC_DIR`` names a directory (multiprocess mode)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def close_code_label(code: int) -> str:
    """The ``code`` label of a close code: the code, or ``other`` outside the known ones."""
    return str(code) if code in _CODES else "other"


def auth_reason_label(reason: str) -> str:
    """Map a close reason of an authentication failure to a label of few values.

    Returns:
        ``expired``, ``timeout``, ``missing``, ``invalid`` or ``other``.
    """
    text = reason.lower()
    if "expired" in text:
        return "expired"
    if "timeout" in text:
        return "timeout"
    if "missing" in text or "expected connect" in text:
        return "missing"
    if "invalid" in text or "not valid" in text:
        return "invalid"
    return "other"


class Instruments:
    """The ``prometheus_client`` objects of wshub's metrics.

    Args:
        registry: where to register them; None for the multiprocess files only.
    """

    def __init__(self, registry: CollectorRegistry | None) -> None:
        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=registry, multiprocess_mode="livesum")

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self.connections = gauge("wshub_connections", "Open WebSocket connections.")
        self.subscriptions = gauge("wshub_subscriptions", "Channel memberships of connections.")
        self.channels = gauge("wshub_channels", "Channels with at least one local member.")
        self.broker_state = gauge("wshub_broker_state", "1 for the broker's state.", ["state"])
        self.accepted = counter("wshub_connections_accepted", "Connections accepted.")
        self.received = counter("wshub_received_frames", "Messages received from clients.")
        self.sent = counter("wshub_sent_frames", "Frames sent to clients.")
        self.sent_bytes = counter("wshub_sent_bytes", "Bytes of the frames sent to clients.")
        self.publications = counter("wshub_publications", "Publications fanned out.")
        self.deliveries = counter("wshub_deliveries", "Frames enqueued for connections.")
        self.dropped = counter("wshub_dropped_frames", "Frames dropped, by reason.", ["reason"])
        self.closes = counter("wshub_closes", "Connections ended, by close code.", ["code"])
        self.auth_failures = counter(
            "wshub_auth_failures", "Authentication failures, by reason.", ["reason"]
        )
        self.rate_limited = counter("wshub_rate_limited_frames", "Frames refused: rate limit.")
        self.reconnects = counter("wshub_broker_reconnects", "Broker connections re-established.")
        self.probe_failures = counter("wshub_broker_probe_failures", "Broker probes failed.")
        self.history_evictions = counter(
            "wshub_history_evictions", "History entries evicted by history_max_bytes/memory."
        )
        self.gap_refills = counter("wshub_gap_refills", "Live-delivery holes refilled.")
        self.gap_refilled = counter(
            "wshub_gap_refilled_messages", "Publications delivered by gap refills."
        )
        self.gaps_unrecoverable = counter(
            "wshub_gaps_unrecoverable", "Holes the history no longer covered (gap frames)."
        )
        self.queue_depth = Histogram(
            "wshub_send_queue_depth",
            "Frames queued per connection, sampled at each scrape or sync.",
            buckets=QUEUE_DEPTH_BOUNDS,
            registry=registry,
        )
        self.latency = Histogram(
            "wshub_publish_enqueue_seconds",
            "Seconds from Hub.publish to the publication enqueued for local members.",
            buckets=LATENCY_BOUNDS,
            registry=registry,
        )


_shared: Instruments | None = None


def shared_instruments() -> Instruments:
    """The process's one set of multiprocess instruments (two would overwrite each other)."""
    global _shared
    if _shared is None:
        _shared = Instruments(None)
    return _shared


Reading = tuple[MetricWrapperBase, tuple[str, ...], float]


class HubMetrics:
    """Copies a hub's counters into Prometheus metrics and renders them.

    Several hubs may feed the same instruments: each adds only its own changes.

    Args:
        hub: the hub to watch.
        multiprocess: use the multiprocess files; by default when `MULTIPROC_ENV` is set.
        registry: single process only: the registry to put wshub's metrics in; by
            default a new one that also exposes ``prometheus_client.REGISTRY`` (the
            process metrics and your own).
    """

    def __init__(
        self,
        hub: Hub,
        *,
        multiprocess: bool | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.hub = hub
        self.multiprocess = multiprocess_enabled() if multiprocess is None else multiprocess
        if self.multiprocess:
            self.instruments = shared_instruments()
            self.registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        else:
            if registry is None:
                registry = CollectorRegistry(auto_describe=False)
                registry.register(_Forward(REGISTRY))
            self.registry = registry
            self.instruments = Instruments(registry)
        self._last: dict[tuple[int, tuple[str, ...]], float] = {}
        self._last_buckets: dict[int, tuple[list[int], float]] = {}
        self._depths = Buckets(QUEUE_DEPTH_BOUNDS)  # every sample so far, cumulative

    def sync(self) -> None:
        """Add what changed in the hub's counters since the last call to the instruments."""
        last = self._last
        for metric, labels, value in self.readings():
            key = (id(metric), labels)
            delta = value - last.get(key, 0.0)
            if delta:
                last[key] = value
                (metric.labels(*labels) if labels else metric).inc(delta)  # type: ignore[attr-defined]
        self._sync_buckets(self.instruments.queue_depth, self._depths)
        self._sync_buckets(self.instruments.latency, self.hub.stats.publish_latency)

    def readings(self) -> Iterator[Reading]:
        """Yield ``(metric, label values, current value)`` for every counter and gauge.

        Reading also samples every open connection's queue length (see `sync`).
        """
        hub, ins, stats = self.hub, self.instruments, self.hub.stats
        subscriptions, drops = self._scan_connections(stats)
        yield ins.connections, (), hub.connection_count
        yield ins.subscriptions, (), subscriptions
        yield ins.channels, (), hub.channel_count
        for state in BrokerState:
            yield ins.broker_state, (state.value,), float(hub.broker_state is state)
        yield from (
            (ins.accepted, (), stats.connections),
            (ins.received, (), stats.frames_received),
            (ins.sent, (), stats.frames_sent),
            (ins.sent_bytes, (), stats.bytes_sent),
            (ins.publications, (), stats.publications),
            (ins.deliveries, (), stats.deliveries),
            (ins.rate_limited, (), stats.rate_limited),
            (ins.reconnects, (), getattr(hub.broker, "reconnects", 0)),
            (ins.probe_failures, (), getattr(hub.broker, "probe_failures", 0)),
            (ins.history_evictions, (), getattr(hub.broker, "history_evictions", 0)),
            (ins.gap_refills, (), stats.gap_refills),
            (ins.gap_refilled, (), stats.gap_refilled),
            (ins.gaps_unrecoverable, (), stats.gaps_unrecoverable),
        )
        yield from _labelled(ins.dropped, drops)
        yield from _labelled(ins.closes, _relabel(stats.closes, close_code_label))
        yield from _labelled(ins.auth_failures, _relabel(stats.auth_reasons, auth_reason_label))

    def _scan_connections(self, stats: HubStats) -> tuple[int, Tally[str]]:
        """Count memberships and drops of open connections (closed ones are in stats).

        Also samples each open connection's queue length for the depth histogram.
        """
        drops: Tally[str] = Tally(stats.drops)
        drops["slow_consumer"] += stats.overflows
        subscriptions = 0
        depths = self._depths
        for conn in self.hub.connections():
            subscriptions += len(conn.channels)
            depths.observe(len(conn.queue))
            if conn.queue.dropped:
                drops[conn.queue.policy.value] += conn.queue.dropped
        return subscriptions, drops

    def _sync_buckets(self, histogram: Histogram, buckets: Buckets) -> None:
        counts, total = self._last_buckets.get(id(histogram), ([0] * len(buckets.counts), 0.0))
        if buckets.sum == total and buckets.counts == counts:
            return
        # prometheus_client has no public way to add n observations to a bucket: its
        # Histogram keeps one value per bucket (not cumulative) and one for the sum.
        for index, (now, before) in enumerate(zip(buckets.counts, counts, strict=True)):
            if now != before:
                histogram._buckets[index].inc(now - before)
        histogram._sum.inc(buckets.sum - total)
        self._last_buckets[id(histogram)] = (list(buckets.counts), buckets.sum)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """Sync, then render every metric in the format the ``Accept`` header asks for.

        Returns:
            The body and its content type (Prometheus text, or OpenMetrics if asked).
        """
        self.sync()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    async def run(self, interval: float) -> None:
        """Sync every ``interval`` seconds until cancelled (multiprocess mode)."""
        while True:
            await asyncio.sleep(interval)
            self.sync()


class _Forward(Collector):
    """Exposes another registry's metrics (the default one) through this registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Any]:
        return self._registry.collect()


def _relabel(counts: Tally[Any], label: Any) -> Tally[str]:
    relabelled: Tally[str] = Tally()
    for key, count in counts.items():
        relabelled[label(key)] += count
    return relabelled


def _labelled(metric: MetricWrapperBase, counts: Tally[str]) -> Iterator[Reading]:
    for label, count in counts.items():
        yield metric, (label,), count


def add_metrics(app: FastAPI, hub: Hub, path: str = "/metrics") -> HubMetrics:
    """Serve ``hub``'s Prometheus metrics at ``GET path``.

    In multiprocess mode this also runs, for as long as the app runs, a task that
    syncs the hub's counters into the multiprocess files every ``metrics_interval``
    seconds (and once more at shutdown), so that a scrape of any worker counts them.

    Args:
        app: the FastAPI app.
        hub: the hub; the app must run ``hub.lifespan``.
        path: the path of the metrics.

    Returns:
        The `HubMetrics`, for tests and custom exposition.
    """
    metrics = HubMetrics(hub)

    async def scrape(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @contextlib.asynccontextmanager
    async def syncing(_: object) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(
            metrics.run(hub.settings.metrics_interval), name="wshub-metrics"
        )
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            metrics.sync()

    router = APIRouter(lifespan=syncing if metrics.multiprocess else None)
    router.add_api_route(path, scrape, methods=["GET"], include_in_schema=False)
    app.include_router(router)
    return metrics


@contextlib.contextmanager
def multiprocess_directory() -> Iterator[str | None]:
    """Set up ``PROMETHEUS_MULTIPROC_DIR`` for worker processes started inside the block.

    When it is not set already, a temporary directory is made, named in the
    environment (inherited by spawned workers) and removed after the block. A
    directory the user set is used as it is: empty it before each start, as
    prometheus_client requires (stale files from a previous run would add up).

    Yields:
        The directory.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        yield given
        return
    path = tempfile.mkdtemp(prefix="wshub-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def worker_exited(pid: int | None) -> None:
    """Drop an exited worker's live gauges from the multiprocess files (counters stay).

    Args:
        pid: the worker's process id; None or without multiprocess mode, nothing.
    """
    if pid is not None and multiprocess_enabled():
        prometheus_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
