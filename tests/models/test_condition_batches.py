"""The shared condition batch sampler (one condition per minibatch) behind RAPTORGraph's (and gCRL's) training."""

from __future__ import annotations

import numpy as np
import pytest

from pertgrn.models._base import ConditionBatchSampler


def test_batches_hold_one_condition_and_cover_every_eligible_cell():
    conditions = np.array([0] * 7 + [1] * 3 + [-1] * 5 + [2] * 1 + [0] * 2)
    sampler = ConditionBatchSampler(conditions, batch_size=4, shuffle=True, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4  # 9 cells of 0 → 3 + 3 + 3, 3 cells of 1 → 3; condition 2 has 1 cell
    for batch in batches:
        assert len(set(conditions[batch])) == 1
    covered = sorted(i for b in batches for i in b)
    assert covered == sorted(np.flatnonzero(np.isin(conditions, [0, 1])).tolist())
    sizes = sorted(len(b) for b in batches if conditions[b[0]] == 0)
    assert sizes == [3, 3, 3]  # near-equal chunks, none above batch_size


def test_shuffled_every_pass_and_reproducible():
    conditions = np.repeat(np.arange(5), 20)
    first = ConditionBatchSampler(conditions, batch_size=8, seed=1)
    second = ConditionBatchSampler(conditions, batch_size=8, seed=1)
    epoch1, epoch2 = list(first), list(first)
    assert epoch1 != epoch2  # a new order every epoch
    assert epoch1 == list(second)  # the same seed gives the same run
    fixed = ConditionBatchSampler(conditions, batch_size=8, shuffle=False)
    assert list(fixed) == list(fixed)
    assert [conditions[b[0]] for b in fixed] == sorted(conditions[b[0]] for b in fixed)


def test_min_batch_size_and_validation():
    conditions = np.array([0, 0, 0, 1])
    assert [len(b) for b in ConditionBatchSampler(conditions, batch_size=4, shuffle=False)] == [3]
    assert [len(b) for b in ConditionBatchSampler(conditions, batch_size=4, shuffle=False, min_batch_size=1)] == [3, 1]
    with pytest.raises(TypeError, match="integer codes"):
        ConditionBatchSampler(np.array(["a", "b"]), batch_size=2)
    with pytest.raises(ValueError, match="min_batch_size"):
        ConditionBatchSampler(conditions, batch_size=2, min_batch_size=3)
    assert len(ConditionBatchSampler(np.array([-1, -1]), batch_size=2)) == 0
