"""A model family as a plug-in: ``tinycnn_W`` — two convolutions of width W and global average
pooling. One file; registered with one line:

  models.register(r"tinycnn_(\\d+)", lambda m: (TinyCNN, {"width": int(m[1])}))
"""

import jax.numpy as jnp
from flax import nnx


class TinyCNN(nnx.Module):
  def __init__(self, *, width: int, num_classes: int, rngs: nnx.Rngs, dtype=None):
    self.num_features = width
    self.conv1 = nnx.Conv(3, width, (3, 3), strides=2, rngs=rngs)
    self.conv2 = nnx.Conv(width, width, (3, 3), strides=2, rngs=rngs)
    self.head = nnx.Linear(width, num_classes, rngs=rngs) if num_classes else None

  def __call__(self, x, train: bool = False, rngs=None):
    x = nnx.relu(self.conv2(nnx.relu(self.conv1(x.astype(jnp.float32)))))
    pre_logits = x.mean(axis=(1, 2))
    logits = self.head(pre_logits) if self.head is not None else pre_logits
    return logits, {"pre_logits": pre_logits}
