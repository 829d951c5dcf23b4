"""A histogram fed a whole batch of observations at once.

The trainer observes freshness once per event; at 100K+ events/s a Python
call per observation (prometheus_client's `observe`) costs more than the
learning step itself. This collector bins a numpy array with one
`searchsorted` + `bincount` and exposes the usual `_bucket`/`_count`/`_sum`
series, so PromQL (`histogram_quantile`) sees an ordinary histogram.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector


class BulkHistogram(Collector):
    """Histogram with one label dimension, observed with arrays.

    >>> reg = CollectorRegistry()
    >>> h = BulkHistogram("x_seconds", "doc", "since", (0.1, 1.0), registry=reg)
    >>> h.observe_many("a", np.array([0.05, 0.5, 5.0]))
    >>> reg.get_sample_value("x_seconds_bucket", {"since": "a", "le": "1.0"})
    2.0
    """

    def __init__(self, name: str, documentation: str, label: str, buckets: Sequence[float], *,
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self._counts: dict[str, npt.NDArray[np.int64]] = {}
        self._sums: dict[str, float] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, value: str) -> None:
        """Create the series at zero, so `rate()` sees it before the first observation."""
        with self._lock:
            self._counts.setdefault(value, np.zeros(len(self.bounds) + 1, dtype=np.int64))
            self._sums.setdefault(value, 0.0)

    def observe_many(self, value: str, observations: npt.NDArray[np.float64]) -> None:
        obs = np.asarray(observations, dtype=np.float64)
        if obs.size == 0:
            return
        # Bucket i counts bounds[i-1] < x <= bounds[i]; the last one is +Inf.
        idx = np.searchsorted(self.bounds, obs, side="left")
        binned = np.bincount(idx, minlength=len(self.bounds) + 1)
        self.labels(value)
        with self._lock:
            self._counts[value] += binned
            self._sums[value] += float(obs.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        with self._lock:
            snapshot = {k: (v.cumsum(), self._sums[k]) for k, v in self._counts.items()}
        for value, (cumulative, total) in snapshot.items():
            edges = [f"{b:g}" if b != int(b) else f"{b:.1f}" for b in self.bounds] + ["+Inf"]
            family.add_metric([value], list(zip(edges, (float(c) for c in cumulative),
                                                strict=True)), total)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
