"""Exact held-out metrics: every example once across hosts, padding masked out."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from big_transfer import sharding
from big_transfer.data import pipeline, sources
from big_transfer.evaluators.common import Context, predictor, register
from big_transfer.programs import program


class Evaluator:
  """Averages per-example metrics over a split, weighted by the mask: ``run(weights) ->
  {metric: mean}`` (names unprefixed; ``common.build`` adds the entry's name).

  ``apply(weights, batch) -> {metric: per-example values}`` is jitted once and cached; sums and
  the example count are reduced on device over the global batch, so the result is exact on any
  number of hosts. ``name``: for messages.
  """

  def __init__(
    self,
    name: str,
    make_dataset: Callable[[], object],
    apply,
    mesh,
    weight_shardings,
    num_examples: int,
    num_extra: int = 0,
    program_key: tuple | None = None,
  ):
    """``num_extra``: replicated arrays that ``run(weights, *extra)`` passes on to ``apply``
    after the batch (e.g. zero-shot class embeddings computed once per evaluation).
    ``program_key``: what ``apply`` computes with, when evaluators of the same key may share
    the compiled program (programs.py)."""
    self.name, self.make_dataset, self.mesh = name, make_dataset, mesh
    self.num_examples = num_examples

    def sums(state, batch, *extra):
      per_example = apply(state, batch, *extra)
      mask = batch[pipeline.MASK]
      out = {k: jnp.sum(v.astype(jnp.float32) * mask) for k, v in per_example.items()}
      out["_count"] = jnp.sum(mask)
      return out

    repl = sharding.replicated(mesh)
    self._sums = program(
      None if program_key is None else ("evaluator_sums", program_key, num_extra),
      lambda: jax.jit(
        sums,
        in_shardings=(weight_shardings, sharding.batch_sharding(mesh)) + (repl,) * num_extra,
        out_shardings=repl,
      ),
    )

  def run(self, state, *extra) -> dict[str, float]:
    total = None
    for batch in self.make_dataset():
      s = self._sums(state, sharding.to_global(batch, self.mesh), *extra)
      total = s if total is None else jax.tree.map(jnp.add, total, s)
    total = jax.device_get(total)
    count = float(total.pop("_count"))
    if int(round(count)) > self.num_examples:  # padding leaked into the metrics: a bug
      raise RuntimeError(
        f"evaluator {self.name}: saw {count} examples, expected {self.num_examples}"
      )
    if int(round(count)) < self.num_examples:
      logging.warning(
        "evaluator %s: %d of %d examples were skipped as corrupt",
        self.name,
        self.num_examples - int(round(count)),
        self.num_examples,
      )
    return {k: float(v) / count for k, v in sorted(total.items())}


def gather_masked(fn, state, batches: Iterable[dict], mesh) -> dict[str, np.ndarray]:
  """Runs the jitted ``fn(state, global_batch) -> {name: per-example array}`` (replicated
  output, including the batch's padding mask under ``pipeline.MASK`` and each row's source
  position under ``pipeline.INDEX``, so every host can read them) over eval batches and
  returns each output's rows for the real examples, in source order, on every host."""
  out: dict[str, list] = {}
  for batch in batches:
    values = jax.device_get(fn(state, sharding.to_global(batch, mesh)))
    keep = np.asarray(values.pop(pipeline.MASK)) > 0
    for k, v in values.items():
      out.setdefault(k, []).append(np.asarray(v)[keep])
  out = {k: np.concatenate(v) for k, v in out.items()}
  if pipeline.INDEX in out:  # whatever the processes' share of the batches, source order
    order = np.argsort(out.pop(pipeline.INDEX), kind="stable")
    out = {k: v[order] for k, v in out.items()}
  return out


@register("classification", data="", split="test", pp="")
def build(name: str, s: dict, ctx: Context, source=None) -> Evaluator:
  """The method's per-example ``metrics`` (top-1, loss, ...) averaged over a split; ``source``:
  an opened source instead of ``data`` (a run's held-out ``eval``, transfer's validation and
  test splits)."""
  (metrics,) = predictor(ctx, name, "classification", "metrics")
  if source is None:
    source = sources.open_source(
      sources.spec_at_split(s["data"], s["split"], drop=sources.TRAINING_ONLY_OPTIONS)
    )

  def make_ds():
    return pipeline.eval_dataset(
      source,
      pp=s["pp"] or ctx.pp_eval,
      batch_size=ctx.batch_size,
      keys=ctx.batch_keys,
      process_index=ctx.process_index,
      process_count=ctx.process_count,
      threads=ctx.threads,
      bind=ctx.bind,
    )

  return Evaluator(
    name,
    make_ds,
    metrics,
    ctx.mesh,
    ctx.weight_shardings,
    len(source),
    program_key=None if ctx.program_key is None else ("metrics", ctx.program_key),
  )
