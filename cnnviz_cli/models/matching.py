"""Optimal one-to-one assignment (the Hungarian algorithm) and filter matching by weight similarity.

Two runs trained with different seeds learn similar filters in a different order; pairing filter
``i`` of one run with filter ``i`` of the other compares unrelated kernels. ``match_filters`` pairs
them so that the total cosine similarity is as large as possible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def linear_assignment(cost: Sequence[Sequence[float]]) -> list[int]:
    """The column assigned to each row that minimises the summed cost (rows <= columns).

    The O(n²·m) shortest-augmenting-path form of the Hungarian algorithm with row and column
    potentials; ``result[i]`` is the column of row ``i``, all distinct.
    """
    n = len(cost)
    if n == 0:
        return []
    m = len(cost[0])
    if any(len(row) != m for row in cost):
        raise ValueError("the cost matrix must be rectangular")
    if n > m:
        raise ValueError(f"need at least as many columns as rows, got {n}×{m}")
    if any(not math.isfinite(float(x)) for row in cost for x in row):
        raise ValueError("the cost matrix must be finite")
    inf = math.inf
    # 1-based arrays; column 0 is the virtual start of every augmenting path.
    u = [0.0] * (n + 1)
    v = [0.0] * (m + 1)
    owner = [0] * (m + 1)  # owner[j] = row matched to column j (0 = free)
    way = [0] * (m + 1)
    for i in range(1, n + 1):
        owner[0] = i
        j0 = 0
        minv = [inf] * (m + 1)
        used = [False] * (m + 1)
        while True:
            used[j0] = True
            i0 = owner[j0]
            delta = inf
            j1 = 0
            for j in range(1, m + 1):
                if used[j]:
                    continue
                reduced = float(cost[i0 - 1][j - 1]) - u[i0] - v[j]
                if reduced < minv[j]:
                    minv[j] = reduced
                    way[j] = j0
                if minv[j] < delta:
                    delta = minv[j]
                    j1 = j
            for j in range(m + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:  # flip the augmenting path
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    result = [0] * n
    for j in range(1, m + 1):
        if owner[j]:
            result[owner[j] - 1] = j - 1
    return result


def maximum_assignment(score: Sequence[Sequence[float]]) -> list[int]:
    """The column for each row that maximises the summed score."""
    return linear_assignment([[-float(x) for x in row] for row in score])


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every flattened filter of ``a`` (rows) with every one of ``b`` (columns)."""
    import torch

    fa = a.detach().double().flatten(1)
    fb = b.detach().double().flatten(1)
    fa = fa / fa.norm(dim=1, keepdim=True).clamp_min(1e-12)
    fb = fb / fb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (fa @ fb.T).to(torch.float64)


@dataclass(frozen=True)
class FilterMatch:
    """Filter ``a[i]`` is paired with ``b[pairs[i]]``; ``similarity[i]`` is their cosine similarity."""

    pairs: list[int]
    similarity: list[float]
    identity_similarity: list[float]

    @property
    def mean_similarity(self) -> float:
        return sum(self.similarity) / len(self.similarity) if self.similarity else float("nan")

    @property
    def identity_mean_similarity(self) -> float:
        values = self.identity_similarity
        return sum(values) / len(values) if values else float("nan")


def match_filters(a: torch.Tensor, b: torch.Tensor) -> FilterMatch:
    """Pair the filters of ``a`` and ``b`` (same shape, out×in×k×k) one-to-one, maximising total cosine similarity."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"filters of different shapes cannot be matched: {tuple(a.shape)} vs {tuple(b.shape)}")
    sim = cosine_matrix(a, b)
    pairs = maximum_assignment(sim.tolist())
    return FilterMatch(
        pairs=pairs,
        similarity=[float(sim[i, j]) for i, j in enumerate(pairs)],
        identity_similarity=[float(sim[i, i]) for i in range(sim.shape[0])],
    )
