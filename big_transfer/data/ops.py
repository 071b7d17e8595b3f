"""Preprocessing as a small op language: ``decode|inception_crop(32)|flip_lr|value_range(-1,1)``.

Each op is a registered numpy/PIL function factory: ``name(args) -> fn(example, rng) -> example``.
``parse`` validates the whole string (unknown op, bad argument) at config load, before any data is
read, and the error lists the known ops. Randomness comes from the ``rng`` passed in, which the
pipeline seeds from (seed, global example index): the same example gets the same augmentation on
any number of hosts and after a resume.

This module is the public entry; the ops live by kind under ``data/pp/``: the registry and
builder (``pp/registry.py``), image ops (``pp/image.py``), key ops (``pp/keys.py``),
augmentations (``pp/augment.py``), normalisation and its device half (``pp/device.py``), text
(``pp/text.py``).
"""

from __future__ import annotations

from big_transfer.data.pp import registry
from big_transfer.data.pp.augment import IMAGENET_FILL, TIMM_RA_OPS
from big_transfer.data.pp.device import MEAN_STD, apply_affine, split_device_affine
from big_transfer.data.pp.image import decode_image, jpeg_size

REGISTRY, RUN_ARGS = registry.REGISTRY, registry.RUN_ARGS
Example, Op = registry.Example, registry.Op
PreprocessError, known_ops, load = registry.PreprocessError, registry.known_ops, registry.load
parse, register = registry.parse, registry.register
is_deterministic = registry.is_deterministic

load()  # every op module registers its ops

__all__ = [
  "IMAGENET_FILL",
  "MEAN_STD",
  "REGISTRY",
  "RUN_ARGS",
  "TIMM_RA_OPS",
  "Example",
  "Op",
  "PreprocessError",
  "apply_affine",
  "decode_image",
  "is_deterministic",
  "jpeg_size",
  "known_ops",
  "load",
  "parse",
  "register",
  "split_device_affine",
]
