"""The benchmark tool runs end to end on small numbers (figures come from `make bench`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

WSHUB = str(Path(sys.executable).with_name("wshub"))


def bench(*args: str) -> dict[str, object]:
    """Run `wshub bench ... --json` and return its document."""
    done = subprocess.run(
        [WSHUB, "bench", *args, "--json"], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr
    document: dict[str, object] = json.loads(done.stdout)
    return document


@pytest.mark.parametrize("target", ["wshub", "wshub-chat", "seed", "socketio", "websockets"])
def test_fanout_delivers_everything_to_every_subscriber(target: str) -> None:
    """A short fanout run against each target counts every delivery and loses none."""
    doc = bench(
        "run",
        "fanout",
        "--target",
        target,
        "--subscribers",
        "20",
        "--duration",
        "0.5",
        "--count",
        "200",
    )
    (result,) = doc["results"]  # type: ignore[misc]
    assert result["deliveries"] == result["messages"] * 20 > 0
    assert result["lost"] == 0 and result["duplicated"] == 0
    assert result["p99_ms"] > 0 and result["server_cpu"] > 0


def test_slow_client_does_not_hold_the_others_back() -> None:
    """With one client that never reads, the others still get every message."""
    doc = bench("run", "slow", "--subscribers", "10", "--duration", "0.5", "--count", "200")
    (result,) = doc["results"]  # type: ignore[misc]
    assert result["lost"] == 0 and result["deliveries"] == result["messages"] * 10


def test_idle_reports_memory_per_connection() -> None:
    """The idle scenario reports a positive memory cost per connection."""
    doc = bench("run", "idle", "--subscribers", "50")
    (result,) = doc["results"]  # type: ignore[misc]
    assert result["rss_per_connection_kb"] > 0


def test_compare_prints_ratios_against_the_baselines() -> None:
    """compare runs targets side by side and reports ratios to the baselines present."""
    doc = bench(
        "compare",
        "--targets",
        "wshub,seed",
        "--subscribers",
        "10",
        "--duration",
        "0.3",
        "--count",
        "50",
        "--runs",
        "1",
    )
    assert [r["target"] for r in doc["results"]] == ["wshub", "seed"]  # type: ignore[index, union-attr]
    assert doc["ratio to seed"]["seed"] == 1.0  # type: ignore[index]
