"""Built-in offline datasets: usable with no download, deterministic."""

from __future__ import annotations

import functools

import numpy as np

DIGITS_CLASSES = tuple(str(i) for i in range(10))


@functools.lru_cache(maxsize=None)
def _digits_arrays():
  from sklearn.datasets import load_digits  # ships the 1,797 real 8x8 UCI images
  d = load_digits()
  # 0..16 grey levels -> 0..255, one channel.
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = d.target.astype(np.int64)
  # A fixed permutation, then 80% train / 20% test: stable across machines and versions.
  perm = np.random.default_rng(20230227).permutation(len(labels))
  return images[perm], labels[perm]


class DigitsSource:
  """scikit-learn's bundled handwritten digits: 1,437 train and 360 test images, 8x8 grey."""

  SPLITS = {"train": (0, 1437), "test": (1437, 1797)}

  def __init__(self, split: str = "train"):
    if split not in self.SPLITS:
      raise KeyError(split)
    images, labels = _digits_arrays()
    lo, hi = self.SPLITS[split]
    self.images, self.labels = images[lo:hi], labels[lo:hi]
    self.class_names = DIGITS_CLASSES

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {"image": self.images[i], "label": self.labels[i]}


BUILTINS = {"digits": DigitsSource}
