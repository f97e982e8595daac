"""HubMetrics: labels of few values, and syncing a hub's counters into Prometheus."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from wshub import Hub
from wshub.ops.metrics import HubMetrics, auth_reason_label, close_code_label


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("token expired", "expired"),
        ("authentication timeout", "timeout"),
        ("missing token", "missing"),
        ("expected connect", "missing"),
        ("invalid token: DecodeError", "invalid"),
        ("token not valid yet", "invalid"),
        ("banned by a hook", "other"),
    ],
)
def test_auth_reasons_map_to_few_labels(reason: str, label: str) -> None:
    """Free-text close reasons become one of five label values."""
    assert auth_reason_label(reason) == label


@pytest.mark.parametrize(("code", "label"), [(1000, "1000"), (4008, "4008"), (1006, "1006")])
def test_known_close_codes_are_their_own_label(code: int, label: str) -> None:
    """wshub's codes and the RFC range 1000-1015 are labelled as themselves."""
    assert close_code_label(code) == label


@pytest.mark.parametrize("code", [3999, 4444, 2000])
def test_other_close_codes_share_one_label(code: int) -> None:
    """Codes a client may choose freely don't create new series."""
    assert close_code_label(code) == "other"


def test_sync_adds_only_what_changed() -> None:
    """Two syncs without change leave the metrics; a change is added once."""
    hub = Hub()
    registry = CollectorRegistry()
    metrics = HubMetrics(hub, multiprocess=False, registry=registry)
    hub.stats.publications = 3
    hub.stats.closes[1000] += 2
    hub.stats.auth_failed("token expired")
    hub.stats.publish_latency.observe(0.002)
    metrics.sync()
    metrics.sync()
    assert registry.get_sample_value("wshub_publications_total") == 3
    assert registry.get_sample_value("wshub_closes_total", {"code": "1000"}) == 2
    assert registry.get_sample_value("wshub_auth_failures_total", {"reason": "expired"}) == 1
    assert registry.get_sample_value("wshub_publish_enqueue_seconds_count") == 1
    assert registry.get_sample_value("wshub_publish_enqueue_seconds_bucket", {"le": "0.0025"}) == 1
    hub.stats.publications = 5
    metrics.sync()
    assert registry.get_sample_value("wshub_publications_total") == 5
    assert registry.get_sample_value("wshub_broker_state", {"state": "connecting"}) == 1


def test_render_includes_the_default_registry() -> None:
    """Without a registry given, process metrics of prometheus_client's default one show too."""
    body, content_type = HubMetrics(Hub(), multiprocess=False).render(None)
    assert content_type.startswith("text/plain")
    assert b"wshub_connections 0.0" in body
    assert b"process_cpu_seconds_total" in body or b"python_info" in body
