"""Contrastive losses against plain NumPy, and the same global-batch loss on 1 and 8 devices."""

import jax
import numpy as np
import pytest

from big_transfer import sharding
from big_transfer.methods import losses


def _norm(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_nt_xent(z1, z2, t):
  z = _norm(np.concatenate([z1, z2]).astype(np.float64))
  n = len(z1)
  total = 0.0
  for i in range(2 * n):
    j = (i + n) % (2 * n)
    sims = np.array([z[i] @ z[k] / t for k in range(2 * n) if k != i])
    others = [k for k in range(2 * n) if k != i]
    total -= _log_softmax(sims[None])[0][others.index(j)]
  return total / (2 * n)


def np_clip(a, b, scale):
  a, b = _norm(a.astype(np.float64)), _norm(b.astype(np.float64))
  logits = scale * a @ b.T
  n = len(a)
  li = -np.mean([_log_softmax(logits)[i, i] for i in range(n)])
  lt = -np.mean([_log_softmax(logits.T)[i, i] for i in range(n)])
  return (li + lt) / 2


def np_siglip(a, b, scale, bias):
  a, b = _norm(a.astype(np.float64)), _norm(b.astype(np.float64))
  logits = scale * a @ b.T + bias
  n = len(a)
  z = 2 * np.eye(n) - 1
  return -np.sum(np.log(1 / (1 + np.exp(-z * logits)))) / n


@pytest.mark.parametrize("n", [2, 5, 16])
@pytest.mark.parametrize("duplicates", [False, True])
def test_losses_match_numpy(n, duplicates):
  rng = np.random.default_rng(n)
  a, b = rng.normal(size=(n, 8)).astype(np.float32), rng.normal(size=(n, 8)).astype(np.float32)
  if duplicates:  # identical items in one batch (no labels tell them apart)
    a[1], b[1] = a[0], b[0]
  np.testing.assert_allclose(
    losses.nt_xent(a, b, 0.1)[0], np_nt_xent(a, b, 0.1), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    losses.clip_softmax(a, b, 14.3)[0], np_clip(a, b, 14.3), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    losses.siglip_sigmoid(a, b, 10.0, -10.0)[0], np_siglip(a, b, 10.0, -10.0), rtol=1e-4, atol=1e-6
  )


def test_global_batch_loss_and_gradients_are_the_same_on_one_and_eight_devices():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(8, 6)).astype(np.float32) * 0.3
  x1, x2 = rng.normal(size=(32, 8)).astype(np.float32), rng.normal(size=(32, 8)).astype(np.float32)

  def loss(w, x1, x2):
    return (
      losses.nt_xent(x1 @ w, x2 @ w, 0.1)[0]
      + losses.clip_softmax(x1 @ w, x2 @ w, 10.0)[0]
      + 0.1 * losses.siglip_sigmoid(x1 @ w, x2 @ w, 10.0, -10.0)[0]
    )

  ref_loss, ref_grad = jax.value_and_grad(loss)(w, x1, x2)

  mesh = sharding.make_mesh(8, 1, devices=jax.devices()[:8])
  bs = sharding.batch_sharding(mesh)
  xs1, xs2 = jax.device_put(x1, bs), jax.device_put(x2, bs)
  assert len(xs1.sharding.device_set) == 8  # each device holds 4 of the 32 rows
  f = jax.jit(jax.value_and_grad(loss), in_shardings=(sharding.replicated(mesh), bs, bs))
  got_loss, got_grad = f(jax.device_put(w, sharding.replicated(mesh)), xs1, xs2)
  np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(got_grad, ref_grad, rtol=1e-4, atol=1e-6)
  # A per-device loss (each device's rows only) differs: the global one is what we compute.
  local = np.mean([loss(w, x1[i : i + 4], x2[i : i + 4]) for i in range(0, 32, 4)])
  assert abs(local - float(ref_loss)) > 0.1
