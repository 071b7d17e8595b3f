"""ResNets in three forms, Flax NNX.

- ``v1.5``: the classic torchvision/timm ResNet (BatchNorm, stride on the 3x3 conv).
- ``v2``: BiT's pre-activation ResNet (GroupNorm + weight-standardised convs).
- ``clip``: CLIP's modified ResNet (3-conv stem, anti-aliased strided convs via
  average pooling, attention pooling instead of global average pooling).

Paddings follow the PyTorch reference implementations exactly (symmetric ``k // 2``),
so converted checkpoints give the same numbers. Every model returns
``(logits, {"pre_logits": features, ...})``; ``logits`` is ``None`` when the model was
built with ``num_classes=0``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# Blocks per stage, and whether the stages use bottleneck blocks.
DEPTHS = {
  18: ((2, 2, 2, 2), False),
  26: ((2, 2, 2, 2), True),
  34: ((3, 4, 6, 3), False),
  50: ((3, 4, 6, 3), True),
  101: ((3, 4, 23, 3), True),
  152: ((3, 8, 36, 3), True),
}

_he_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pad(k: int) -> list[tuple[int, int]]:
  return [(k // 2, k // 2)] * 2


POINTWISE_MODES = ("auto", "dot", "conv")


def _pointwise_as_dot(mode: str) -> bool:
  """Whether a 1x1 convolution runs as a matmul. ``auto``: on CPU only, where XLA computes a
  1x1 conv's weight gradient as a convolution over a window the size of the feature map with
  the batch as its input channels (YNNPACK at ~11 GFLOP/s) and the matmul form is 1.5-4.5x
  faster (BENCHMARKS.md). GPUs and TPUs keep convolutions (their libraries run 1x1s as GEMMs);
  ``launch/gpu_bench.sh`` measures both forms on a GPU, not yet run."""
  if mode not in POINTWISE_MODES:
    raise ValueError(f"pointwise={mode!r} not in {POINTWISE_MODES}")
  return mode == "dot" or (mode == "auto" and jax.default_backend() == "cpu")


class Conv(nnx.Conv):
  """``nnx.Conv`` (same parameters) whose 1x1 convolutions may run as matmuls (``pointwise``):
  the same numbers to float rounding, another kernel."""

  def __init__(self, *args, pointwise: str = "auto", **kwargs):
    super().__init__(*args, **kwargs)
    _pointwise_as_dot(pointwise)  # validated here, decided at trace time (the backend)
    self.pointwise = pointwise

  def _weight(self):
    return self.kernel.get_value()

  def __call__(self, x):
    w = self._weight()
    dtype = self.dtype or x.dtype
    x, w = x.astype(dtype), w.astype(dtype)
    strides = self.strides
    strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
    pad = [tuple(p) for p in self.padding] if not isinstance(self.padding, str) else None
    if (
      w.shape[:2] == (1, 1)
      and pad == [(0, 0), (0, 0)]
      and self.feature_group_count == 1
      and _pointwise_as_dot(self.pointwise)
    ):
      if strides != (1, 1):
        x = x[:, :: strides[0], :: strides[1], :]
      y = jax.lax.dot_general(x, w[0, 0], (((x.ndim - 1,), (0,)), ((), ())))
    else:
      y = jax.lax.conv_general_dilated(
        x,
        w,
        window_strides=strides,
        padding=self.padding,
        feature_group_count=self.feature_group_count,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
      )
    if self.bias is not None:
      y = y + self.bias.get_value().astype(dtype)
    return y


class StdConv(Conv):
  """Convolution with weight standardisation (BiT): kernel normalised per output channel."""

  def __init__(self, *args, eps: float = 1e-8, **kwargs):
    super().__init__(*args, **kwargs)
    self.eps = eps

  def _weight(self):
    w = self.kernel.get_value()
    mean = jnp.mean(w, axis=(0, 1, 2), keepdims=True)
    var = jnp.var(w, axis=(0, 1, 2), keepdims=True)
    return (w - mean) * jax.lax.rsqrt(var + self.eps)


def _conv(cin, cout, k, stride=1, *, std=False, dtype=None, pointwise="auto", rngs):
  cls = StdConv if std else Conv
  return cls(
    cin,
    cout,
    (k, k),
    strides=(stride, stride),
    padding=_pad(k),
    use_bias=False,
    kernel_init=_he_init,
    dtype=dtype,
    pointwise=pointwise,
    rngs=rngs,
  )


def _max_pool(x, zero_pad: bool = False):
  """3x3/2 max pool; torch pads with -inf, BiT's 'fixed' stem pads with zeros."""
  if zero_pad:
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return nnx.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
  return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def _avg_pool(x, s):
  return nnx.avg_pool(x, (s, s), strides=(s, s)) if s > 1 else x


class Norm(nnx.Module):
  """BatchNorm (v1.5, clip) or GroupNorm (v2), one call signature."""

  def __init__(self, c, kind, *, zero_init=False, dtype=None, rngs):
    scale_init = nnx.initializers.zeros if zero_init else nnx.initializers.ones
    if kind == "bn":
      # PyTorch's momentum 0.1 is Flax's 0.9; eps as torchvision.
      self.norm = nnx.BatchNorm(
        c, momentum=0.9, epsilon=1e-5, scale_init=scale_init, dtype=dtype, rngs=rngs
      )
    else:
      self.norm = nnx.GroupNorm(
        c, num_groups=32, epsilon=1e-5, scale_init=scale_init, dtype=dtype, rngs=rngs
      )
    self.kind = kind

  def __call__(self, x, train: bool, mask=None):
    """``mask``: per-example weights of the batch statistics (0: a padded row, left out of
    them); GroupNorm's statistics are per example and need none."""
    if self.kind == "bn":
      if mask is not None:
        mask = jnp.broadcast_to(mask.reshape((-1,) + (1,) * (x.ndim - 1)) > 0, x.shape)
      return self.norm(x, use_running_average=not train, mask=mask)
    return self.norm(x)


class Block(nnx.Module):
  """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual block, in any of the three forms."""

  def __init__(
    self,
    cin,
    c,
    stride,
    *,
    bottleneck,
    version,
    zero_init_last,
    dtype,
    rngs,
    pointwise: str = "auto",
  ):
    self.version, self.stride, self.bottleneck = version, stride, bottleneck
    std = version == "v2"
    norm = "gn" if std else "bn"
    cout = c * 4 if bottleneck else c
    # CLIP puts the stride in an avg-pool before the last conv (anti-aliasing).
    conv_stride = 1 if version == "clip" else stride
    if bottleneck:
      self.conv1 = _conv(cin, c, 1, std=std, dtype=dtype, pointwise=pointwise, rngs=rngs)
      self.conv2 = _conv(c, c, 3, conv_stride, std=std, dtype=dtype, rngs=rngs)
      self.conv3 = _conv(c, cout, 1, std=std, dtype=dtype, pointwise=pointwise, rngs=rngs)
      chans = (cin if std else c, c, c if std else cout)
    else:
      self.conv1 = _conv(cin, c, 3, conv_stride, std=std, dtype=dtype, rngs=rngs)
      self.conv2 = _conv(c, c, 3, std=std, dtype=dtype, rngs=rngs)
      self.conv3 = None
      chans = (cin if std else c, c)
    # v2 is pre-activation: its norms see the block input and the inner activations.
    zero_last = zero_init_last and not std
    self.norms = nnx.List(
      [
        Norm(ch, norm, zero_init=zero_last and i == len(chans) - 1, dtype=dtype, rngs=rngs)
        for i, ch in enumerate(chans)
      ]
    )
    needs_proj = stride != 1 or cin != cout
    self.proj = (
      _conv(
        cin,
        cout,
        1,
        1 if version == "clip" else stride,
        std=std,
        dtype=dtype,
        pointwise=pointwise,
        rngs=rngs,
      )
      if needs_proj
      else None
    )
    self.proj_norm = Norm(cout, norm, dtype=dtype, rngs=rngs) if needs_proj and not std else None

  def __call__(self, x, train, mask=None):
    convs = [self.conv1, self.conv2] + ([self.conv3] if self.conv3 is not None else [])
    if self.version == "v2":
      # BiT: the projection sees the pre-activated input, the identity shortcut the raw one.
      y = nnx.relu(self.norms[0](x, train))
      shortcut = self.proj(y) if self.proj is not None else x
      for i, conv in enumerate(convs):
        if i > 0:
          y = nnx.relu(self.norms[i](y, train))
        y = conv(y)
      return y + shortcut

    shortcut = x
    if self.proj is not None:
      s = x
      if self.version == "clip":
        s = _avg_pool(s, self.stride)
      shortcut = self.proj_norm(self.proj(s), train, mask)
    y = x
    for i, conv in enumerate(convs):
      if self.version == "clip" and i == len(convs) - 1:
        y = _avg_pool(y, self.stride)
      y = self.norms[i](conv(y), train, mask)
      if i < len(convs) - 1:
        y = nnx.relu(y)
    return nnx.relu(y + shortcut)


class AttentionPool(nnx.Module):
  """CLIP's attention pooling: the mean token attends over the spatial grid (+ itself)."""

  def __init__(self, spatial, dim, heads, out_dim, *, dtype, rngs):
    self.pos_embed = nnx.Param(
      jax.random.normal(rngs.params(), (spatial * spatial + 1, dim)) / dim**0.5
    )
    lin = lambda a, b: nnx.Linear(a, b, dtype=dtype, rngs=rngs)
    self.q, self.k, self.v, self.c = lin(dim, dim), lin(dim, dim), lin(dim, dim), lin(dim, out_dim)
    self.heads = heads

  def __call__(self, x):
    n, h, w, d = x.shape
    x = x.reshape(n, h * w, d)
    x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
    pos = self.pos_embed.get_value()
    if pos.shape[0] != x.shape[1]:
      pos = resample_grid_embedding(pos, h, w, num_prefix=1)
    x = x + pos.astype(x.dtype)
    split = lambda t: t.reshape(n, t.shape[1], self.heads, d // self.heads)
    q = split(self.q(x[:, :1]))
    k, v = split(self.k(x)), split(self.v(x))
    o = jax.nn.dot_product_attention(q, k, v)  # (n, 1, heads, d/heads)
    return self.c(o.reshape(n, d))


def resample_grid_embedding(pos, h, w, num_prefix=1):
  """Bilinearly resizes a square grid of position embeddings to h x w (prefix tokens kept)."""
  prefix, grid = pos[:num_prefix], pos[num_prefix:]
  g = int(round(grid.shape[0] ** 0.5))
  grid = grid.reshape(g, g, -1)
  grid = jax.image.resize(grid, (h, w, grid.shape[-1]), method="bilinear")
  return jnp.concatenate([prefix, grid.reshape(h * w, -1)], axis=0)


class ResNet(nnx.Module):
  """ResNet of a given depth and width multiplier in the 'v1.5', 'v2' (BiT) or 'clip' form.

  ``pointwise``: how the blocks' 1x1 convolutions run: ``auto`` (matmuls on CPU, convolutions
  elsewhere), ``dot`` or ``conv``; the parameters and the numbers (to float rounding) are the
  same either way."""

  def __init__(
    self,
    depth: int = 50,
    *,
    version: str = "v1.5",
    width: float = 1.0,
    num_classes: int = 1000,
    stem_width: int | None = None,
    embed_dim: int = 1024,
    image_size: int = 224,
    attn_heads: int | None = None,
    zero_init_last: bool = True,
    head_zero_init: bool = True,
    dtype: Any = None,
    pointwise: str = "auto",
    rngs: nnx.Rngs,
  ):
    if depth not in DEPTHS:
      raise ValueError(f"ResNet depth {depth} not in {sorted(DEPTHS)}")
    if version not in ("v1.5", "v2", "clip"):
      raise ValueError(f"ResNet version {version!r} not in ('v1.5', 'v2', 'clip')")
    blocks, bottleneck = DEPTHS[depth]
    self.version = version
    c = int(64 * width)
    std = version == "v2"
    if version == "clip":
      # Three 3x3 convs (c/2, c/2, c) then a 2x2 average pool.
      cs = stem_width or c
      self.stem = nnx.List(
        [
          _conv(3, cs // 2, 3, 2, dtype=dtype, rngs=rngs),
          _conv(cs // 2, cs // 2, 3, dtype=dtype, rngs=rngs),
          _conv(cs // 2, cs, 3, dtype=dtype, rngs=rngs),
        ]
      )
      self.stem_norms = nnx.List(
        [Norm(ch, "bn", dtype=dtype, rngs=rngs) for ch in (cs // 2, cs // 2, cs)]
      )
      cin = cs
    else:
      cs = stem_width or c
      self.stem = nnx.List([_conv(3, cs, 7, 2, std=std, dtype=dtype, rngs=rngs)])
      self.stem_norms = nnx.List([] if std else [Norm(cs, "bn", dtype=dtype, rngs=rngs)])
      cin = cs
    stages = []
    for i, n in enumerate(blocks):
      ch = c * 2**i
      stage = []
      for j in range(n):
        stride = 2 if (j == 0 and i > 0) else 1
        stage.append(
          Block(
            cin,
            ch,
            stride,
            bottleneck=bottleneck,
            version=version,
            zero_init_last=zero_init_last,
            dtype=dtype,
            pointwise=pointwise,
            rngs=rngs,
          )
        )
        cin = ch * 4 if bottleneck else ch
      stages.append(nnx.List(stage))
    self.stages = nnx.List(stages)
    self.final_norm = Norm(cin, "gn", dtype=dtype, rngs=rngs) if std else None
    # CLIP's heads: its width * 32 / 64 (32 for RN50, whose width is 64).
    self.attnpool = (
      AttentionPool(
        image_size // 32, cin, attn_heads or max(1, c * 32 // 64), embed_dim, dtype=dtype, rngs=rngs
      )
      if version == "clip"
      else None
    )
    self.num_features = embed_dim if version == "clip" else cin
    init = nnx.initializers.zeros if head_zero_init else nnx.initializers.lecun_normal()
    self.head = (
      nnx.Linear(self.num_features, num_classes, kernel_init=init, dtype=dtype, rngs=rngs)
      if num_classes
      else None
    )

  def features(self, x, train: bool = False, mask=None):
    """Returns the spatial feature map before pooling (``mask``: per-example weights of the
    BatchNorm statistics, see ``__call__``)."""
    if self.version == "clip":
      for conv, norm in zip(self.stem, self.stem_norms):
        x = nnx.relu(norm(conv(x), train, mask))
      x = _avg_pool(x, 2)
    else:
      x = self.stem[0](x)
      if self.version == "v1.5":
        x = nnx.relu(self.stem_norms[0](x, train, mask))
      x = _max_pool(x, zero_pad=self.version == "v2")
    for stage in self.stages:
      for block in stage:
        x = block(x, train, mask)
    if self.final_norm is not None:
      x = nnx.relu(self.final_norm(x, train))
    return x

  def __call__(self, x, train: bool = False, rngs=None, mask=None):
    """(logits, {pre_logits, feature_map}); the signature every model here shares (``rngs``:
    the dropout stream, which these ResNets do not use; ``mask``: per-example weights of the
    BatchNorm statistics in training, 0 for a padded row — a few-shot batch padded to a fixed
    shape trains exactly as the batch of its real rows)."""
    del rngs
    fmap = self.features(x, train, mask)
    if self.attnpool is not None:
      pre_logits = self.attnpool(fmap)
    else:
      pre_logits = fmap.mean(axis=(1, 2))
    logits = self.head(pre_logits) if self.head is not None else None
    return logits, {"pre_logits": pre_logits, "feature_map": fmap}
