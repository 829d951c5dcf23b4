"""Read a process's `/metrics` page into the few numbers the demo shows.

The demo watches the trainer and the scorer the way Prometheus would: over
HTTP, from their text exposition. Parsing goes through prometheus_client's own
parser, so anything Prometheus accepts we accept. Quantiles come from
histogram buckets with Prometheus' `histogram_quantile` rule (linear inside a
bucket), so the p99 printed here matches what a Grafana panel would show.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Bucket = tuple[float, float]
"""(upper bound `le`, cumulative count): one `_bucket` sample."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One exposed sample: `name{labels} value`."""

    name: str
    labels: Mapping[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    """Every sample of a text exposition page.

    >>> page = 'stream_app_training_loss 0.5\\n'
    >>> parse(page)[0].value
    0.5
    """
    return [Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


def fetch(url: str, timeout_s: float = 2.0) -> str | None:
    """The body of `url`, or None while the process is not (yet) answering."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (loopback)
            body: bytes = resp.read()
    except (urllib.error.URLError, OSError):
        return None
    return body.decode("utf-8", errors="replace")


def _matches(sample: Sample, name: str, labels: Mapping[str, str]) -> bool:
    return sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())


def values(samples: Iterable[Sample], name: str, **labels: str) -> list[float]:
    """Values of every sample called `name` whose labels include `labels`."""
    return [s.value for s in samples if _matches(s, name, labels)]


def total(samples: Iterable[Sample], name: str, **labels: str) -> float | None:
    """Sum over matching series (e.g. lag over partitions); None when there are none."""
    found = values(samples, name, **labels)
    return math.fsum(found) if found else None


def first(samples: Iterable[Sample], name: str, **labels: str) -> float | None:
    """The value of the first matching series; None when there is none."""
    found = values(samples, name, **labels)
    return found[0] if found else None


def buckets(samples: Iterable[Sample], name: str, **labels: str) -> list[Bucket]:
    """Cumulative buckets of histogram `name` (without `_bucket`), sorted by `le`.

    Series with several label sets (say two `phase`s) are summed per bound, so
    pass the labels that pick one child.
    """
    acc: dict[float, float] = {}
    for s in samples:
        if _matches(s, name + "_bucket", labels):
            le = float(s.labels["le"])
            acc[le] = acc.get(le, 0.0) + s.value
    return sorted(acc.items())


def delta(now: Sequence[Bucket], before: Sequence[Bucket]) -> list[Bucket]:
    """Buckets of the observations made between two scrapes (`now - before`).

    >>> delta([(1.0, 5.0), (math.inf, 7.0)], [(1.0, 2.0), (math.inf, 3.0)])
    [(1.0, 3.0), (inf, 4.0)]
    """
    old = dict(before)
    return [(le, count - old.get(le, 0.0)) for le, count in now]


def quantile(q: float, cumulative: Sequence[Bucket]) -> float:
    """Prometheus' `histogram_quantile(q, ...)`: NaN with no observations.

    Linear interpolation inside the bucket that holds the rank; the lowest
    bucket starts at 0; a rank in the `+Inf` bucket answers the highest finite
    bound (what Prometheus does, since the true value is unknown).

    >>> quantile(0.5, [(0.1, 10.0), (0.2, 20.0), (math.inf, 20.0)])
    0.1
    >>> quantile(0.99, [(0.1, 0.0), (math.inf, 0.0)])
    nan
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be within [0, 1], got {q}")
    if not cumulative or cumulative[-1][1] <= 0:
        return math.nan
    rank = q * cumulative[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if math.isinf(le):
                return lower_le
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return lower_le
