"""k-shot sampler and validation splits: exact counts, determinism, replacement only if needed."""

import numpy as np
import pytest

from big_transfer.data import fewshot, sources


@pytest.mark.parametrize("k", [1, 5, 10, 20])
def test_exactly_k_per_class_without_replacement_when_possible(k):
  labels = fewshot.labels_of(sources.open_source("builtin:digits"))
  idx = fewshot.sample_shots(labels, k, seed=0)
  counts = np.bincount(labels[idx], minlength=10)
  assert (counts == k).all()
  assert len(set(idx.tolist())) == len(idx)  # every class has >= 20 examples: no repeats


def test_same_seed_same_subset_other_seed_other_subset():
  labels = fewshot.labels_of(sources.open_source("builtin:digits"))
  a, b = fewshot.sample_shots(labels, 5, 3), fewshot.sample_shots(labels, 5, 3)
  np.testing.assert_array_equal(a, b)
  assert set(fewshot.sample_shots(labels, 5, 4).tolist()) != set(a.tolist())


def test_replacement_only_for_classes_with_too_few_examples():
  labels = np.array([0] * 3 + [1] * 50 + [2] * 1)
  idx = fewshot.sample_shots(labels, 5, seed=1)
  assert (np.bincount(labels[idx]) == 5).all()
  zero, one, two = idx[labels[idx] == 0], idx[labels[idx] == 1], idx[labels[idx] == 2]
  assert set(zero.tolist()) == {0, 1, 2}  # all three used, then repeats
  assert len(set(one.tolist())) == 5  # enough examples: no repeats
  assert set(two.tolist()) == {53}
  with pytest.raises(ValueError):
    fewshot.sample_shots(labels, 0, 0)


def test_stratified_validation_split_is_disjoint_and_complete():
  labels = fewshot.labels_of(sources.open_source("builtin:digits"))
  tr, va = fewshot.train_val_split(labels, 0.1, seed=0)
  assert not set(tr.tolist()) & set(va.tolist())
  assert sorted(tr.tolist() + va.tolist()) == list(range(len(labels)))
  per_class = np.bincount(labels[va], minlength=10) / np.bincount(labels, minlength=10)
  assert np.allclose(per_class, 0.1, atol=0.02)
  tr2, va2 = fewshot.train_val_split(labels, 0.1, seed=0)
  np.testing.assert_array_equal(va, va2)
