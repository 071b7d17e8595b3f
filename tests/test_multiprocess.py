"""Two JAX processes on localhost (jax.distributed + gloo) through launch/local.sh."""

import os
import subprocess

import jax
import numpy as np
import pytest

from big_transfer import train
from big_transfer.logging import read_metrics
from conftest import MINI, ROOT, losses, mini_config, one_device


@pytest.mark.slow  # ~90 s; the contrastive losses across 2 processes run by default (test_clip)
def test_two_processes_match_the_single_process_run(tmp_path):
  mp_wd, ref_wd = str(tmp_path / "two_processes"), str(tmp_path / "one_process")
  cmd = [
    os.path.join(ROOT, "launch", "local.sh"),
    "2",
    "2",
    "--",
    "python",
    "-m",
    "big_transfer.train",
    f"--config={MINI}:steps=6,batch=32,width=0.125",
    f"--workdir={mp_wd}",
    "--config.log_every=1",
    "--config.checkpoint_every=3",
    "--config.eval_every=6",
    "--config.tensorboard=false",
    "--config.optimizer.lr=0.2",
    "--config.optimizer.warmup_steps=0",
  ]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:]
  assert "[launch/local.sh] process 1/2" in out.stdout  # it says what it runs
  assert "[Gloo]" not in out.stdout  # gloo's connection lines, dropped by the launcher
  assert "mesh: data=4 fsdp=1 over 4 cpu devices, 2 process(es)" in out.stdout

  c = mini_config(eval_data="", eval_every=6, checkpoint_every=3, **{"optimizer.lr": 0.2})
  train.run(c, ref_wd, devices=one_device())
  np.testing.assert_allclose(losses(mp_wd), losses(ref_wd), rtol=2e-5, atol=2e-5)
  # The loader's position is the step (nothing per process): one small record beside the
  # shared arrays, with the skipped-record count of both processes (and the metrics window in
  # progress: none at a logged step).
  import json

  loader = os.path.join(mp_wd, "checkpoints", "6", "loader", "metadata")
  assert json.load(open(loader)) == {"next_batch": 6, "skipped": 0, "metrics_window": []}
  # Metrics come from process 0 only: one row per logged step.
  steps = [r["step"] for r in read_metrics(mp_wd) if "train/loss" in r]
  assert steps == [1, 2, 3, 4, 5, 6]


def test_two_jax_processes_read_disjoint_shards_covering_the_epoch(tmp_path):
  import json
  import sys

  cmd = [
    os.path.join(ROOT, "launch", "local.sh"),
    "2",
    "--",
    sys.executable,
    os.path.join(ROOT, "tests", "mp_reader.py"),
    str(tmp_path),
  ]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-3000:]
  seen = [json.load(open(tmp_path / f"process_{i}.json")) for i in range(2)]
  assert all(s["process_count"] == 2 for s in seen)
  a, b = seen[0]["ids"], seen[1]["ids"]
  assert len(a) == len(b) == 24 and not set(a) & set(b)
  assert sorted(a + b) == list(range(48))


def _launch(args, timeout=900):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run(
    [os.path.join(ROOT, "launch", "local.sh"), "2", "2", "--", "python", "-m", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert out.returncode == 0, out.stdout[-3000:]
  return out


@pytest.mark.slow  # ~3 minutes: a pre-training run and two transfers on 2 processes
def test_few_shot_evaluation_linear_probes_and_lp_ft_are_the_same_on_two_processes(tmp_path):
  """Features gathered from every process come back in source order (by _index): the
  few-shot evaluator during pre-training, lp and lp_ft give one process's results."""
  import json

  from big_transfer import config_lib, finetune

  fewshot = [
    "--config.evals.fewshot.data=builtin:digits",
    "--config.evals.fewshot.shots=(1,10)",
    "--config.evals.fewshot.seeds=(0,)",
    "--config.evals.fewshot.every=8",
  ]
  # lr 0: the same weights on both layouts (training noise would blur the comparison); the
  # BatchNorm statistics still move, and the probe sees real features.
  pre_args = [
    "big_transfer.train",
    f"--config={MINI}:steps=8,batch=32,width=0.125",
    "--config.eval_data=none",
    "--config.tensorboard=false",
    "--config.optimizer.lr=0.0",
    *fewshot,
  ]
  mp_pre, ref_pre = str(tmp_path / "pre_2p"), str(tmp_path / "pre_1p")
  _launch(pre_args + [f"--workdir={mp_pre}"])
  c = mini_config("steps=8,batch=32,width=0.125", eval_data="none", **{"optimizer.lr": 0.0})
  c.evals.fewshot.update(data="builtin:digits", shots=(1, 10), seeds=(0,), every=8)
  train.run(c, ref_pre, devices=one_device())
  last = lambda wd: [r for r in read_metrics(wd) if "fewshot/digits/10shot" in r][-1]
  for k in ("fewshot/digits/1shot", "fewshot/digits/10shot"):
    assert last(mp_pre)[k] == pytest.approx(last(ref_pre)[k], abs=1 / 360 + 1e-9), k
  for protocol in ("lp", "lp_ft"):
    ft = (
      f"{ROOT}/configs/mini/finetune.py:pretrained={ref_pre},protocol={protocol},shots=5,epochs=5"
    )
    wd = str(tmp_path / f"{protocol}_2p")
    _launch(["big_transfer.finetune", f"--config={ft}", f"--workdir={wd}"])
    (mp_row,) = json.load(open(os.path.join(wd, "done.json")))["rows"]
    (row,) = finetune.run(
      config_lib.load(ft), str(tmp_path / f"{protocol}_1p"), devices=jax.devices()[:4]
    )
    assert mp_row["num_test"] == row["num_test"] == 360
    assert mp_row["hyperparameters"].get("l2") == row["hyperparameters"].get("l2")
    tol = 1 / 360 + 1e-9 if protocol == "lp" else 0.02  # lp_ft trains: reduction order
    assert mp_row["test_accuracy"] == pytest.approx(row["test_accuracy"], abs=tol), protocol
