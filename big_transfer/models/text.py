"""CLIP's text tower: a causal pre-LayerNorm transformer over BPE tokens; the text's features
are the final LayerNorm's output at the end-of-text token, projected to the shared embedding."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from big_transfer.models.vit import EncoderBlock


class TextTransformer(nnx.Module):
  """Defaults are CLIP's published text tower (width 512, 12 layers, 8 heads, context 77,
  vocabulary 49,408). ``eot_id``: the end-of-text token, whose position gives the features
  (CLIP's vocabularies put it last, so it is also the row's largest id)."""

  def __init__(
    self,
    *,
    vocab_size: int = 49408,
    context_length: int = 77,
    width: int = 512,
    layers: int = 12,
    heads: int = 8,
    mlp_ratio: float = 4.0,
    embed_dim: int = 1024,
    eot_id: int | None = None,
    act: str = "gelu",
    dtype: Any = None,
    rngs: nnx.Rngs,
  ):
    if width % heads:
      raise ValueError(f"text width {width} is not divisible by {heads} heads")
    self.context_length, self.eot_id = context_length, eot_id
    self.token_embed = nnx.Embed(
      vocab_size, width, dtype=dtype, embedding_init=nnx.initializers.normal(0.02), rngs=rngs
    )
    self.pos_embed = nnx.Param(0.01 * jax.random.normal(rngs.params(), (context_length, width)))
    self.blocks = nnx.List(
      [
        EncoderBlock(
          width, int(width * mlp_ratio), heads, eps=1e-5, act=act, dtype=dtype, rngs=rngs
        )
        for _ in range(layers)
      ]
    )
    self.norm = nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.projection = nnx.Param(width**-0.5 * jax.random.normal(rngs.params(), (width, embed_dim)))
    self.dtype = dtype
    self.num_features = embed_dim

  def eot_positions(self, tokens):
    if self.eot_id is None:
      return jnp.argmax(tokens, axis=-1)
    return jnp.argmax(tokens == self.eot_id, axis=-1)  # the first end-of-text token

  def __call__(self, tokens):
    n, t = tokens.shape
    if t > self.context_length:
      raise ValueError(f"{t} tokens exceed the text tower's context of {self.context_length}")
    x = self.token_embed(tokens) + self.pos_embed.get_value()[:t].astype(
      self.token_embed.dtype or jnp.float32
    )
    causal = jnp.tril(jnp.ones((t, t), bool))[None, None]  # position i sees 0..i
    for block in self.blocks:
      x = block(x, mask=causal)
    x = self.norm(x)
    pooled = x[jnp.arange(n), self.eot_positions(tokens)]
    return pooled @ self.projection.get_value().astype(pooled.dtype)
