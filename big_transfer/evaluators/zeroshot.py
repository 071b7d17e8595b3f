"""Zero-shot classification for image-text models: each class's text embedding is the mean of
its prompts' (``templates`` filled with the evaluation dataset's class names, each normalised,
the mean normalised again); an image is assigned the class of the most similar embedding.
Exact over hosts (the classification Evaluator's padding mask)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from big_transfer import sharding
from big_transfer.data import pipeline, sources
from big_transfer.evaluators.classification import Evaluator
from big_transfer.evaluators.common import Context, predictor, register

# Prompt ensembles. 'openai80' is the 80-template ImageNet ensemble of OpenAI's CLIP prompt
# engineering notebook (what the authors' heads used; tests/test_interop.py checks it against
# OpenCLIP's copy); 'clip7' the 7-template subset that notebook recommends.
OPENAI_80 = (
  "a bad photo of a {}.",
  "a photo of many {}.",
  "a sculpture of a {}.",
  "a photo of the hard to see {}.",
  "a low resolution photo of the {}.",
  "a rendering of a {}.",
  "graffiti of a {}.",
  "a bad photo of the {}.",
  "a cropped photo of the {}.",
  "a tattoo of a {}.",
  "the embroidered {}.",
  "a photo of a hard to see {}.",
  "a bright photo of a {}.",
  "a photo of a clean {}.",
  "a photo of a dirty {}.",
  "a dark photo of the {}.",
  "a drawing of a {}.",
  "a photo of my {}.",
  "the plastic {}.",
  "a photo of the cool {}.",
  "a close-up photo of a {}.",
  "a black and white photo of the {}.",
  "a painting of the {}.",
  "a painting of a {}.",
  "a pixelated photo of the {}.",
  "a sculpture of the {}.",
  "a bright photo of the {}.",
  "a cropped photo of a {}.",
  "a plastic {}.",
  "a photo of the dirty {}.",
  "a jpeg corrupted photo of a {}.",
  "a blurry photo of the {}.",
  "a photo of the {}.",
  "a good photo of the {}.",
  "a rendering of the {}.",
  "a {} in a video game.",
  "a photo of one {}.",
  "a doodle of a {}.",
  "a close-up photo of the {}.",
  "a photo of a {}.",
  "the origami {}.",
  "the {} in a video game.",
  "a sketch of a {}.",
  "a doodle of the {}.",
  "a origami {}.",
  "a low resolution photo of a {}.",
  "the toy {}.",
  "a rendition of the {}.",
  "a photo of the clean {}.",
  "a photo of a large {}.",
  "a rendition of a {}.",
  "a photo of a nice {}.",
  "a photo of a weird {}.",
  "a blurry photo of a {}.",
  "a cartoon {}.",
  "art of a {}.",
  "a sketch of the {}.",
  "a embroidered {}.",
  "a pixelated photo of a {}.",
  "itap of the {}.",
  "a jpeg corrupted photo of the {}.",
  "a good photo of a {}.",
  "a plushie {}.",
  "a photo of the nice {}.",
  "a photo of the small {}.",
  "a photo of the weird {}.",
  "the cartoon {}.",
  "art of the {}.",
  "a drawing of the {}.",
  "a photo of the large {}.",
  "a black and white photo of a {}.",
  "the plushie {}.",
  "a dark photo of a {}.",
  "itap of a {}.",
  "graffiti of the {}.",
  "a toy {}.",
  "itap of my {}.",
  "a photo of a cool {}.",
  "a photo of a small {}.",
  "a tattoo of the {}.",
)
TEMPLATES = {
  "simple": ("a photo of a {}.",),
  "clip7": (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
  ),
  "openai80": OPENAI_80,
}


def templates_of(spec) -> tuple[str, ...]:
  """A named ensemble, or a sequence of templates with one ``{}`` each; or 'a;b;c'."""
  if isinstance(spec, str) and spec in TEMPLATES:
    return TEMPLATES[spec]
  items = tuple(spec.split(";")) if isinstance(spec, str) else tuple(spec)
  bad = [t for t in items if t.count("{}") != 1]
  if not items or bad:
    raise ValueError(
      f"zero-shot templates {spec!r}: each needs exactly one '{{}}' (or name "
      f"one of {', '.join(TEMPLATES)})"
    )
  return items


def encode_texts(encode, state, tokens: np.ndarray, mesh, chunk: int = 256) -> np.ndarray:
  """Text embeddings of many token rows, in fixed-size chunks (one compile), on every host."""
  repl = sharding.replicated(mesh)
  out = []
  for i in range(0, len(tokens), chunk):
    part = tokens[i : i + chunk]
    padded = np.zeros((chunk, tokens.shape[1]), np.int32)
    padded[: len(part)] = part
    x = jax.make_array_from_process_local_data(repl, padded)
    out.append(np.asarray(jax.device_get(encode(state, x)))[: len(part)])
  return np.concatenate(out)


def _normalize(x, axis=-1):
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


class ZeroShot:
  """``run(weights)`` -> ``{<data name>/accuracy, .../top5_accuracy (more than 5 classes)}``."""

  def __init__(
    self,
    data: str,
    *,
    split: str,
    pp: str,
    templates,
    tokenizer,
    context_length: int,
    encode_image: Callable,
    encode_text: Callable,
    mesh,
    weight_shardings,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    bind: dict | None = None,
    class_names: Sequence[str] | None = None,
  ):
    self.source = sources.open_source(sources.spec_at_split(data, split))
    names = class_names or getattr(self.source, "class_names", None)
    if not names:
      raise sources.DataError(f"zero-shot data {data}: no class names to build prompts from")
    self.names = sources.prompt_names(names)
    self.templates = templates_of(templates)
    self.name = sources.parse_spec(data.partition("?")[0]).name.rstrip("/").split("/")[-1]
    prompts = [t.format(n) for n in self.names for t in self.templates]
    self.tokens = tokenizer.tokenize(prompts, context_length)
    self.mesh = mesh
    repl = sharding.replicated(mesh)
    self._encode_text = jax.jit(
      encode_text, in_shardings=(weight_shardings, repl), out_shardings=repl
    )
    top5 = len(self.names) > 5

    def apply(state, batch, classifier):
      img = encode_image(state, batch["image"])
      img = img / jnp.maximum(jnp.linalg.norm(img, axis=-1, keepdims=True), 1e-12)
      logits = img @ classifier.T
      out = {"accuracy": (logits.argmax(-1) == batch["label"]).astype(jnp.float32)}
      if top5:
        out["top5_accuracy"] = (
          (jax.lax.top_k(logits, 5)[1] == batch["label"][:, None]).any(-1).astype(jnp.float32)
        )
      return out

    def make_ds():
      return pipeline.eval_dataset(
        self.source,
        pp=pp,
        batch_size=batch_size,
        keys=("image", "label"),
        process_index=process_index,
        process_count=process_count,
        bind=bind,
      )

    self._eval = Evaluator(
      f"zeroshot {self.name}", make_ds, apply, mesh, weight_shardings, len(self.source), num_extra=1
    )

  def classifier(self, state) -> np.ndarray:
    """(classes, dim) unit-length class embeddings, prompt-ensembled."""
    emb = encode_texts(self._encode_text, state, self.tokens, self.mesh)
    emb = _normalize(emb.reshape(len(self.names), len(self.templates), -1))
    return _normalize(emb.mean(1)).astype(np.float32)

  def run(self, state) -> dict[str, float]:
    w = jax.make_array_from_process_local_data(
      sharding.replicated(self.mesh), self.classifier(state)
    )
    return {f"{self.name}/{k}": v for k, v in self._eval.run(state, w).items()}


def text_method(ctx: Context, entry: str, kind: str) -> dict:
  """The image and text encoders (as ``(weights, inputs)`` functions) and the shared
  arguments of an image-text evaluator."""
  enc_image, enc_text = predictor(ctx, entry, kind, "encode_image", "encode_text")
  return dict(
    encode_image=enc_image,
    encode_text=enc_text,
    mesh=ctx.mesh,
    weight_shardings=ctx.weight_shardings,
    batch_size=ctx.batch_size,
    process_index=ctx.process_index,
    process_count=ctx.process_count,
    bind=ctx.bind,
  )


@register("zeroshot", data="", split="test", pp="", templates="clip7")
def build(name: str, s: dict, ctx: Context) -> ZeroShot:
  """Zero-shot classification with prompt-ensembled class names (CLIP, SigLIP, SLIP)."""
  common = text_method(ctx, name, "zeroshot")
  return ZeroShot(
    s["data"],
    split=s["split"],
    pp=s["pp"] or ctx.pp_eval,
    templates=s["templates"],
    tokenizer=ctx.tokenizer,
    context_length=ctx.context_length,
    **common,
  )
