"""WiSE-FT: fine-tune over the grid (as ``ft``), then interpolate the initial and the chosen
fine-tuned weights, theta(alpha) = (1 - alpha) theta_0 + alpha theta_ft, for every alpha in
``wise_ft.alphas``; one row per alpha, the validation's choice marked."""

from __future__ import annotations

import jax
import numpy as np

from big_transfer import schema
from big_transfer.protocols import ft, lp

SECTION = schema.Section(
  "wise_ft",
  __name__,
  help="WiSE-FT's interpolation weights of the fine-tuned model",
  keys=(schema.Key("alphas", (0.0, 0.25, 0.5, 0.75, 1.0), "the fine-tuned weights' share"),),
)


class Protocol(ft.Protocol):
  name = "wise_ft"
  sections = (ft.SECTION, lp.SECTION, SECTION)

  def auto_head(self, text_tower: bool) -> str:
    return "text" if text_tower else "probe"

  def run(self, s, base_row: dict) -> list[dict]:
    result = ft.train_grid(s, s.start_head())
    init_host = s.initial_weights(result.head)
    tuned = jax.device_get(result.best_weights)
    rows = []
    for alpha in s.config.wise_ft.alphas:
      mixed = jax.tree.map(
        lambda a, b, alpha=alpha: (
          (1 - alpha) * np.asarray(a, np.float32) + alpha * np.asarray(b, np.float32)
        ),
        init_host,
        tuned,
      )
      w = s.to_device(mixed)
      rows.append(
        {
          **base_row,
          "hyperparameters": {**result.hyperparameters, "alpha": float(alpha)},
          "grid": result.grid,
          "val_accuracy": s.accuracy(w, "val"),
          "test_accuracy": s.accuracy(w, "test"),
          "steps": result.best["steps"],
        }
      )
    chosen = max(rows, key=lambda r: (r["val_accuracy"], r["hyperparameters"]["alpha"]))
    for r in rows:  # the alpha validation chooses (ties: more of the fine-tuned weights)
      r["chosen"] = r is chosen
    return rows
