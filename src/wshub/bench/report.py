"""Benchmark output: a rich table for people, JSON for scripts, ratios for ``compare``."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from wshub.bench.runner import Result

_COLUMNS = (
    ("target", "target", "{}"),
    ("scenario", "scenario", "{}"),
    ("subscribers", "subs", "{:,}"),
    ("deliveries_per_s", "deliveries/s", "{:,.0f}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p95_ms", "p95 ms", "{:.1f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("max_ms", "max ms", "{:.1f}"),
    ("lost", "lost", "{:,}"),
    ("duplicated", "dup", "{:,}"),
    ("server_cpu", "server CPU %", "{:.0f}"),
    ("generator_cpu", "gen CPU %", "{:.0f}"),
    ("server_rss_mb", "server RSS MB", "{:.1f}"),
    ("rss_per_connection_kb", "KB/conn", "{:.1f}"),
)


def machine() -> str:
    """A one-line description of this machine, for the record."""
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def table(results: Sequence[Result], title: str = "wshub bench") -> Table:
    """Render results as a rich table."""
    out = Table(title=title, caption=machine())
    for _, header, _ in _COLUMNS:
        out.add_column(header, justify="right")
    for result in results:
        row = dataclasses.asdict(result)
        out.add_row(*(fmt.format(row[key]) for key, _, fmt in _COLUMNS))
    return out


def ratios(results: Sequence[Result], baseline: str) -> dict[str, float]:
    """deliveries/s of each target divided by ``baseline``'s (medians already taken)."""
    base = next((r.deliveries_per_s for r in results if r.target == baseline), 0.0)
    return {r.target: (r.deliveries_per_s / base if base else 0.0) for r in results}


def print_results(
    results: Sequence[Result], *, as_json: bool, title: str, extra: dict[str, object] | None = None
) -> None:
    """Print results as a table (and extra lines) or as one JSON document."""
    if as_json:
        document = {"machine": machine(), "results": [dataclasses.asdict(r) for r in results]}
        print(json.dumps({**document, **(extra or {})}, indent=2))
        return
    console = Console(width=max(Console().width, 150))  # a table this wide, even in a pipe
    console.print(table(results, title))
    for key, value in (extra or {}).items():
        console.print(f"{key}: {value}")


def median_result(runs: Sequence[Result]) -> Result:
    """The run with the median deliveries/s (a real run, not a blend of several)."""
    ordered = sorted(runs, key=lambda r: r.deliveries_per_s)
    return ordered[len(ordered) // 2]
