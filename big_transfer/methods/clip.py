"""CLIP (Radford et al., 2021): an image tower and a text tower trained so that each image's
embedding finds its own caption's among all captions of the global batch, and back.

Options: SigLIP's pairwise sigmoid loss (``config.clip.loss='sigmoid'``, with a learnable bias),
and SLIP (``method='slip'``): CLIP plus SimCLR's NT-Xent on two augmented views through the same
image tower, weighted by ``config.clip.ssl_weight``.

The logit scale is learnt as log(scale), initialised at 1/0.07 (CLIP) or 10 (SigLIP) and clamped
at ``logit_scale_max`` (100) in the forward pass; 0-d parameters are never weight-decayed. The
losses see the global batch (see losses.py): every device's embeddings against every other's,
across hosts.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
from flax import nnx

from big_transfer import models, schema
from big_transfer.methods import losses, simclr
from big_transfer.methods.base import Method as Base
from big_transfer.methods.base import Traits
from big_transfer.methods.simclr import ProjectionHead
from big_transfer.models.text import TextTransformer


class CLIPModel(nnx.Module):
  """Image tower (+ a projection unless it ends in CLIP's attention pool), text tower, logit
  scale (and bias for the sigmoid loss); ``ssl_projection`` for SLIP."""

  def __init__(
    self,
    image,
    text,
    *,
    embed_dim: int,
    logit_scale_init: float,
    logit_bias_init: float | None,
    ssl_dims=None,
    dtype=None,
    rngs: nnx.Rngs,
  ):
    self.image, self.text = image, text
    width = image.num_features
    pooled = getattr(image, "attnpool", None) is not None  # CLIP's ResNet: already projected
    if pooled and width != embed_dim:
      raise ValueError(f"the attention pool outputs {width}, not embed_dim {embed_dim}")
    # ViT, v1.5/v2 ResNets: a linear projection of pre_logits (no bias, as CLIP's).
    self.image_projection = (
      None
      if pooled
      else nnx.Param(width**-0.5 * jax.random.normal(rngs.params(), (width, embed_dim)))
    )
    self.logit_scale = nnx.Param(jnp.asarray(math.log(logit_scale_init), jnp.float32))
    self.logit_bias = (
      nnx.Param(jnp.asarray(logit_bias_init, jnp.float32)) if logit_bias_init is not None else None
    )
    self.ssl_projection = (
      ProjectionHead((width,) + tuple(ssl_dims), dtype=dtype, rngs=rngs) if ssl_dims else None
    )

  def encode_image(self, images, train: bool = False, rngs=None):
    """(embedding, pre_logits) of a batch of images."""
    _, out = self.image(images, train=train, rngs=rngs)
    x = out["pre_logits"]
    if self.image_projection is None:
      return x, x
    return x @ self.image_projection.get_value().astype(x.dtype), x

  def encode_text(self, tokens):
    return self.text(tokens)


def _check(config) -> None:
  if config.clip.loss not in ("softmax", "sigmoid"):
    raise schema.SectionError(f"config.clip.loss={config.clip.loss!r}: not softmax or sigmoid")
  tok = config.text.tokenizer
  if tok.startswith("train:"):
    if not tok[6:].isdigit() or int(tok[6:]) < 514:
      raise schema.SectionError(
        f"config.text.tokenizer={tok!r}: expected train:SIZE with SIZE >= 514"
      )
  elif tok and tok != "clip" and not os.path.exists(tok):
    raise schema.SectionError(f"config.text.tokenizer={tok!r}: no such file")
  pps = [("pp_train", config.pp_train), ("pp_eval", config.pp_eval)] + [
    (f"evals.{name}.pp", dict(entry).get("pp", "")) for name, entry in config.evals.items()
  ]
  for key, pp in pps:
    if "tokenize" in pp and not tok and "vocab=" not in pp:
      raise schema.SectionError(
        f"config.{key} tokenizes text: set config.text.tokenizer (a "
        f"merges file, or 'train:SIZE' to learn one from the captions)"
      )


TEXT_SECTION = schema.Section(
  "text",
  __name__,
  help="the text tower and its tokenizer (image-text methods)",
  keys=(
    schema.Key(
      "tokenizer",
      "",
      "a merges file (CLIP's bpe_simple_vocab_16e6.txt.gz, or "
      "one written by big_transfer.data.tokenizer), 'clip' (that file from the "
      "installed open_clip_torch package) or 'train:SIZE': learn a SIZE-token BPE "
      "from the training captions, stored in the workdir",
    ),
    schema.Key("context_length", 77, "tokens per caption (start and end included)"),
    schema.Key("width", 512, "the text transformer's width"),
    schema.Key("layers", 12, "the text transformer's depth"),
    schema.Key("heads", 8, "attention heads"),
    schema.Key("act", "gelu", "the MLP's activation ('gelu' or 'quick_gelu', OpenAI's)"),
    schema.Key("max_captions", 200_000, "train:SIZE learns from at most this many captions"),
  ),
  check=_check,
)
CLIP_SECTION = schema.Section(
  "clip",
  __name__,
  help="the image-text objective (clip, slip)",
  keys=(
    schema.Key("loss", "softmax", "'softmax' (CLIP) or 'sigmoid' (SigLIP)"),
    schema.Key("embed_dim", 1024, "the shared image-text embedding"),
    schema.Key(
      "logit_scale_init", 1 / 0.07, "the learnt logit scale's start (CLIP: 1/0.07; SigLIP: 10)"
    ),
    schema.Key("logit_scale_max", 100.0, "the scale is clamped here in the forward pass"),
    schema.Key("logit_bias_init", -10.0, "sigmoid loss only (SigLIP: scale 10, bias -10)"),
    schema.Key("ssl_weight", 1.0, "slip: the weight of the SimCLR loss beside the CLIP loss"),
  ),
)


class Method(Base):
  name = "clip"
  config_sections = (TEXT_SECTION, CLIP_SECTION)
  traits = Traits(image_tower="image", text_tower=True, normalized_features=True)
  batch_keys = ("image", "text")

  def __init__(self, config, info):
    super().__init__(config, info)
    tok = info.get("tokenizer")
    if tok is None:
      raise ValueError(f"method {config.method} needs a tokenizer: set config.text.tokenizer")
    self.tokenizer = tok
    self.sigmoid = config.clip.loss == "sigmoid"
    self.scale_max = float(config.clip.logit_scale_max)

  def _ssl_dims(self):
    return None

  def create_model(self, rngs: nnx.Rngs) -> nnx.Module:
    c = self.config
    kwargs = c.model_kwargs.to_dict()
    if models.parse(c.model)[1].get("version") == "clip":  # attention pool = the projection
      kwargs.setdefault("embed_dim", c.clip.embed_dim)
    image = models.create(c.model, num_classes=0, rngs=rngs, dtype=self.dtype, **kwargs)
    text = TextTransformer(
      vocab_size=self.tokenizer.vocab_size,
      context_length=c.text.context_length,
      width=c.text.width,
      layers=c.text.layers,
      heads=c.text.heads,
      embed_dim=c.clip.embed_dim,
      eot_id=self.tokenizer.eot_id,
      act=c.text.act,
      dtype=self.dtype,
      rngs=rngs,
    )
    scale_init = c.clip.logit_scale_init
    if self.sigmoid and scale_init == 1 / 0.07:  # the CLIP default: take SigLIP's own
      scale_init = 10.0
    return CLIPModel(
      image,
      text,
      embed_dim=c.clip.embed_dim,
      logit_scale_init=scale_init,
      logit_bias_init=c.clip.logit_bias_init if self.sigmoid else None,
      ssl_dims=self._ssl_dims(),
      dtype=self.dtype,
      rngs=rngs,
    )

  def logit_scale(self, model):
    return jnp.exp(jnp.minimum(model.logit_scale.get_value(), math.log(self.scale_max)))

  bench_optimizer = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.1}

  @classmethod
  def training_pp(cls, decode: str, view: str) -> str:
    return f"{decode}|{view}|tokenize"  # the caption's tokens beside the image

  def predictions(self):
    return {
      "features": self.features,
      "encode_image": self.encode_image,
      "encode_text": self.encode_text,
    }

  def features(self, model, images):
    """The image tower's pre_logits (what transfer builds on)."""
    return model.encode_image(images.astype(self.dtype))[1]

  def encode_image(self, model, images):
    return model.encode_image(images.astype(self.dtype))[0].astype(jnp.float32)

  def encode_text(self, model, tokens):
    return model.encode_text(tokens).astype(jnp.float32)

  def _contrastive(self, model, img, txt):
    scale = self.logit_scale(model)
    if self.sigmoid:
      loss, acc = losses.siglip_sigmoid(img, txt, scale, model.logit_bias.get_value())
    else:
      loss, acc = losses.clip_softmax(img, txt, scale)
    return loss, {"contrastive_accuracy": acc, "logit_scale": scale}

  def loss(self, model, batch, rngs=None):
    img, _ = model.encode_image(batch["image"].astype(self.dtype), train=True, rngs=rngs)
    txt = model.encode_text(batch["text"])
    return self._contrastive(model, img, txt)


class SLIPMethod(Method):
  """SLIP (Mu et al., 2022): CLIP's loss on (image, text) plus SimCLR's NT-Xent on two more
  views of the image, one image tower for all three (one forward, so BatchNorm sees all)."""

  name = "slip"
  config_sections = Method.config_sections + (simclr.SECTION,)

  @classmethod
  def training_pp(cls, decode: str, view: str) -> str:
    # the image, two more views of it (SimCLR's), and the caption's tokens
    return f'{decode}|copy(raw="image")|{view}|two_views("{view}", key="raw")|tokenize'

  batch_keys = ("image", "text", "image1", "image2")

  def _ssl_dims(self):
    return tuple(self.config.projection_dims)

  def loss(self, model, batch, rngs=None):
    n = batch["image"].shape[0]
    x = jnp.concatenate([batch["image"], batch["image1"], batch["image2"]]).astype(self.dtype)
    emb, pre = model.encode_image(x, train=True, rngs=rngs)
    txt = model.encode_text(batch["text"])
    clip_loss, metrics = self._contrastive(model, emb[:n], txt)
    z = model.ssl_projection(pre[n:], True)
    ssl_loss, ssl_acc = losses.nt_xent(z[:n], z[n:], float(self.config.temperature))
    w = float(self.config.clip.ssl_weight)
    metrics.update(clip_loss=clip_loss, ssl_loss=ssl_loss, ssl_accuracy=ssl_acc)
    return clip_loss + w * ssl_loss, metrics
