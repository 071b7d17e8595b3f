"""k-shot sampling and validation splits for transfer.

Subsets depend only on the labels and the seed, never on the model: every pre-trained model is
compared on exactly the same k images per class (a fair comparison across the study).
"""

from __future__ import annotations

import numpy as np


def labels_of(source) -> np.ndarray:
  """All labels of a random-access source, in order (without decoding images when the source
  can say them directly)."""
  fast = getattr(source, "labels_array", None)
  if callable(fast):
    return np.asarray(fast(), np.int64)
  inner = getattr(getattr(source, "source", None), "labels_array", None)
  if callable(inner) and hasattr(source, "indices") and type(source).__name__ == "Subset":
    return np.asarray(inner(), np.int64)[source.indices]
  return np.asarray([int(source[i]["label"]) for i in range(len(source))], np.int64)


def sample_shots(labels, shots: int, seed: int) -> np.ndarray:
  """Indices of exactly ``shots`` examples of every class present in ``labels``.

  Drawn without replacement with the seed; with replacement only for a class that has fewer
  than ``shots`` examples (all of them first, then repeats). Sorted by class, then index."""
  labels = np.asarray(labels)
  if shots <= 0:
    raise ValueError(f"shots={shots} must be positive")
  out = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    rng = np.random.default_rng([seed, int(c), 17])
    if len(idx) >= shots:
      pick = rng.choice(idx, size=shots, replace=False)
    else:  # every example once, then repeats drawn at random
      pick = np.concatenate([idx, rng.choice(idx, size=shots - len(idx), replace=True)])
    out.append(np.sort(pick))
  return np.concatenate(out)


def train_val_split(labels, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A stratified split of indices into (train, val): ``val_fraction`` of each class (at least
  one example when the class has two or more) goes to validation."""
  labels = np.asarray(labels)
  if not 0 < val_fraction < 1:
    raise ValueError(f"val_fraction={val_fraction} is not in (0, 1)")
  train, val = [], []
  for c in np.unique(labels):
    idx = np.random.default_rng([seed, int(c), 29]).permutation(np.flatnonzero(labels == c))
    n_val = int(round(len(idx) * val_fraction))
    n_val = min(max(n_val, 1 if len(idx) >= 2 else 0), len(idx) - 1) if len(idx) > 1 else 0
    val.append(idx[:n_val])
    train.append(idx[n_val:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
