"""SimCLR (Chen et al., 2020): two augmented views per image, a projection MLP with
BatchNorm, NT-Xent over the global batch.

The views come from the ``two_views(...)`` preprocessing op (keys ``image1``/``image2``). Both
views go through the network as one batch, so BatchNorm statistics (and the NT-Xent
similarities) span the whole global batch: synchronised across devices and hosts, since the
step is jitted over global arrays.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from big_transfer import models, schema
from big_transfer.methods import losses
from big_transfer.methods.base import Method as Base
from big_transfer.methods.base import Traits


class ProjectionHead(nnx.Module):
  """Linear -> BN -> ReLU, repeated, then a final Linear (no BN on the output)."""

  def __init__(self, dims, *, dtype=None, rngs: nnx.Rngs):
    self.layers = nnx.List(
      [
        nnx.Linear(a, b, use_bias=False, dtype=dtype, rngs=rngs)
        for a, b in zip(dims[:-1], dims[1:])
      ]
    )
    self.norms = nnx.List(
      [nnx.BatchNorm(d, momentum=0.9, dtype=dtype, rngs=rngs) for d in dims[1:-1]]
    )

  def __call__(self, x, train: bool):
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.norms):
        x = nnx.relu(self.norms[i](x, use_running_average=not train))
    return x


class SimCLRModel(nnx.Module):
  def __init__(self, backbone, projection):
    self.backbone = backbone
    self.projection = projection

  def __call__(self, x, train: bool = False, rngs=None):
    _, out = self.backbone(x, train=train, rngs=rngs)
    return self.projection(out["pre_logits"], train), out


SECTION = schema.Section(
  "",
  __name__,
  keys=(
    schema.Key("temperature", 0.1, "contrastive methods (SimCLR, SLIP): the NT-Xent temperature"),
    schema.Key(
      "projection_dims",
      (4096, 4096, 256),
      "contrastive methods: the projection MLP's widths after pre_logits",
    ),
  ),
)


class Method(Base):
  name = "simclr"
  config_sections = (SECTION,)
  traits = Traits(image_tower="backbone", normalized_features=True)
  batch_keys = ("image1", "image2")

  def __init__(self, config, info):
    super().__init__(config, info)
    self.temperature = float(config.get("temperature", 0.1))
    self.proj_dims = tuple(config.get("projection_dims", (4096, 4096, 256)))

  def create_model(self, rngs: nnx.Rngs) -> nnx.Module:
    backbone = models.create(
      self.config.model,
      num_classes=0,
      rngs=rngs,
      dtype=self.dtype,
      **self.config.model_kwargs.to_dict(),
    )
    head = ProjectionHead((backbone.num_features,) + self.proj_dims, dtype=self.dtype, rngs=rngs)
    return SimCLRModel(backbone, head)

  bench_optimizer = {"name": "lars", "lr": 0.3}

  @classmethod
  def training_pp(cls, decode: str, view: str) -> str:
    return f'{decode}|two_views("{view}")'  # two augmented views of each image

  def predictions(self):
    return {"features": self.features}

  def features(self, model, images):
    """The backbone's pre_logits (the projection head is for pre-training only)."""
    return model.backbone(images.astype(self.dtype), train=False)[1]["pre_logits"]

  def loss(self, model, batch, rngs=None):
    n = batch["image1"].shape[0]
    x = jnp.concatenate([batch["image1"], batch["image2"]], axis=0).astype(self.dtype)
    z, _ = model(x, train=True, rngs=rngs)  # a ViT backbone's dropout too
    loss, acc = losses.nt_xent(z[:n], z[n:], self.temperature)
    return loss, {"contrastive_accuracy": acc}
