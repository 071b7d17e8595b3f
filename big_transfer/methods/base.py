"""What a pre-training method is to the rest of the code: :class:`Method` and its :class:`Traits`.

A method is one file under ``methods/`` with a subclass of :class:`Method`, plus one line in
``methods.METHODS``. The loop, sharding, checkpoints, logging, evaluators and transfer are
shared; they reach the method only through this interface:

- ``traits``: what others need to know without building it (its image tower's path, a text
  tower, feature normalisation for transfer, class labels);
- ``batch_keys``: what each example carries after preprocessing;
- ``create_model(rngs)`` and ``loss(model, batch, rngs) -> (loss, {metric: value})``;
- ``predictions()``: the named predict functions evaluators may ask for (``metrics``,
  ``features``, ``encode_image``, ``encode_text``; see :data:`PREDICTIONS`). An evaluator that
  needs one the method does not offer is a config error naming both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Traits:
  """What the rest of the code needs to know about a method without building it (transfer,
  the study, conversion, the bench, the report): asked through ``methods.traits(name)``,
  never by comparing method names."""

  image_tower: str  # the image tower's path in the model's parameters ('': the model itself)
  text_tower: bool = False  # a text encoder: tokenizer, zero-shot, retrieval, text-built heads
  normalized_features: bool = False  # transfer L2-normalises its features by default
  needs_labels: bool = False  # trains on class labels (num_classes from the data)


PREDICTIONS = {
  "metrics": "(model, batch) -> {metric: per-example values} (held-out classification)",
  "features": "(model, images) -> features (few-shot probes, transfer)",
  "encode_image": "(model, images) -> image embeddings (zero-shot, retrieval)",
  "encode_text": "(model, tokens) -> text embeddings (zero-shot, retrieval)",
}


class Method:
  """The base of every method. ``config``: the run's config; ``info``: what the training data
  resolved (``num_classes``, ``class_names``, ``tokenizer``)."""

  name: str = ""
  traits: Traits = Traits(image_tower="")
  batch_keys: tuple[str, ...] = ("image",)
  # The config keys this method reads beyond the run's own (schema.Section): their defaults,
  # help and check join the base config (config_lib.base_config).
  config_sections: tuple = ()

  def __init__(self, config, info):
    self.config = config
    self.info = info
    self.dtype = jnp.bfloat16 if config.get("dtype") == "bfloat16" else jnp.float32

  def create_model(self, rngs: nnx.Rngs) -> nnx.Module:
    raise NotImplementedError

  def loss(self, model, batch, rngs=None):
    raise NotImplementedError

  def program_key(self) -> tuple | None:
    """Everything this method's compiled programs depend on beyond the model's graph, the
    optimiser's structure and the mesh — hashable — when programs may be shared with other
    runs of an equal key in one process (transfer runs); None (the default): each run compiles
    its own."""
    return None

  def predictions(self) -> dict[str, Callable]:
    """{name in PREDICTIONS: fn}: what evaluators of this method's models may ask for."""
    return {}

  # How the bench trains this method on synthetic data (bench.bench_config): the op string
  # that turns one image chain into this method's batch keys, and its optimiser.
  bench_optimizer: dict = {}

  @classmethod
  def training_pp(cls, decode: str, view: str) -> str:
    """The training op string from ``decode`` (decoding ops) and ``view`` (the augmentation and
    normalisation of one image): one image by default."""
    return f"{decode}|{view}"
