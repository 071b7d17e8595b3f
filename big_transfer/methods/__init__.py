"""Pre-training methods as plug-ins to the one training loop.

A method provides: ``batch_keys`` (what each example must carry after preprocessing),
``create_model(rngs)``, ``loss(model, batch, rngs) -> (loss, metrics)`` for a training batch,
``features(model, images) -> pre_logits`` (for the few-shot evaluators), and optionally ``eval_metrics(model, batch) -> {name: per-example values}`` that the held-out
evaluator averages with the padding mask. The loop, sharding, checkpoints, logging and evaluation are shared.
"""

from __future__ import annotations

import importlib

METHODS = {"supervised": "big_transfer.methods.supervised:Method",
           "simclr": "big_transfer.methods.simclr:Method",
           "clip": "big_transfer.methods.clip:Method",
           "slip": "big_transfer.methods.clip:SLIPMethod"}

TEXT_METHODS = ("clip", "slip")  # methods with a text tower (tokenizer, zero-shot, retrieval)


def get(name: str, config, info):
  """Builds the method ``name`` for a resolved config and the training data's ``info``."""
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
  module, _, cls = METHODS[name].partition(":")
  return getattr(importlib.import_module(module), cls)(config, info)
