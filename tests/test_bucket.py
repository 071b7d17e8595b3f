"""Workdirs, checkpoints, results and reports in a bucket (gs://), against a local GCS API
(tests/gcs_emulator.py: PyPI's gcp-storage-emulator with GCS's generations and preconditions):
pre-training killed and resumed bitwise, fine-tuning from it, a study and its report, the lock,
checksums verified on object storage, and the readers that cannot read a bucket refusing in one
line."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_transfer import checkpoint, paths, runlock
from conftest import MINI, ROOT, run_cli

ARGS = ["--config.eval_data=none", "--config.log_every=1", "--config.optimizer.warmup_steps=0"]


def _leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(
    np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)
  )


def _no_local_url_directory():
  for where in (ROOT, os.getcwd()):
    assert not os.path.exists(os.path.join(where, "gs:")), where


# ---------------------------------------------------------------- the path layer and the lock


def test_a_lock_in_a_bucket_is_created_once_refuses_a_second_run_and_is_taken_over(bucket_dir):
  # Create-if-absent: of eight racers exactly one creates the object, whatever the order.
  target = f"{bucket_dir}/race"
  won = []

  def racer(i):
    if paths.create_exclusive(target, json.dumps({"who": i}).encode()):
      won.append(i)

  threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(won) == 1 and paths.read_json(target) == {"who": won[0]}

  wd = f"{bucket_dir}/run"
  first = runlock.WorkdirLock(wd, log=lambda m: None).acquire()
  assert paths.read_json(f"{wd}/.lock")["token"] == first.me["token"]
  with pytest.raises(runlock.LockError, match=f"workdir {wd} is in use by pid {os.getpid()} on"):
    runlock.WorkdirLock(wd).acquire()
  assert first.beat()  # the heartbeat rewrites the lock while it is its holder's
  first.release()
  assert not paths.exists(f"{wd}/.lock")

  # A lock whose holder is gone (a pid not running on this host) is taken over, saying so;
  # the old holder's heartbeat then finds the lock is no longer its own and leaves it alone.
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  stale = runlock.WorkdirLock(wd)
  stale.me["pid"] = dead.pid
  paths.write_json(f"{wd}/.lock", stale.me)
  said = []
  taker = runlock.WorkdirLock(wd, log=said.append).acquire()
  assert said and f"pid {dead.pid} on this host is not running" in said[0]
  assert not stale.beat() and paths.read_json(f"{wd}/.lock")["token"] == taker.me["token"]
  stale.held = True
  stale.release()  # not its lock any more: left in place
  assert paths.read_json(f"{wd}/.lock")["token"] == taker.me["token"]
  taker.release()
  assert not paths.exists(f"{wd}/.lock")
  _no_local_url_directory()


def test_checkpoints_in_a_bucket_are_verified_and_a_corrupt_one_falls_back(bucket_dir):
  wd = f"{bucket_dir}/ckpt"
  mesh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  state = {"w": jnp.arange(64.0), "b": jnp.ones((4, 4))}
  ckpt = checkpoint.Checkpointer(wd, keep=3)
  for step in (1, 2):
    ckpt.save(step, jax.tree.map(lambda x, s=step: x + s, state), {"next_batch": step})
  ckpt.close()
  d = f"{wd}/checkpoints"
  assert sorted(int(s) for s in paths.listdir(d)) == [1, 2]
  sums = paths.read_json(f"{d}/2/CHECKSUMS.json")["crc32"]  # sealed on the object store too
  assert any(k.startswith("state/") for k in sums)

  # One flipped bit in the newest step's largest array file: caught, set aside, step 1 restores.
  files = [f for f in paths.files_under(f"{d}/2/state") if "/d/" in f or f.startswith("d/")]
  biggest = max(files, key=lambda f: len(paths.read_bytes(f"{d}/2/state/{f}")))
  data = bytearray(paths.read_bytes(f"{d}/2/state/{biggest}"))
  data[len(data) // 2] ^= 0x40
  paths.write_bytes(f"{d}/2/state/{biggest}", bytes(data))
  ckpt = checkpoint.Checkpointer(wd, keep=3)
  abstract = checkpoint.abstract_like(state, jax.tree.map(lambda _: mesh, state))
  step, got, loader, problems = ckpt.restore_latest(abstract)
  ckpt.close()
  assert step == 1 and loader == {"next_batch": 1}
  assert _leaves_equal(got, jax.tree.map(lambda x: x + 1, state))
  assert len(problems) == 1 and "does not match its checksum" in problems[0]
  assert paths.exists(f"{wd}/checkpoints_corrupt/2/state")  # moved aside, nothing deleted
  assert not paths.exists(f"{d}/2")

  # A step a kill left unfinished (no commit marker: object stores have no rename) is not
  # listed, and the next run removes it, saying so.
  paths.write_text(f"{d}/3/state/_METADATA", "{}")
  said = []
  assert checkpoint.remove_unfinished(d, said.append) == ["3"]
  assert "removed 1 unfinished checkpoint(s)" in said[0] and not paths.exists(f"{d}/3")
  _no_local_url_directory()


def test_readers_of_local_files_refuse_a_bucket_in_one_line_naming_the_mount_recipe(tmp_path):
  from big_transfer.data import sources

  with pytest.raises(sources.DataError) as e:
    sources.open_source("arrayrecord:gs://bucket/converted/cifar:train")
  msg = str(e.value)
  assert "\n" not in msg and "ArrayRecord's reader reads local files" in msg and "gcsfuse" in msg
  out = run_cli(
    [f"--config={MINI}:steps=2,batch=16,width=0.125", f"--workdir={tmp_path}"]
    + ["--config.data_dir=gs://bucket/tfds"]
  )
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert out.returncode == 2 and len(errors) == 1, out.stderr[-2000:]
  assert "config.data_dir=gs://bucket/tfds" in errors[0] and "gcsfuse" in errors[0]
  _no_local_url_directory()


# ---------------------------------------------------------------- runs in the bucket


def _wait(cond, proc, timeout=300):
  t0 = time.time()
  while not cond():
    if proc.poll() is not None:
      raise AssertionError(f"run ended early: {proc.stderr.read()[-2000:]}")
    if time.time() - t0 > timeout:
      raise AssertionError("timeout")
    time.sleep(0.2)


def _finished_steps(wd):
  try:
    return checkpoint.find_checkpoints(wd)[1]
  except checkpoint.CheckpointError:
    return []


@pytest.mark.slow  # ~2 min: three short pre-training runs and a fine-tuning run through the API
def test_pretraining_in_a_bucket_killed_resumes_bitwise_and_finetunes_from_it(bucket_dir, tmp_path):
  total, every = 40, 10
  args = [
    f"--config={MINI}:steps={total},batch=16,width=0.125",
    f"--config.checkpoint_every={every}",
    "--config.keep_checkpoints=2",
    *ARGS,
  ]
  wd, ref_wd = f"{bucket_dir}/pretrain", str(tmp_path / "ref")
  proc = subprocess.Popen(
    [sys.executable, "-m", "big_transfer.train", *args, f"--workdir={wd}"],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  _wait(lambda: _finished_steps(wd), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  saved = _finished_steps(wd)[0]
  assert saved < total, "killed too late"
  assert paths.exists(f"{wd}/.lock")  # left behind by the killed run

  out = run_cli(args + [f"--workdir={wd}"])
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resumed from {wd}/checkpoints/" in out.stdout
  assert f"pid {proc.pid} on this host is not running" in out.stdout  # the lock taken over
  run_cli(args + [f"--workdir={ref_wd}"], check=True)
  ref, ref_step = checkpoint.load_state(ref_wd)
  got, step = checkpoint.load_state(wd)
  assert step == ref_step == total
  for part in ("params", "opt_state", "model_state"):
    assert _leaves_equal(got[part], ref[part]), part
  from big_transfer.logging import read_metrics

  steps = [r["step"] for r in read_metrics(wd) if "train/loss" in r]
  assert steps == list(range(1, total + 1))  # every step once, none repeated after the kill
  assert paths.read_json(f"{wd}/done.json")["step"] == total
  assert paths.exists(f"{wd}/tensorboard") and not paths.exists(f"{wd}/.lock")

  # Fine-tuning from the bucket into the bucket, its rows into a results file there.
  ft = f"{bucket_dir}/lp"
  results = f"{bucket_dir}/results.jsonl"
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "big_transfer.finetune",
      f"--config=configs/mini/finetune.py:pretrained={wd},protocol=lp,shots=2",
      f"--workdir={ft}",
      f"--config.results_file={results}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  (row,) = paths.read_json(f"{ft}/done.json")["rows"]
  assert row["pretrained"] == wd and row["pretrain_steps"] == total and row["workdir"] == ft
  assert [json.loads(line)["row_id"] for line in paths.read_text(results).splitlines()] == [
    row["row_id"]
  ]
  _no_local_url_directory()


@pytest.mark.slow  # ~2 min: a two-arm study with its workdir in the bucket, then its report
def test_a_study_in_a_bucket_runs_collects_and_reports_there(bucket_dir, tmp_path):
  cfg = tmp_path / "tiny.py"
  cfg.write_text(
    """
import ml_collections

def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.name = "tiny"
  c.pretrain = [
      dict(name="supervised_glyphs", method="supervised", source="glyphs", size="800",
           group="sources+reference",
           config="configs/mini/supervised.py:steps=4,batch=16,width=0.125",
           overrides={"eval_data": "none", "checkpoint_every": 4,
                      "data": "builtin:glyphs?n=800"}),
      dict(name="scratch", method="scratch", config="", group="reference"),
  ]
  c.downstream = [dict(name="digits", data="builtin:digits")]
  c.transfer_config = "configs/mini/finetune.py"
  c.transfer_overrides = {"batch_size": 32}
  c.protocols = ("lp",)
  c.shots = ("2",)
  c.seeds = (0,)
  return c
"""
  )
  wd = f"{bucket_dir}/study"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cmd = [sys.executable, "-m", "big_transfer.study", f"--config={cfg}", f"--workdir={wd}"]
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  rows = [json.loads(line) for line in paths.read_text(f"{wd}/results.jsonl").splitlines()]
  assert sorted(r["tags"]["arm"] for r in rows) == ["scratch", "supervised_glyphs"]
  assert paths.read_json(f"{wd}/manifest.json")["runs"]
  assert paths.exists(f"{wd}/report/report.md")
  assert paths.read_bytes(f"{wd}/report/accuracy_vs_shots.png")[:4] == b"\x89PNG"
  # Run again: everything is found finished in the bucket, nothing is redone.
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "3 runs, 3 already finished, 0 to run" in out.stdout, out.stdout[-2000:]
  # The report on its own, from the bucket.
  paths.remove(f"{wd}/report/report.md")
  out = subprocess.run(
    [sys.executable, "-m", "big_transfer.report", f"--workdir={wd}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == f"{wd}/report/report.md" and paths.exists(out.stdout.strip())
  _no_local_url_directory()
