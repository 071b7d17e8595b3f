"""A pre-training method as a plug-in: RotNet (Gidaris et al., 2018) — predict which of four
rotations (0/90/180/270 degrees) an image was given. One file; registered with one line:

  methods.register("rotnet", "example_plugins.rotnet:Method")
"""

import jax.numpy as jnp
import optax
from flax import nnx

from big_transfer import methods, models, schema


def _check(config):
  if config.rotnet.rotations not in (2, 4):
    raise schema.SectionError(f"config.rotnet.rotations={config.rotnet.rotations}: 2 or 4")


# The method's own config keys (defaults, meaning, check): they join the base config.
SECTION = schema.Section(
  "rotnet",
  __name__,
  keys=(schema.Key("rotations", 4, "4: 0/90/180/270 degrees; 2: 0/180"),),
  check=_check,
)


class RotNetModel(nnx.Module):
  def __init__(self, backbone, head):
    self.backbone, self.head = backbone, head

  def __call__(self, x, train: bool = False, rngs=None):
    _, out = self.backbone(x, train=train, rngs=rngs)
    return self.head(out["pre_logits"])


class Method(methods.Method):
  name = "rotnet"
  traits = methods.Traits(image_tower="backbone")  # transfer loads params['backbone']
  batch_keys = ("image",)
  config_sections = (SECTION,)

  def create_model(self, rngs: nnx.Rngs) -> nnx.Module:
    backbone = models.create(
      self.config.model,
      num_classes=0,
      rngs=rngs,
      dtype=self.dtype,
      **self.config.model_kwargs.to_dict(),
    )
    return RotNetModel(backbone, nnx.Linear(backbone.num_features, 4, rngs=rngs))

  def loss(self, model, batch, rngs=None):
    x = batch["image"].astype(self.dtype)
    ks = range(0, 4, 4 // self.config.rotnet.rotations)
    views = jnp.concatenate([jnp.rot90(x, k, axes=(1, 2)) for k in ks])
    labels = jnp.repeat(jnp.arange(len(ks)), x.shape[0])
    logits = model(views, train=True, rngs=rngs).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {"rotation_accuracy": (logits.argmax(-1) == labels).mean()}

  def predictions(self):
    return {"features": self.features}

  def features(self, model, images):
    return model.backbone(images.astype(self.dtype), train=False)[1]["pre_logits"]
