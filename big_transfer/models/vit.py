"""Vision Transformer (Dosovitskiy et al.), Flax NNX, pre-LayerNorm as in big_vision/timm."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from big_transfer.models.resnet import resample_grid_embedding

# width, depth, mlp_dim, heads
VARIANTS = {
  "ti": (192, 12, 768, 3),
  "s": (384, 12, 1536, 6),
  "m": (512, 12, 2048, 8),
  "b": (768, 12, 3072, 12),
  "l": (1024, 24, 4096, 16),
  "h": (1280, 32, 5120, 16),
}

_xavier = nnx.initializers.xavier_uniform()


ATTENTION_IMPLS = ("", "xla", "cudnn")


class MultiHeadSelfAttention(nnx.Module):
  """Fused qkv projection (as timm/OpenCLIP store it), scaled dot-product attention through
  ``jax.nn.dot_product_attention``: ``attention_impl`` '' lets JAX choose, 'xla' or 'cudnn'
  (the fused cuDNN kernel, NVIDIA GPUs with bf16/fp16) ask for one."""

  def __init__(self, dim, heads, *, attention_impl: str = "", dtype=None, rngs):
    if attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl {attention_impl!r} not in {ATTENTION_IMPLS}")
    self.qkv = nnx.Linear(dim, 3 * dim, kernel_init=_xavier, dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, kernel_init=_xavier, dtype=dtype, rngs=rngs)
    self.heads = heads
    self.attention_impl = attention_impl

  def __call__(self, x, mask=None):
    n, t, d = x.shape
    qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    o = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.attention_impl or None)
    return self.proj(o.reshape(n, t, d))


def quick_gelu(x):
  """OpenAI CLIP's GELU approximation, x * sigmoid(1.702 x) (its checkpoints need it)."""
  return x * jax.nn.sigmoid(1.702 * x)


# 'gelu' is exact (PyTorch's nn.GELU, timm); 'gelu_tanh' is Flax's default approximation, which
# big_vision's ViTs were trained with; 'quick_gelu' is OpenAI CLIP's.
ACTIVATIONS = {
  "gelu": lambda x: nnx.gelu(x, approximate=False),
  "gelu_tanh": lambda x: nnx.gelu(x, approximate=True),
  "quick_gelu": quick_gelu,
}


class MlpBlock(nnx.Module):
  def __init__(self, dim, hidden, *, act: str = "gelu", dtype=None, rngs):
    if act not in ACTIVATIONS:
      raise ValueError(f"activation {act!r} not in {tuple(ACTIVATIONS)}")
    self.act = act
    init_b = nnx.initializers.normal(1e-6)
    self.fc1 = nnx.Linear(
      dim, hidden, kernel_init=_xavier, bias_init=init_b, dtype=dtype, rngs=rngs
    )
    self.fc2 = nnx.Linear(
      hidden, dim, kernel_init=_xavier, bias_init=init_b, dtype=dtype, rngs=rngs
    )

  def __call__(self, x):
    return self.fc2(ACTIVATIONS[self.act](self.fc1(x)))


class EncoderBlock(nnx.Module):
  def __init__(
    self,
    dim,
    mlp_dim,
    heads,
    *,
    dropout=0.0,
    eps=1e-6,
    act="gelu",
    attention_impl: str = "",
    dtype=None,
    rngs,
  ):
    self.norm1 = nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, rngs=rngs)
    self.attn = MultiHeadSelfAttention(
      dim, heads, attention_impl=attention_impl, dtype=dtype, rngs=rngs
    )
    self.norm2 = nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, rngs=rngs)
    self.mlp = MlpBlock(dim, mlp_dim, act=act, dtype=dtype, rngs=rngs)
    self.dropout = dropout

  def _drop(self, x, train, rngs):
    if not train or self.dropout == 0.0 or rngs is None:
      return x
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - self.dropout, x.shape)
    return jnp.where(keep, x / (1.0 - self.dropout), 0).astype(x.dtype)

  def __call__(self, x, train=False, rngs=None, mask=None):
    x = x + self._drop(self.attn(self.norm1(x), mask=mask), train, rngs)
    return x + self._drop(self.mlp(self.norm2(x)), train, rngs)


# OpenAI CLIP's ViT form (add act='quick_gelu' for OpenAI's own weights).
CLIP_VIT_KWARGS = {"eps": 1e-5, "patch_bias": False, "ln_pre": True}


class ViT(nnx.Module):
  """ViT with a class token ('tok' pooling) or global average pooling ('gap').

  The defaults are big_vision/timm's ViT (LayerNorm eps 1e-6, exact GELU, a patch embedding with
  a bias). OpenAI/OpenCLIP's CLIP ViT is ``act='quick_gelu'`` (OpenAI's weights) or ``'gelu'``,
  ``eps=1e-5``, ``patch_bias=False``, ``ln_pre=True`` (a LayerNorm after the position
  embeddings): CLIP_VIT_KWARGS."""

  def __init__(
    self,
    variant: str = "b",
    patch: int = 16,
    *,
    num_classes: int = 1000,
    image_size: int = 224,
    pool: str = "tok",
    width: int | None = None,
    depth: int | None = None,
    mlp_dim: int | None = None,
    heads: int | None = None,
    dropout: float = 0.0,
    head_zero_init: bool = True,
    act: str = "gelu",
    eps: float = 1e-6,
    patch_bias: bool = True,
    ln_pre: bool = False,
    attention_impl: str = "",
    dtype: Any = None,
    rngs: nnx.Rngs,
  ):
    w, d, m, h = VARIANTS[variant]
    w, d, m, h = width or w, depth or d, mlp_dim or m, heads or h
    if pool not in ("tok", "gap"):
      raise ValueError(f"ViT pool {pool!r} not in ('tok', 'gap')")
    self.patch, self.pool = patch, pool
    self.patch_embed = nnx.Conv(
      3,
      w,
      (patch, patch),
      strides=(patch, patch),
      padding="VALID",
      use_bias=patch_bias,
      kernel_init=nnx.initializers.lecun_normal(),
      dtype=dtype,
      rngs=rngs,
    )
    grid = image_size // patch
    n_prefix = 1 if pool == "tok" else 0
    self.cls_token = nnx.Param(jnp.zeros((1, 1, w))) if pool == "tok" else None
    self.pos_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (grid * grid + n_prefix, w)))
    self.ln_pre = nnx.LayerNorm(w, epsilon=eps, dtype=dtype, rngs=rngs) if ln_pre else None
    self.blocks = nnx.List(
      [
        EncoderBlock(
          w,
          m,
          h,
          dropout=dropout,
          eps=eps,
          act=act,
          attention_impl=attention_impl,
          dtype=dtype,
          rngs=rngs,
        )
        for _ in range(d)
      ]
    )
    self.norm = nnx.LayerNorm(w, epsilon=eps, dtype=dtype, rngs=rngs)
    self.num_features = w
    init = nnx.initializers.zeros if head_zero_init else _xavier
    self.head = (
      nnx.Linear(w, num_classes, kernel_init=init, dtype=dtype, rngs=rngs) if num_classes else None
    )

  def tokens(self, x, train=False, rngs=None):
    x = self.patch_embed(x)
    n, gh, gw, c = x.shape
    x = x.reshape(n, gh * gw, c)
    n_prefix = 1 if self.cls_token is not None else 0
    pos = self.pos_embed.get_value()
    if pos.shape[0] != gh * gw + n_prefix:  # another resolution than the one trained at
      pos = resample_grid_embedding(pos, gh, gw, num_prefix=n_prefix)
    if self.cls_token is not None:
      cls = jnp.broadcast_to(self.cls_token.get_value(), (n, 1, c)).astype(x.dtype)
      x = jnp.concatenate([cls, x], axis=1)
    x = x + pos.astype(x.dtype)
    if self.ln_pre is not None:
      x = self.ln_pre(x)
    for block in self.blocks:
      x = block(x, train=train, rngs=rngs)
    return self.norm(x)

  def __call__(self, x, train: bool = False, rngs=None, mask=None):
    """(logits, {pre_logits, tokens}). ``mask`` (per-example weights of batch statistics, for a
    padded batch) changes nothing: a ViT has no batch statistics, every row is its own."""
    del mask
    t = self.tokens(x, train, rngs)
    pre_logits = t[:, 0] if self.pool == "tok" else t.mean(axis=1)
    logits = self.head(pre_logits) if self.head is not None else None
    return logits, {"pre_logits": pre_logits, "tokens": t}
