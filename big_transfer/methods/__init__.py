"""Pre-training methods as plug-ins to the one training loop.

A method provides: ``batch_keys`` (what each example must carry after preprocessing),
``create_model(rngs)``, ``loss(model, batch, rngs) -> (loss, metrics)`` for a training batch,
``features(model, images) -> pre_logits`` (for the few-shot evaluators), and optionally ``eval_metrics(model, batch) -> {name: per-example values}`` that the held-out
evaluator averages with the padding mask. The loop, sharding, checkpoints, logging and evaluation are shared.
"""

from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Traits:
  """What the rest of the code needs to know about a method without building it (transfer,
  the study, conversion, the bench, the report): asked through :func:`traits`, never by
  comparing method names."""

  image_tower: str  # the image tower's path in the model's parameters ('': the model itself)
  text_tower: bool = False  # a text encoder: tokenizer, zero-shot, retrieval, text-built heads
  normalized_features: bool = False  # transfer L2-normalises its features by default
  needs_labels: bool = False  # trains on class labels (num_classes from the data)


METHODS = {"supervised": "big_transfer.methods.supervised:Method",
           "simclr": "big_transfer.methods.simclr:Method",
           "clip": "big_transfer.methods.clip:Method",
           "slip": "big_transfer.methods.clip:SLIPMethod"}

TRAITS = {"supervised": Traits(image_tower="", needs_labels=True),
          "simclr": Traits(image_tower="backbone", normalized_features=True),
          "clip": Traits(image_tower="image", text_tower=True, normalized_features=True),
          "slip": Traits(image_tower="image", text_tower=True, normalized_features=True)}

NO_METHOD = Traits(image_tower="")  # a run from scratch, a name no registry knows

TEXT_METHODS = tuple(m for m, t in TRAITS.items() if t.text_tower)


def traits(name: str | None) -> Traits:
  """The traits of method ``name`` (those of no method for None or an unknown name)."""
  return TRAITS.get(name, NO_METHOD) if name else NO_METHOD


def has_text_tower(name: str | None) -> bool:
  return traits(name).text_tower


def get(name: str, config, info):
  """Builds the method ``name`` for a resolved config and the training data's ``info``."""
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
  module, _, cls = METHODS[name].partition(":")
  return getattr(importlib.import_module(module), cls)(config, info)
