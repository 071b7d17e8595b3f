"""Model zoo: published parameter counts, shapes, pre_logits, resolution changes, precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from big_transfer import models

# Published counts (torchvision/timm/BiT/CLIP/ViT papers), 1000-class heads unless noted.
PUBLISHED = {
  ("resnet18", 1000): 11_689_512,
  ("resnet26", 1000): 15_995_176,
  ("resnet50", 1000): 25_557_032,
  ("resnet101", 1000): 44_549_160,
  ("bit_r50x1", 1000): 25_549_352,
  ("bit_r101x3", 1000): 387_934_888,
  ("clip_rn50", 0): 38_316_896,  # CLIP RN50 image tower, embedding 1024
  ("vit_ti16", 1000): 5_717_416,
  ("vit_s16", 1000): 22_050_664,
  ("vit_b16", 1000): 86_567_656,
  ("vit_b32", 1000): 88_224_232,
  ("vit_l16", 1000): 304_326_632,
}


@pytest.mark.parametrize("name,classes", sorted(PUBLISHED))
def test_parameter_counts_match_published(name, classes):
  assert models.count_params(name, num_classes=classes) == PUBLISHED[(name, classes)]


TINY = {
  "resnet18": dict(width=0.125),
  "resnet26": dict(width=0.125),
  "bit_r26x1": dict(width=0.5),  # GroupNorm(32) needs >= 32 channels
  "clip_rn26": dict(width=0.25, embed_dim=32, image_size=64, attn_heads=4),
  "vit_ti16": dict(width=32, depth=2, mlp_dim=64, heads=2, image_size=64),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_returns_logits_and_pre_logits(name):
  model = models.init(name, num_classes=7, **TINY[name])
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  logits, out = nnx.jit(lambda m, x: m(x, train=False))(model, x)
  assert logits.shape == (2, 7)
  assert out["pre_logits"].shape == (2, model.num_features)
  # The logits are the head applied to pre_logits: what transfer builds on.
  np.testing.assert_allclose(model.head(out["pre_logits"]), logits, rtol=1e-5, atol=1e-6)


def test_headless_model_returns_no_logits():
  model = models.init("vit_ti16", num_classes=0, **TINY["vit_ti16"])
  assert model.head is None
  logits, out = nnx.jit(lambda m, x: m(x))(model, jnp.ones((1, 64, 64, 3)))
  assert logits is None and out["pre_logits"].shape == (1, 32)


def test_vit_runs_at_another_resolution_by_resampling_position_embeddings():
  model = models.init("vit_ti16", num_classes=3, **TINY["vit_ti16"])
  assert model.pos_embed.value.shape == (1 + 16, 32)
  logits, out = nnx.jit(lambda m, x: m(x))(model, jnp.ones((1, 96, 96, 3)))
  assert logits.shape == (1, 3) and out["tokens"].shape == (1, 1 + 36, 32)


def test_weight_standardisation_makes_bit_invariant_to_kernel_scale():
  conv = models.resnet.StdConv(3, 8, (3, 3), padding=[(1, 1)] * 2, use_bias=False, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 3))
  y1 = conv(x)
  conv.kernel.value = conv.kernel.value * 5.0 + 0.3
  np.testing.assert_allclose(conv(x), y1, rtol=1e-4, atol=1e-4)


def test_bfloat16_compute_keeps_float32_parameters():
  model = models.init("resnet18", num_classes=4, dtype=jnp.bfloat16, width=0.125)
  logits, out = nnx.jit(lambda m, x: m(x))(model, jnp.ones((1, 32, 32, 3), jnp.bfloat16))
  assert logits.dtype == jnp.bfloat16
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {np.dtype("float32")}


def test_batchnorm_statistics_update_in_training_only():
  model = models.init("resnet18", num_classes=4, width=0.125)
  before = jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat))
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3)) + 3.0
  fwd = nnx.jit(lambda m, x, train: m(x, train=train), static_argnums=2)
  fwd(model, x, False)
  same = nnx.state(model, nnx.BatchStat)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(same)))
  fwd(model, x, True)
  after = nnx.state(model, nnx.BatchStat)
  assert not all(
    np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))
  )


def test_unknown_model_names_the_known_forms():
  with pytest.raises(ValueError, match="resnetD, bit_rDxW, clip_rnD"):
    models.parse("resnet7")
  with pytest.raises(ValueError, match="known forms"):
    models.parse("vgg16")


def test_vit_attention_implementation_is_a_choice_with_the_same_numbers():
  import numpy as np
  from flax import nnx

  kw = dict(TINY["vit_ti16"], num_classes=3)
  default = models.init("vit_ti16", **kw)
  xla = models.init("vit_ti16", attention_impl="xla", **kw)
  nnx.update(xla, nnx.state(default))
  x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(xla(x)[0]), np.asarray(default(x)[0]), atol=1e-5)
  with pytest.raises(ValueError, match="attention_impl 'flash'"):
    models.init("vit_ti16", attention_impl="flash", **kw)


@pytest.mark.parametrize(
  "name",  # the other two families: slow (~40 s), the same code path with other block layouts
  [
    "resnet26",
    pytest.param("bit_r26x1", marks=pytest.mark.slow),
    pytest.param("clip_rn26", marks=pytest.mark.slow),
  ],
)
def test_resnet_pointwise_convs_as_matmuls_give_the_same_numbers(name):
  """The 1x1 convolutions (block convs and strided projections) as matmuls — the CPU default,
  BENCHMARKS.md — hold the same parameters and give the conv's outputs and gradients."""
  # No zero-initialised head or last-BN scales: every weight gets a gradient.
  kw = dict(TINY[name], num_classes=5, head_zero_init=False, zero_init_last=False)
  conv = models.init(name, pointwise="conv", **kw)
  dot = models.init(name, **kw)  # the default on CPU: matmuls
  assert jax.tree.all(jax.tree.map(np.array_equal, nnx.state(dot), nnx.state(conv)))
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))

  def conv_ops(model):
    return str(jax.make_jaxpr(lambda v: model(v, train=False))(x)).count("conv_general_dilated")

  assert conv_ops(dot) < conv_ops(conv)

  def loss_and_grads(model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, r):
      logits, _ = nnx.merge(graphdef, p, r)(x, train=False)
      return jnp.sum(logits**2) + jnp.sum(logits[:, 0])

    return jax.jit(jax.value_and_grad(loss))(params, rest)

  (l_conv, g_conv), (l_dot, g_dot) = loss_and_grads(conv), loss_and_grads(dot)
  np.testing.assert_allclose(float(l_dot), float(l_conv), rtol=1e-5)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g_conv))
  for a, b in zip(jax.tree.leaves(g_dot), jax.tree.leaves(g_conv)):
    assert float(jnp.max(jnp.abs(b))) > 0
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4 * scale)
  with pytest.raises(ValueError, match="pointwise='fast'"):
    models.init(name, pointwise="fast", **kw)


@pytest.mark.parametrize("method", ["supervised", "simclr", "clip"])
def test_every_method_gives_a_vit_its_dropout(method):
  """One model signature, ``model(x, *, train, rngs)``: under every method a ViT's dropout
  follows the step's rng (two rngs, two losses) and is off at 0."""
  import jax
  import numpy as np
  from flax import nnx

  from big_transfer import config_lib, methods
  from big_transfer.data import tokenizer

  def loss(dropout, key):
    c = config_lib.base_config()
    c.method, c.model = method, "vit_ti16"
    c.model_kwargs = dict(
      image_size=32,
      patch=8,
      width=32,
      depth=2,
      mlp_dim=64,
      heads=2,
      dropout=dropout,
      head_zero_init=False,
    )
    c.projection_dims, c.clip.embed_dim = (32, 16), 16
    c.text.update(width=32, layers=1, heads=2, context_length=8)
    tok = tokenizer.train(["a photo of a cat", "a drawing of a dog"] * 20, vocab_size=520)
    m = methods.get(method, c, {"num_classes": 3, "class_names": None, "tokenizer": tok})
    model = m.create_model(nnx.Rngs(0))
    rng = np.random.default_rng(0)
    img = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    batch = {
      "image": img,
      "label": np.arange(4) % 3,
      "image1": img,
      "image2": img[::-1],
      "text": tok.tokenize(["a photo of a cat"] * 2 + ["a drawing of a dog"] * 2, 8),
    }
    return float(m.loss(model, batch, nnx.Rngs(dropout=jax.random.key(key)))[0])

  assert loss(0.5, 1) != loss(0.5, 2)
  assert loss(0.0, 1) == loss(0.0, 2)
