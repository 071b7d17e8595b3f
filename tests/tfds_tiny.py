"""Tiny TFDS builders for the prepare tests (``--imports=tfds_tiny``).

``bt_tiny_digits``: scikit-learn's digits as uint8 tensors (8x8x1) — its features encode without
TensorFlow, so the prepare path runs in the default suite. ``bt_tiny_images``: a few generated
images as an ``Image`` feature (PNG), which TFDS encodes with TensorFlow (the `prepare` mark).
"""

import numpy as np
import tensorflow_datasets as tfds


class BtTinyDigits(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
          "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
        }
      ),
      supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(0, 1437), "test": self._generate_examples(1437, 1797)}

  def _generate_examples(self, lo, hi):
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(d.images * 16, 0, 255).astype(np.uint8)[..., None]
    perm = np.random.default_rng(0).permutation(len(images))
    for i in range(lo, hi):
      j = int(perm[i])
      yield j, {"image": images[j], "label": int(d.target[j])}


class BtTinyImages(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(None, None, 3)),
          "label": tfds.features.ClassLabel(names=["dark", "light"]),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(0, 24), "test": self._generate_examples(1, 8)}

  def _generate_examples(self, seed, n):
    rng = np.random.default_rng(seed)
    for i in range(n):
      label = i % 2
      image = rng.integers(0, 100, (12 + i % 3, 16, 3)) + 150 * label
      yield i, {"image": image.astype(np.uint8), "label": label}
