"""Model registry: a name (``resnet50``, ``bit_r50x1``, ``clip_rn50``, ``vit_b16``) plus kwargs.

Names follow the field: torchvision/timm's ``resnetD`` is the v1.5 BatchNorm ResNet, ``bit_rDxW``
BiT's ResNet-v2 (GroupNorm + weight standardisation) at width multiplier W, ``clip_rnD`` CLIP's
modified ResNet, ``vit_{ti,s,m,b,l,h}P`` a ViT with patch size P.
"""

from __future__ import annotations

import re
from typing import Any

import jax
from flax import nnx

from big_transfer.models.resnet import DEPTHS, ResNet
from big_transfer.models.vit import VARIANTS, ViT

_PATTERNS = [
  (r"resnet(\d+)", lambda m: (ResNet, dict(depth=int(m[1]), version="v1.5"))),
  (r"bit_r(\d+)x(\d+)", lambda m: (ResNet, dict(depth=int(m[1]), version="v2", width=int(m[2])))),
  (r"clip_rn(\d+)", lambda m: (ResNet, dict(depth=int(m[1]), version="clip"))),
  (r"vit_(ti|s|m|b|l|h)(\d+)", lambda m: (ViT, dict(variant=m[1], patch=int(m[2])))),
]


def register(pattern: str, build) -> None:
  """Adds a model family: names matching ``pattern`` (a regex, matched whole) build
  ``build(match) -> (class, kwargs)``; the class is called with those kwargs and
  ``num_classes``, ``dtype``, ``rngs`` (0 classes: no head), returns ``(logits, {'pre_logits':
  ...})`` and has ``num_features``. A pattern registered twice is an error."""
  if any(p == pattern for p, _ in _PATTERNS):
    raise ValueError(f"model pattern {pattern!r} is registered twice")
  _PATTERNS.append((pattern, build))


EXAMPLES = (
  "resnet18",
  "resnet26",
  "resnet50",
  "resnet101",
  "bit_r50x1",
  "bit_r101x3",
  "clip_rn50",
  "clip_rn101",
  "vit_ti16",
  "vit_s16",
  "vit_b16",
  "vit_b32",
  "vit_l16",
  "vit_l14",
)


def parse(name: str) -> tuple[type, dict[str, Any]]:
  """Returns (class, kwargs) for a model name; raises ValueError naming the known forms."""
  for pattern, build in _PATTERNS:
    m = re.fullmatch(pattern, name)
    if m:
      cls, kwargs = build(m)
      if "depth" in kwargs and kwargs["depth"] not in DEPTHS:
        break
      if "variant" in kwargs and kwargs["variant"] not in VARIANTS:
        break
      return cls, kwargs
  raise ValueError(
    f"unknown model {name!r}; known forms: resnetD, bit_rDxW, clip_rnD (D in "
    f"{sorted(DEPTHS)}), vit_{{{','.join(VARIANTS)}}}P — e.g. {', '.join(EXAMPLES)}"
  )


def create(name: str, *, num_classes: int, rngs: nnx.Rngs, dtype=None, **kwargs) -> nnx.Module:
  cls, defaults = parse(name)
  return cls(**{**defaults, **kwargs}, num_classes=num_classes, dtype=dtype, rngs=rngs)


def init(name: str, *, num_classes: int, seed: int = 0, dtype=None, **kwargs) -> nnx.Module:
  """Creates and initialises a model with one jitted init (eager init compiles every
  initialiser separately: ~20 s for a small ResNet on CPU, against ~3 s here)."""

  def make(key):
    return create(name, num_classes=num_classes, rngs=nnx.Rngs(params=key), dtype=dtype, **kwargs)

  graphdef, _ = nnx.split(nnx.eval_shape(lambda: make(jax.random.key(0))))
  opts = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  state = jax.jit(lambda key: nnx.split(make(key))[1], compiler_options=opts)(jax.random.key(seed))
  return nnx.merge(graphdef, state)


def num_params(module_or_state) -> int:
  state = module_or_state
  if isinstance(module_or_state, nnx.Module):
    state = nnx.state(module_or_state, nnx.Param)
  return sum(int(x.size) for x in jax.tree.leaves(state))


def count_params(name: str, num_classes: int = 1000, **kwargs) -> int:
  """Parameter count of a named model without allocating it."""
  model = nnx.eval_shape(lambda: create(name, num_classes=num_classes, rngs=nnx.Rngs(0), **kwargs))
  return num_params(model)
