"""Closed-form few-shot linear evaluation on frozen pre_logits (as big_vision runs during
pre-training): every pre-training run shows a transfer curve as it trains.

For each (shots, seed): k images per class from a labelled training pool (the same subset for
every model: see data/fewshot.py), ridge regression from features to +-1 class targets solved in
closed form, accuracy on the held-out split. Features of every image needed are extracted once
per run (one jitted forward, cached across calls), then all (shots, seed) pairs are solved on the
host in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from big_transfer import sharding
from big_transfer.data import fewshot, pipeline, sources
from big_transfer.evaluators.classification import gather_masked
from big_transfer.evaluators.common import Context, predictor, register


def ridge_fit(x: np.ndarray, y: np.ndarray, num_classes: int, l2_reg: float):
  """Least squares from features to +-1 one-hot targets with an L2 penalty on the weights
  (not the bias). Returns (w, b)."""
  x = np.asarray(x, np.float64)
  t = 2.0 * np.eye(num_classes)[y] - 1.0
  mx, mt = x.mean(0), t.mean(0)
  xc, tc = x - mx, t - mt
  n, d = xc.shape
  if d <= n:
    w = np.linalg.solve(xc.T @ xc + l2_reg * np.eye(d), xc.T @ tc)
  else:  # the dual is smaller with few shots and wide features
    w = xc.T @ np.linalg.solve(xc @ xc.T + l2_reg * np.eye(n), tc)
  return w, mt - mx @ w


def ridge_fit_grid(
  x: np.ndarray, y: np.ndarray, num_classes: int, l2_regs
) -> list[tuple[np.ndarray, np.ndarray]]:
  """``ridge_fit`` for every L2 value from one eigendecomposition (as big_vision's fewshot_lsr):
  with X'X = V diag(e) V' (or XX' in the dual), w(l2) = V diag(1 / (e + l2)) V'X'T costs a
  matrix product per value instead of a solve."""
  x = np.asarray(x, np.float64)
  t = 2.0 * np.eye(num_classes)[y] - 1.0
  mx, mt = x.mean(0), t.mean(0)
  xc, tc = x - mx, t - mt
  n, d = xc.shape
  out = []
  if d <= n:
    e, v = np.linalg.eigh(xc.T @ xc)
    proj = v.T @ (xc.T @ tc)
    for l2 in l2_regs:
      w = v @ (proj / (e + l2)[:, None])
      out.append((w, mt - mx @ w))
  else:
    e, u = np.linalg.eigh(xc @ xc.T)
    proj = u.T @ tc
    xtu = xc.T @ u
    for l2 in l2_regs:
      w = xtu @ (proj / (e + l2)[:, None])
      out.append((w, mt - mx @ w))
  return out


def normalize_features(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
  """Centre on the pool's mean, then unit length: makes one l2_reg fit every model."""
  x = np.asarray(x, np.float64) - mean
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class FewShotLinear:
  """``run(weights)`` -> ``{<data name>/<k>shot: mean test accuracy over seeds}``."""

  def __init__(
    self,
    data: str,
    *,
    pp: str,
    shots: Sequence[int],
    seeds: Sequence[int],
    l2_reg: float,
    features: Callable,
    mesh,
    weight_shardings,
    batch_size: int,
    train_split: str = "train",
    test_split: str = "test",
    process_index: int = 0,
    process_count: int = 1,
  ):
    spec = sources.parse_spec(data.partition("?")[0])
    pool = sources.open_source(sources.spec_with_default_split(data, train_split))
    self.test = sources.open_source(sources.spec_at_split(data, test_split))
    self.name = spec.name.rstrip("/").split("/")[-1]  # 'digits', or a converted dir's name
    self.shots, self.seeds, self.l2_reg = tuple(shots), tuple(seeds), l2_reg
    labels = fewshot.labels_of(pool)
    self.test_labels = fewshot.labels_of(self.test)
    self.num_classes = int(max(labels.max(), self.test_labels.max())) + 1
    self.subsets = {
      (k, s): fewshot.sample_shots(labels, k, s) for k in self.shots for s in self.seeds
    }
    needed = np.unique(np.concatenate(list(self.subsets.values())))
    self.pool = sources.Subset(pool, needed)
    self.position = {int(i): p for p, i in enumerate(needed)}
    self.pool_labels = labels[needed]
    self.pp, self.mesh, self.batch_size = pp, mesh, batch_size
    self.pid, self.pcount = process_index, process_count

    def feats(state, batch):
      return {
        "x": features(state, batch).astype(jnp.float32),
        pipeline.MASK: batch[pipeline.MASK],
        pipeline.INDEX: batch[pipeline.INDEX],
      }

    self._feats = jax.jit(
      feats,
      in_shardings=(weight_shardings, sharding.batch_sharding(mesh)),
      out_shardings=sharding.replicated(mesh),
    )

  def _extract(self, state, source) -> np.ndarray:
    batches = pipeline.eval_dataset(
      source,
      pp=self.pp,
      batch_size=self.batch_size,
      keys=("image",),
      process_index=self.pid,
      process_count=self.pcount,
    )
    return gather_masked(self._feats, state, batches, self.mesh)["x"]

  def run(self, state) -> dict[str, float]:
    out = {}
    pool_x = self._extract(state, self.pool)
    test_x = self._extract(state, self.test)
    mean = pool_x.mean(0)
    pool_x, test_x = normalize_features(pool_x, mean), normalize_features(test_x, mean)
    for k in self.shots:
      accs = []
      for s in self.seeds:
        rows = np.array([self.position[int(i)] for i in self.subsets[(k, s)]])
        w, b = ridge_fit(pool_x[rows], self.pool_labels[rows], self.num_classes, self.l2_reg)
        pred = np.argmax(test_x @ w + b, axis=-1)
        accs.append(float(np.mean(pred == self.test_labels)))
      out[f"{self.name}/{k}shot"] = float(np.mean(accs))
    return out


@register(
  "fewshot_linear",
  data="",
  pp="",
  shots=(1, 5, 10, 25),
  seeds=(0, 1, 2),
  l2_reg=0.1,
  train_split="train",
  test_split="test",
)
def build(name: str, s: dict, ctx: Context) -> FewShotLinear:
  """Closed-form ridge probes on frozen features at k shots per class (big_vision)."""
  (features,) = predictor(ctx, name, "fewshot_linear", "features")
  return FewShotLinear(
    s["data"],
    pp=s["pp"] or ctx.pp_eval,
    shots=s["shots"],
    seeds=s["seeds"],
    l2_reg=s["l2_reg"],
    features=lambda w, batch: features(w, batch["image"]),
    mesh=ctx.mesh,
    weight_shardings=ctx.weight_shardings,
    batch_size=ctx.batch_size,
    train_split=s["train_split"],
    test_split=s["test_split"],
    process_index=ctx.process_index,
    process_count=ctx.process_count,
  )
