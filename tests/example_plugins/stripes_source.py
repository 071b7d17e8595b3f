"""A data source as a plug-in: ``builtin:stripes`` — 16x16 images of horizontal or vertical
stripes, two classes. One file; registered with one line:

  builtin.register("stripes", StripesSource)
"""

import numpy as np


class StripesSource:
  SPLITS = {"train": 256, "test": 64}
  OPTIONS = {"seed": int}

  def __init__(self, split: str = "train", seed: int = 0):
    n = self.SPLITS[split]
    rng = np.random.default_rng(seed + (split == "test"))
    self.labels = rng.integers(0, 2, n)
    period = rng.integers(2, 5, n)
    self.images = np.zeros((n, 16, 16, 3), np.uint8)
    for i in range(n):
      lines = (np.arange(16) // period[i]) % 2 * 255
      self.images[i] = lines[:, None, None] if self.labels[i] else lines[None, :, None]
    self.class_names = ("vertical stripes", "horizontal stripes")

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {"image": self.images[i], "label": int(self.labels[i])}
