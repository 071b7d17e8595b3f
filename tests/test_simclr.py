"""SimCLR through the shared training loop: it learns, and it resumes exactly."""

import os
import shutil

import jax
import numpy as np

from big_transfer import checkpoint, config_lib, train
from big_transfer.logging import read_metrics
from conftest import ROOT, one_device

CONFIG = os.path.join(ROOT, "configs", "mini", "simclr.py")


def _config(**kw):
  c = config_lib.load(f"{CONFIG}:steps=24,batch=32,width=0.125,data=builtin:shapes?n=512")
  c.log_every = 4
  c.checkpoint_every = 12
  c.keep_checkpoints = 5
  c.tensorboard = False
  c.evals.fewshot.data = ""  # covered in test_fewshot_linear
  for k, v in kw.items():
    c[k] = v
  return c


def test_simclr_learns_and_resumes_bitwise(tmp_path):
  ref_wd, wd = str(tmp_path / "ref"), str(tmp_path / "resumed")
  ref_state = train.run(_config(), ref_wd, devices=one_device())
  rows = [r for r in read_metrics(ref_wd) if "train/loss" in r]
  assert "train/contrastive_accuracy" in rows[0]
  assert rows[-1]["train/loss"] < rows[0]["train/loss"] - 0.1
  # A run that stopped after its step-12 checkpoint, resumed.
  os.makedirs(os.path.join(wd, "checkpoints"))
  shutil.copytree(os.path.join(ref_wd, "checkpoints", "12"), os.path.join(wd, "checkpoints", "12"))
  state = train.run(_config(), wd, devices=one_device())
  for a, b in zip(
    jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(jax.device_get(ref_state))
  ):
    np.testing.assert_array_equal(a, b)
  # The projection head is part of the checkpoint, under its own name (dropped for transfer).
  saved, _ = checkpoint.load_state(ref_wd)
  assert {"backbone", "projection"} == set(saved["params"])
