"""An evaluator as a plug-in: ``feature_stats`` — the mean L2 norm of the method's features over
a split (collapsed features show as ~0). One file; importing it registers the type (inside the
package: a module under evaluators/, listed in common.MODULES)."""

import jax
import jax.numpy as jnp

from big_transfer.data import pipeline, sources
from big_transfer.evaluators.classification import Evaluator
from big_transfer.evaluators.common import Context, predictor, register


@register("feature_stats", data="", split="test", pp="")
def build(name: str, s: dict, ctx: Context) -> Evaluator:
  (features,) = predictor(ctx, name, "feature_stats", "features")
  source = sources.open_source(sources.spec_at_split(s["data"], s["split"]))

  def apply(weights, batch):
    return {"feature_norm": jnp.linalg.norm(features(weights, batch["image"]), axis=-1)}

  def make_ds():
    return pipeline.eval_dataset(
      source,
      pp=s["pp"] or ctx.pp_eval,
      batch_size=ctx.batch_size,
      keys=("image",),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      threads=ctx.threads,
    )

  return Evaluator(name, make_ds, apply, ctx.mesh, ctx.weight_shardings, len(source))
