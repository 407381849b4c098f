"""Quantiles of a duration histogram, computed as Prometheus' ``histogram_quantile`` does.

The histogram is the one the action totals keep (``schema.DURATION_BUCKETS``: upper bounds in
seconds, each bucket counting the attempts above the bound before it, not cumulative; what is
above the last bound is counted in ``attempts`` only, Prometheus' ``+Inf`` bucket). As
Prometheus does (``promql/quantile.go``, ``bucketQuantile``): the rank ``q * attempts`` is
found in the cumulative counts, and the value interpolated linearly inside the bucket that
holds it, the first bucket starting at 0; a rank in the ``+Inf`` bucket gives the highest
finite bound. So a figure is an estimate, exact only at the bounds, and never above 300 s.
"""

from __future__ import annotations

import math
from itertools import accumulate
from typing import Sequence


def histogram_quantile(q: float, bounds: Sequence[float], buckets: Sequence[int], total: int) -> float:
    """The ``q``-quantile (0..1) of ``total`` observations, ``buckets[i]`` of them in
    (``bounds[i-1]``, ``bounds[i]``]; NaN when there are none."""
    if not 0 <= q <= 1:
        raise ValueError(f"a quantile is between 0 and 1, not {q}")
    if total <= 0:
        return math.nan
    cumulative = list(accumulate(buckets))
    rank = q * total
    b = next((i for i, count in enumerate(cumulative) if count >= rank), None)
    if b is None:                 # in the +Inf bucket: the highest bound is all that is known
        return bounds[-1]
    start = bounds[b - 1] if b > 0 else 0.0
    below = cumulative[b - 1] if b > 0 else 0
    count = cumulative[b] - below
    if count == 0:                # only when rank is 0 and the bucket is empty: its start
        return start
    return start + (bounds[b] - start) * ((rank - below) / count)
