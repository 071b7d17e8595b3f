"""Linear probe: a head on the pre-trained tower's frozen features, chosen on validation.

Solvers (``lp.solver``): 'closed_form' (ridge over ``l2_grid``: one eigendecomposition serves the
grid), 'sgd' (softmax regression per ``l2_grid`` value) or 'adamw' (the authors' head trained by
AdamW). The features of every base split are computed once per pre-trained checkpoint and kept by
the run's group (and ``feature_cache`` on disk): every shots x seeds probe of a (checkpoint,
downstream set) pair indexes them.
"""

from __future__ import annotations

import numpy as np

from big_transfer import schema
from big_transfer.protocols import base

SOLVERS = ("closed_form", "sgd", "adamw")


def _check(config) -> None:
  if config.lp.solver not in SOLVERS:
    raise schema.SectionError(f"config.lp.solver={config.lp.solver!r}: one of {', '.join(SOLVERS)}")
  if config.lp.lp_ft_solver not in ("adamw", "lp"):
    raise schema.SectionError(f"config.lp.lp_ft_solver={config.lp.lp_ft_solver!r}: adamw or lp")
  if config.lp.lp_ft_features not in ("train_pp", "eval_pp"):
    raise schema.SectionError(
      f"config.lp.lp_ft_features={config.lp.lp_ft_features!r}: train_pp or eval_pp"
    )


SECTION = schema.Section(
  "lp",
  __name__,
  help="linear probes on frozen features",
  keys=(
    schema.Key(
      "solver",
      "closed_form",
      "'closed_form' (ridge over l2_grid, chosen on validation), 'sgd' (softmax regression, "
      "one run per l2_grid value) or 'adamw' (the authors': a softmax head trained by AdamW "
      "for adamw_epochs at adamw_lr, batch_size, weight decay optimizer.weight_decay on weight "
      "and bias, optimizer.warmup_steps of warm-up and cosine, gradient clipping "
      "optimizer.grad_clip_norm)",
    ),
    schema.Key("l2_grid", (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0), "the L2 grid"),
    schema.Key("sgd_steps", 500, "the sgd solver's steps"),
    schema.Key("sgd_lr", 0.1, "the sgd solver's learning rate"),
    schema.Key("adamw_epochs", 128.0, "the adamw solver's epochs"),
    schema.Key("adamw_lr", 3e-3, "the adamw solver's learning rate"),
    schema.Key("lp_ft_solver", "adamw", "LP-FT's first stage: 'adamw' (theirs) or 'lp' (solver)"),
    schema.Key(
      "lp_ft_features",
      "train_pp",
      "the training features LP-FT's probe fits: 'train_pp' (the training images through "
      "pp_train — augmented — in one pass seeded by the run's seed, computed once: the "
      "authors') or 'eval_pp' (the evaluation preprocessing, as plain probes)",
    ),
  ),
  check=_check,
)


def chosen_name(solver: str) -> str:
  """The value a probe of ``solver`` chooses on validation: the L2, or AdamW's learning rate."""
  return "lr" if solver == "adamw" else "l2"


class Protocol(base.Protocol):
  name = "lp"
  sections = (SECTION,)

  def recipe(self, s) -> dict:
    """Every row records its solver and the grid it chose over (the authors' plain probe is
    an AdamW head; a closed-form ridge is ours)."""
    c = s.config.lp
    out = {"lp_solver": c.solver}
    if c.solver == "adamw":
      out["lp_grid"] = {"lr": [c.adamw_lr], "epochs": c.adamw_epochs}
      out["probe_init"] = "text" if s.adamw_probe_init() is not None else "zero"
    else:
      out["lp_grid"] = {"l2": list(c.l2_grid)}
    return out

  def run(self, s, base_row: dict) -> list[dict]:
    solver = s.config.lp.solver
    kernel, bias, chosen, scores = s.probe(
      solver, init=s.adamw_probe_init() if solver == "adamw" else None
    )
    tx, ty = s.frozen_features("test")
    test = float(np.mean(np.argmax(tx @ kernel + bias, -1) == ty))
    what = chosen_name(solver)
    return [
      {
        **base_row,
        "hyperparameters": {"solver": solver, what: chosen},
        "grid": [{what: k, "val_accuracy": v} for k, v in scores.items()],
        "val_accuracy": scores[chosen],
        "test_accuracy": test,
        "steps": 0,
      }
    ]
