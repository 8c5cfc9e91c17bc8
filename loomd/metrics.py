"""What every component's `metrics()` returns (`Family`, `Histogram`) and how it becomes
Prometheus text (format 0.0.4): `Exposition`, through prometheus_client with a registry of
its own. The HTTP endpoint that serves it is `loomd.web.http`, the component that runs it
`loomd.web.component`.

Components keep their own counters and histograms; on each scrape the server calls one
`collect()` function that returns `Family` tuples, declared then as prometheus_client
metric families and rendered by the library. Nothing is registered in the library's
global registry, so there is no registry to reset between tests and no lock on the hot
path: everything runs on the event loop.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = [
    "CONTENT_TYPE", "LATENCY_BUCKETS", "Exposition", "Family", "Histogram", "Sample", "render",
]  # fmt: skip

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


class Exposition:
    """The text exposition of whatever `collect()` returns at each scrape, through
    prometheus_client: one `CollectorRegistry` of this server's own (never the library's
    global one) holding one collector that declares each `Family` as the library's metric
    family (counter, gauge, histogram, summary, untyped) at scrape time."""

    def __init__(self, collect: Callable[[], Iterable[Family]]) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(collect))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Collector:
    def __init__(self, collect: Callable[[], Iterable[Family]]) -> None:
        self.collect_families = collect

    def collect(self) -> Iterator[Metric]:
        for family in self.collect_families():
            yield _declare(family)

    def describe(self) -> list[Metric]:
        return []  # nothing is known before a scrape: families come and go with components


def render(families: Iterable[Family]) -> str:
    """The text exposition format 0.0.4 for `families`."""
    return Exposition(lambda: families).render().decode()


def _declare(family: Family) -> Metric:
    """`family` as a prometheus_client metric family, checked: a bad name, label or type is
    a ValueError (it costs the scrape, as a collector that raises does)."""
    from prometheus_client.metrics_core import Metric

    name, kind = family.name, family.type
    if not _METRIC_NAME.fullmatch(name):
        raise ValueError(f"invalid metric name {name!r}")
    if kind not in TYPES:
        raise ValueError(f"{name}: invalid metric type {kind!r}")
    sample = name
    if kind == "counter":
        # The library names a counter family without `_total` and its samples with it.
        sample = name if name.endswith("_total") else name + "_total"
        name = sample.removesuffix("_total")
    metric = Metric(name, family.help, kind)
    for labels, value in family.samples:
        _check_labels(labels)
        if isinstance(value, Histogram):
            if kind != "histogram":
                raise ValueError(f"{name}: a histogram sample in a {kind} family")
            _histogram_samples(metric, name, labels, value)
        else:
            if kind == "histogram":
                raise ValueError(f"{name}: histogram families take Histogram samples")
            metric.add_sample(sample, _str_labels(labels), float(value))
    return metric


def _histogram_samples(
    metric: Metric, name: str, labels: Mapping[str, str], hist: Histogram
) -> None:
    if "le" in labels:
        raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
    base = _str_labels(labels)
    for bound, n in hist.cumulative():
        metric.add_sample(f"{name}_bucket", {**base, "le": _bound(bound)}, float(n))
    metric.add_sample(f"{name}_sum", base, hist.sum)
    metric.add_sample(f"{name}_count", base, float(hist.count))


_GOOD_LABELS: set[str] = set()  # label names checked once (a scrape repeats them all)


def _check_labels(labels: Mapping[str, str]) -> None:
    for key in labels:
        if key in _GOOD_LABELS:
            continue
        if not _LABEL_NAME.fullmatch(key) or key.startswith("__"):
            raise ValueError(f"invalid label name {key!r}")
        if len(_GOOD_LABELS) < 1024:
            _GOOD_LABELS.add(key)


def _str_labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v if type(v) is str else str(v) for k, v in labels.items()}


def _bound(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(bound)
