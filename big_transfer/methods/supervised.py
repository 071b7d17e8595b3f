"""Supervised pre-training: a classification head on the backbone, softmax cross-entropy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from big_transfer import models
from big_transfer.methods.base import Method as Base
from big_transfer.methods.base import Traits


class Method(Base):
  name = "supervised"
  traits = Traits(image_tower="", needs_labels=True)
  batch_keys = ("image", "label")

  def __init__(self, config, info):
    super().__init__(config, info)
    self.num_classes = info["num_classes"]
    self.label_smoothing = float(config.get("label_smoothing", 0.0))

  def create_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return models.create(
      self.config.model,
      num_classes=self.num_classes,
      rngs=rngs,
      dtype=self.dtype,
      **self.config.model_kwargs.to_dict(),
    )

  def _logits(self, model, batch, train, rngs=None):
    logits, _ = model(batch["image"].astype(self.dtype), train=train, rngs=rngs)
    return logits.astype(jnp.float32)

  def predictions(self):
    return {"metrics": self.eval_metrics, "features": self.features}

  def features(self, model, images):
    """pre_logits of a batch of images (what transfer builds on)."""
    return model(images.astype(self.dtype), train=False)[1]["pre_logits"]

  def loss(self, model, batch, rngs=None):
    logits = self._logits(model, batch, True, rngs)
    labels = jax.nn.one_hot(batch["label"], self.num_classes)
    if self.label_smoothing:
      labels = optax.smooth_labels(labels, self.label_smoothing)
    loss = optax.softmax_cross_entropy(logits, labels).mean()
    acc = (logits.argmax(-1) == batch["label"]).mean()
    return loss, {"accuracy": acc}

  def eval_metrics(self, model, batch):
    logits = self._logits(model, batch, False)
    labels = batch["label"]
    out = {
      "accuracy": (logits.argmax(-1) == labels).astype(jnp.float32),
      "loss": optax.softmax_cross_entropy_with_integer_labels(logits, labels),
    }
    if self.num_classes > 5:
      top5 = jax.lax.top_k(logits, 5)[1]
      out["top5_accuracy"] = (top5 == labels[:, None]).any(-1).astype(jnp.float32)
    return out
