"""Prometheus text exposition (format 0.0.4) without a client library: what every
component's `metrics()` returns (`Family`, `Histogram`) and how it is rendered. The HTTP
endpoint that serves it is `loomd.web.http`, the component that runs it `loomd.web.component`.

Components keep their own counters and histograms; on each scrape the server
calls one `collect()` function that returns `Family` tuples, and `render`
turns them into text. Nothing is registered globally, so there is no
registry to reset between tests and no lock on the hot path: everything runs
on the event loop.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "Family", "Histogram", "Sample", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# 50 µs .. 1 s: bus hops sit at the low end, model stages at the high end.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip

TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class Histogram:
    """Counts observations into fixed buckets (`le` = less than or equal)."""

    __slots__ = ("_bounds", "_count", "_counts", "_sum")

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        bounds = sorted({float(b) for b in buckets if b != math.inf})
        if not bounds or any(math.isnan(b) for b in bounds):
            raise ValueError("a histogram needs at least one finite bucket bound")
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last slot is the +Inf bucket
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        if math.isnan(value):
            return  # a NaN would poison the sum forever; it carries no latency anyway
        # bisect_left finds the first bound >= value: exactly Prometheus' `le`.
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value
        self._count += 1

    @property
    def count(self) -> int:
        return self._count

    @property
    def sum(self) -> float:
        return self._sum

    @property
    def bounds(self) -> tuple[float, ...]:
        return tuple(self._bounds)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) for every bucket, ending with +Inf."""
        total, out = 0, []
        for bound, n in zip([*self._bounds, math.inf], self._counts, strict=True):
            total += n
            out.append((bound, total))
        return out

    def quantile(self, q: float) -> float:
        """Estimate like PromQL's histogram_quantile: linear within the bucket."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} is outside [0, 1]")
        if self._count == 0:
            return math.nan
        rank = q * self._count
        below = 0
        for i, n in enumerate(self._counts):
            if n and below + n >= rank:
                return self._interpolate(i, (rank - below) / n)
            below += n
        return self._bounds[-1]  # unreachable: the loop always reaches the count

    def _interpolate(self, i: int, fraction: float) -> float:
        if i == len(self._bounds):
            return self._bounds[-1]  # +Inf bucket: the highest finite bound is all we know
        upper = self._bounds[i]
        lower = self._bounds[i - 1] if i > 0 else min(0.0, upper)
        return lower + (upper - lower) * fraction


Sample = tuple[Mapping[str, str], float | Histogram]


class Family(NamedTuple):
    """One metric: name, type (counter, gauge, histogram, ...), help, samples."""

    name: str
    type: str
    help: str
    samples: Sequence[Sample]


def render(families: Iterable[Family]) -> str:
    """The text exposition format 0.0.4 for `families`."""
    return "".join(_render_family(family) for family in families)


def _render_family(family: Family) -> str:
    name, kind = family.name, family.type
    if not _METRIC_NAME.fullmatch(name):
        raise ValueError(f"invalid metric name {name!r}")
    if kind not in TYPES:
        raise ValueError(f"{name}: invalid metric type {kind!r}")
    lines = [f"# HELP {name} {_escape_help(family.help)}", f"# TYPE {name} {kind}"]
    for labels, value in family.samples:
        if isinstance(value, Histogram):
            if kind != "histogram":
                raise ValueError(f"{name}: a histogram sample in a {kind} family")
            lines.extend(_histogram_lines(name, labels, value))
        else:
            if kind == "histogram":
                raise ValueError(f"{name}: histogram families take Histogram samples")
            lines.append(f"{name}{_labels(labels)} {_value(value)}")
    return "\n".join(lines) + "\n"


def _histogram_lines(name: str, labels: Mapping[str, str], hist: Histogram) -> list[str]:
    if "le" in labels:
        raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
    lines = [
        f"{name}_bucket{_labels({**labels, 'le': _bound(bound)})} {n}"
        for bound, n in hist.cumulative()
    ]
    lines.append(f"{name}_sum{_labels(labels)} {_value(hist.sum)}")
    lines.append(f"{name}_count{_labels(labels)} {hist.count}")
    return lines


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    for key in labels:
        if not _LABEL_NAME.fullmatch(key) or key.startswith("__"):
            raise ValueError(f"invalid label name {key!r}")
    return "{" + ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items()) + "}"


def _escape_label(text: str) -> str:
    return text.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _escape_help(text: str) -> str:
    # HELP escapes only backslash and newline; quotes stay as they are.
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _value(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _bound(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(bound)
