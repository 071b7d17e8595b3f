"""Image<->text retrieval: recall@1/5/10 in both directions over the first ``max_examples``
(image, caption) pairs of a split. Embeddings come back replicated on every host; each row holds
its own image and caption, so pairs stay aligned however hosts interleave them."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from big_transfer import sharding
from big_transfer.data import pipeline, sources
from big_transfer.evaluators.classification import gather_masked
from big_transfer.evaluators.common import Context, register
from big_transfer.evaluators.zeroshot import text_method


def recall_at_k(img: np.ndarray, txt: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
  """Pair i is (img[i], txt[i]). Image->text R@k: the fraction of images whose caption is among
  the k most similar texts; text->image the same the other way. A candidate ranks above the
  true one only if strictly more similar: exact ties come from identical inputs (two images
  with the same caption), and retrieving an identical caption is a correct retrieval."""
  img = img / np.maximum(np.linalg.norm(img, axis=-1, keepdims=True), 1e-12)
  txt = txt / np.maximum(np.linalg.norm(txt, axis=-1, keepdims=True), 1e-12)
  sim = img.astype(np.float64) @ txt.astype(np.float64).T
  diag = np.diag(sim)
  rank_i2t = (sim > diag[:, None]).sum(1)  # candidates strictly better than the true one
  rank_t2i = (sim > diag[None, :]).sum(0)
  out = {}
  for k in ks:
    out[f"image_to_text_r{k}"] = float(np.mean(rank_i2t < k))
    out[f"text_to_image_r{k}"] = float(np.mean(rank_t2i < k))
  return out


class Retrieval:
  def __init__(
    self,
    data: str,
    *,
    split: str,
    pp: str,
    max_examples: int,
    encode_image: Callable,
    encode_text: Callable,
    mesh,
    weight_shardings,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    bind: dict | None = None,
  ):
    source = sources.open_source(sources.spec_at_split(data, split))
    n = min(len(source), max_examples) if max_examples else len(source)
    self.source = sources.Subset(source, np.arange(n))
    self.name = sources.parse_spec(data.partition("?")[0]).name.rstrip("/").split("/")[-1]
    self.pp, self.batch_size, self.mesh, self.bind = pp, batch_size, mesh, bind
    self.pid, self.pcount = process_index, process_count

    def embed(state, batch):
      return {
        "image": encode_image(state, batch["image"]),
        "text": encode_text(state, batch["text"]),
        pipeline.MASK: batch[pipeline.MASK],
        pipeline.INDEX: batch[pipeline.INDEX],
      }

    self._embed = jax.jit(
      embed,
      in_shardings=(weight_shardings, sharding.batch_sharding(mesh)),
      out_shardings=sharding.replicated(mesh),
    )

  def run(self, state) -> dict[str, float]:
    batches = pipeline.eval_dataset(
      self.source,
      pp=self.pp,
      batch_size=self.batch_size,
      keys=("image", "text"),
      process_index=self.pid,
      process_count=self.pcount,
      bind=self.bind,
    )
    e = gather_masked(self._embed, state, batches, self.mesh)
    return {f"{self.name}/{k}": v for k, v in recall_at_k(e["image"], e["text"]).items()}


@register("retrieval", data="", split="test", pp="", max_examples=1000)
def build(name: str, s: dict, ctx: Context) -> Retrieval:
  """Image<->text recall@1/5/10 over the first ``max_examples`` pairs of a split."""
  return Retrieval(
    s["data"],
    split=s["split"],
    pp=s["pp"] or ctx.pp_eval,
    max_examples=s["max_examples"],
    **text_method(ctx, name, "retrieval"),
  )
