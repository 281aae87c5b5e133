"""Optimal assignment: equal to a brute-force optimum on small cases; filter matching undoes a shuffle."""

from __future__ import annotations

import itertools
import random

import pytest

from cnnviz_cli.models.matching import linear_assignment, match_filters, maximum_assignment


def brute_force_min(cost):
    n, m = len(cost), len(cost[0])
    return min(sum(cost[i][p[i]] for i in range(n)) for p in itertools.permutations(range(m), n))


@pytest.mark.parametrize("seed", range(40))
def test_assignment_equals_brute_force_optimum(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 6)
    m = rng.randint(n, 6)
    # Small integers make ties frequent, which is where a wrong implementation slips.
    cost = [[rng.choice([rng.randint(-3, 3), rng.uniform(-1, 1)]) for _ in range(m)] for _ in range(n)]
    pairs = linear_assignment(cost)
    assert len(set(pairs)) == n and all(0 <= j < m for j in pairs)
    assert sum(cost[i][j] for i, j in enumerate(pairs)) == pytest.approx(brute_force_min(cost))


def test_maximum_assignment_known_case():
    score = [[0.1, 0.9, 0.2], [0.8, 0.7, 0.1], [0.3, 0.2, 0.6]]
    # Greedy would take 0.9 then 0.8 then 0.6 here too; this one needs the trade-off:
    assert maximum_assignment(score) == [1, 0, 2]
    tricky = [[10, 9], [9, 1]]  # greedy picks (0,0)=10 then (1,1)=1 -> 11; optimum 9+9 = 18
    assert maximum_assignment(tricky) == [1, 0]


def test_assignment_rejects_bad_input():
    assert linear_assignment([]) == []
    with pytest.raises(ValueError):
        linear_assignment([[1, 2], [3, 4], [5, 6]])
    with pytest.raises(ValueError):
        linear_assignment([[1.0, float("nan")]])


def test_match_filters_recovers_a_permutation():
    import torch

    torch.manual_seed(0)
    a = torch.randn(12, 3, 5, 5)
    perm = torch.randperm(12)
    b = a[perm] * 2.0 + 0.01 * torch.randn(12, 3, 5, 5)  # scaled and slightly noisy copies, shuffled
    match = match_filters(a, b)
    # a[i] == b[k] where perm[k] == i
    expected = [int((perm == i).nonzero()) for i in range(12)]
    assert match.pairs == expected
    assert min(match.similarity) > 0.99
    assert match.mean_similarity > match.identity_mean_similarity
    with pytest.raises(ValueError):
        match_filters(a, b[:5])
