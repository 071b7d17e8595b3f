"""The closed-form few-shot linear evaluator: the solver, and its curve during pre-training."""

import numpy as np
import pytest

from big_transfer import train
from big_transfer.evaluators.fewshot_linear import normalize_features, ridge_fit
from big_transfer.logging import read_metrics
from conftest import mini_config, one_device


def test_ridge_separates_separable_classes_and_primal_equals_dual():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(4, 16)) * 3
  y = np.repeat(np.arange(4), 5)
  x = centers[y] + rng.normal(size=(20, 16)) * 0.3
  w, b = ridge_fit(x, y, 4, 0.1)
  xt_y = np.repeat(np.arange(4), 50)
  xt = centers[xt_y] + rng.normal(size=(200, 16)) * 0.3
  assert (np.argmax(xt @ w + b, -1) == xt_y).mean() == 1.0
  # 20 examples, 16 features: primal. The same problem padded to 40 features: dual. Zero
  # features change nothing, so both formulas must agree.
  w2, b2 = ridge_fit(np.pad(x, ((0, 0), (0, 24))), y, 4, 0.1)
  np.testing.assert_allclose(w2[:16], w, atol=1e-9)
  np.testing.assert_allclose(b2, b, atol=1e-9)
  z = normalize_features(x, x.mean(0))
  np.testing.assert_allclose(np.linalg.norm(z, axis=-1), 1.0)


def test_pretraining_run_reports_a_few_shot_curve(tmp_path):
  c = mini_config("steps=20,batch=32,width=0.125", log_every=10)
  c.evals.fewshot.update(
    data="builtin:digits",
    shots=(1, 10),
    seeds=(0, 1),
    every=10,
    pp="to_rgb|resize(36)|central_crop(32)|value_range(-1,1)",
  )
  train.run(c, str(tmp_path), devices=one_device())
  rows = [r for r in read_metrics(str(tmp_path)) if "fewshot/digits/10shot" in r]
  assert [r["step"] for r in rows] == [10, 20]
  last = rows[-1]
  assert 0.1 < last["fewshot/digits/1shot"] <= 1 and last["fewshot/digits/10shot"] > 0.5
  assert last["fewshot/digits/10shot"] > last["fewshot/digits/1shot"]


@pytest.mark.parametrize("n,d", [(300, 40), (30, 200)])  # primal and dual
def test_one_eigendecomposition_solves_the_whole_l2_grid_as_separate_solves_do(n, d):
  from big_transfer.evaluators.fewshot_linear import ridge_fit, ridge_fit_grid

  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(n, d)), rng.integers(0, 5, n)
  grid = (1e-4, 1e-2, 1.0, 100.0)
  for (w, b), l2 in zip(ridge_fit_grid(x, y, 5, grid), grid):
    w_ref, b_ref = ridge_fit(x, y, 5, l2)
    np.testing.assert_allclose(w, w_ref, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(b, b_ref, rtol=1e-6, atol=1e-8)
