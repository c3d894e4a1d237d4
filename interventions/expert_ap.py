"""Average precision of unit responses: an exact reference and a bounded-memory streaming histogram.

Used by :mod:`interventions.experts` to rank units as language experts: one streaming pass keeps, per group
(language) and unit, a fixed-bin histogram of responses (:class:`StreamingAP`), whose size does not depend on the
number of sentences; AP and medians are read off the cumulative counts. Per-group sums of the responses give each
unit's between-language variance (the variance of its per-language mean response), which picks the ``variance``
control of :mod:`interventions.experts`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def average_precision_exact(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact AP (same definition as sklearn's ``average_precision_score``: tied scores form one threshold)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if labels.sum() == 0:
        raise ValueError("labels: expected at least one positive")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _histogram_ap(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """AP from per-bin counts ``[U, bins]`` (highest bin first), positives and negatives randomly mixed in a bin.

    Inside a bin holding p positives and q negatives after a = TP, b = TP + FP items above it, the j-th positive
    has precision ~ (a + j) / (b + j (p + q) / p); the sum over j is the integral of that curve over
    [1/2, p + 1/2] (closed form). This removes most of the tie bias of treating a bin as one threshold.
    """
    a = pos.cumsum(-1) - pos
    b = a + neg.cumsum(-1) - neg
    c = (pos + neg) / pos.clamp_min(1)
    safe_c = c.clamp_min(1)

    def antiderivative(x):
        return x / safe_c + (a - b / safe_c) / safe_c * torch.log(b + safe_c * x)

    area = antiderivative(pos + 0.5) - antiderivative(torch.full_like(pos, 0.5))
    area = torch.where(pos > 0, area, torch.zeros_like(area))
    return area.sum(-1) / pos.sum(-1).clamp_min(1)


class StreamingAP:
    """Per-group, per-unit histograms of responses: AP and medians in memory independent of n.

    The bin range of each unit is fixed from the first ``calibration`` responses (buffered, a constant
    ``calibration x n_units`` floats): their min..max widened by ``margin`` of the span on each side. Values beyond
    it land in two overflow bins, whose medians are interpolated towards the running per-unit minimum / maximum.
    Size: ``n_groups * n_units * (bins + 2)`` int32 counts plus O(n_groups * n_units) (extremes and float64 sums),
    whatever the number of sentences.
    """

    def __init__(self, n_groups: int, bins: int = 512, margin: float = 0.25, calibration: int = 64):
        if n_groups < 2:
            raise ValueError(f"n_groups: expected >= 2 (positives and negatives), got {n_groups}")
        if bins < 2:
            raise ValueError(f"bins: expected >= 2, got {bins}")
        self.n_groups, self.bins, self.margin, self.calibration = n_groups, bins, margin, calibration
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.counts: torch.Tensor | None = None  # [G, U, bins + 2] int32
        self.low = self.width = None  # [U]
        self.minimum = self.maximum = None  # [G, U]
        self.sums = None  # [G, U] float64: sum of the responses per group

    @property
    def n_units(self) -> int:
        self.flush()
        return 0 if self.counts is None else self.counts.shape[1]

    @property
    def nbytes(self) -> int:
        self.flush()
        tensors = [self.counts, self.low, self.width, self.minimum, self.maximum, self.sums]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def group_sizes(self) -> torch.Tensor:
        self.flush()
        return self.counts[:, 0, :].sum(-1)

    def _init(self, responses: torch.Tensor) -> None:
        u = responses.shape[1]
        lo, hi = responses.min(0).values, responses.max(0).values
        span = (hi - lo).clamp_min(1e-6)
        self.low = lo - self.margin * span
        self.width = span * (1 + 2 * self.margin) / self.bins
        self.counts = torch.zeros(self.n_groups, u, self.bins + 2, dtype=torch.int32)
        self.minimum = torch.full((self.n_groups, u), float("inf"))
        self.maximum = torch.full((self.n_groups, u), float("-inf"))
        self.sums = torch.zeros(self.n_groups, u, dtype=torch.float64)

    def update(self, responses: torch.Tensor, groups: torch.Tensor | Sequence[int]) -> None:
        """Add ``responses[b, U]`` of ``b`` sentences whose group (language) indices are ``groups[b]``."""
        responses = responses.detach().float().cpu()
        groups = torch.as_tensor(groups, dtype=torch.long).cpu()
        if responses.ndim != 2 or groups.shape != (responses.shape[0],):
            raise ValueError(f"responses/groups: expected [b, U] and [b], got {tuple(responses.shape)} "
                             f"and {tuple(groups.shape)}")
        if groups.numel() and (groups.min() < 0 or groups.max() >= self.n_groups):
            raise ValueError(f"groups: expected indices in [0, {self.n_groups}), got {groups.tolist()}")
        if self.counts is None:
            if self._pending and responses.shape[1] != self._pending[0][0].shape[1]:
                raise ValueError(f"responses: expected {self._pending[0][0].shape[1]} units, got {responses.shape[1]}")
            self._pending.append((responses, groups))
            if sum(len(g) for _, g in self._pending) >= self.calibration:
                self.flush()
            return
        if responses.shape[1] != self.n_units:
            raise ValueError(f"responses: expected {self.n_units} units, got {responses.shape[1]}")
        self._add(responses, groups)

    def flush(self) -> None:
        """Fix the bin ranges from the buffered calibration responses and count them (called when needed)."""
        if self.counts is not None or not self._pending:
            return
        responses = torch.cat([r for r, _ in self._pending])
        groups = torch.cat([g for _, g in self._pending])
        self._pending = []
        self._init(responses)
        self._add(responses, groups)

    def _add(self, responses: torch.Tensor, groups: torch.Tensor) -> None:
        u, nb = self.n_units, self.bins + 2
        idx = torch.floor((responses - self.low) / self.width).long() + 1
        idx = idx.clamp_(0, nb - 1)
        flat = (groups[:, None] * u + torch.arange(u)[None, :]) * nb + idx
        self.counts.view(-1).index_add_(0, flat.reshape(-1), torch.ones(flat.numel(), dtype=torch.int32))
        self.sums.index_add_(0, groups, responses.double())
        for g in groups.unique().tolist():
            r = responses[groups == g]
            self.minimum[g] = torch.minimum(self.minimum[g], r.min(0).values)
            self.maximum[g] = torch.maximum(self.maximum[g], r.max(0).values)

    def group_means(self) -> torch.Tensor:
        """Mean response of every unit over the sentences of each group -> float64 ``[G, U]`` (NaN: empty group)."""
        self.flush()
        if self.counts is None:
            raise ValueError("StreamingAP: no responses were added")
        sizes = self.group_sizes().to(torch.float64)
        return self.sums / torch.where(sizes > 0, sizes, float("nan"))[:, None]

    def between_group_variance(self) -> torch.Tensor:
        """Variance of each unit's per-group mean response, groups weighted by their sizes (the between-group
        term of the ANOVA decomposition: ``sum_g n_g (mean_g - mean)^2 / N``) -> float64 ``[U]``."""
        means = self.group_means()
        sizes = self.group_sizes().to(torch.float64)
        present = sizes > 0
        w = (sizes[present] / sizes[present].sum())[:, None]
        m = means[present]
        grand = (w * m).sum(0)
        return (w * (m - grand) ** 2).sum(0)

    def average_precision(self, positive: int | Sequence[int], chunk: int = 8192) -> torch.Tensor:
        """AP of every unit at ranking the ``positive`` group(s) above the rest -> float64 [U]."""
        self.flush()
        if self.counts is None:
            raise ValueError("StreamingAP: no responses were added")
        pos_groups = [positive] if isinstance(positive, int) else list(positive)
        out = torch.empty(self.n_units, dtype=torch.float64)
        for start in range(0, self.n_units, chunk):
            c = self.counts[:, start:start + chunk]
            pos_int = c[pos_groups].sum(0)
            pos = pos_int.flip(-1).to(torch.float64)  # highest bin first
            neg = (c.sum(0) - pos_int).flip(-1).to(torch.float64)
            out[start:start + chunk] = _histogram_ap(pos, neg)
        return out

    def median(self, group: int | Sequence[int], units: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Median response of ``units`` over the sentences of ``group``, interpolated inside its bin -> float32."""
        self.flush()
        if self.counts is None:
            raise ValueError("StreamingAP: no responses were added")
        gs = [group] if isinstance(group, int) else list(group)
        units = torch.as_tensor(units, dtype=torch.long)
        return torch.cat([self._median(gs, units[s:s + chunk]) for s in range(0, len(units), chunk)]
                         or [torch.empty(0)])

    def _median(self, gs: list[int], units: torch.Tensor) -> torch.Tensor:
        c = self.counts[gs][:, units].to(torch.float64).sum(0)  # [k, bins + 2]
        cum = c.cumsum(-1)
        half = cum[:, -1:] / 2
        b = torch.searchsorted(cum, half).squeeze(-1).clamp(max=c.shape[-1] - 1)  # first bin with cum >= half
        before = torch.where(b > 0, cum.gather(1, (b - 1).clamp_min(0)[:, None]).squeeze(1), torch.zeros_like(half[:, 0]))
        inside = c.gather(1, b[:, None]).squeeze(1).clamp_min(1)
        frac = ((half[:, 0] - before) / inside).clamp(0, 1)
        low, width = self.low[units].double(), self.width[units].double()
        left = low + (b - 1).double() * width
        right = left + width
        lo_obs = self.minimum[gs][:, units].min(0).values.double()
        hi_obs = self.maximum[gs][:, units].max(0).values.double()
        left = torch.where(b == 0, lo_obs, left)
        right = torch.where(b == 0, low, right)
        left = torch.where(b == c.shape[-1] - 1, low + self.bins * width, left)
        right = torch.where(b == c.shape[-1] - 1, hi_obs, right)
        return (left + frac * (right - left)).float()
