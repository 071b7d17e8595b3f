"""A preprocessing op as a plug-in: ``invert`` (255 - x on uint8 images). One file; importing it
registers the op (inside the package: a module under data/pp/, listed in MODULES)."""

import numpy as np

from big_transfer.data import ops
from big_transfer.data.pp.registry import _keyed


@ops.register("invert")
def _invert(key: str = "image"):
  return _keyed(lambda img, rng: (255 - np.asarray(img, np.int32)).astype(np.uint8), key)
