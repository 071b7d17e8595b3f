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

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_transfer import checkpoint, paths, runlock
from conftest import MINI, ROOT, leaves_equal, popen_train, run_cli, wait_until

ARGS = ["--config.eval_data=none", "--config.log_every=1", "--config.optimizer.warmup_steps=0"]


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
  stale_said = []
  stale = runlock.WorkdirLock(wd, log=stale_said.append)
  stale.me["pid"] = dead.pid
  paths.write_json(f"{wd}/.lock", stale.me)
  said = []
  taker = runlock.WorkdirLock(wd, log=said.append).acquire()
  assert said and f"pid {dead.pid} on this host is not running" in said[0]
  assert not stale.beat() and paths.read_json(f"{wd}/.lock")["token"] == taker.me["token"]
  assert len(stale_said) == 1 and "was taken over by" in stale_said[0]  # said, once
  assert not stale.beat() and len(stale_said) == 1
  stale.held = True
  stale.release()  # not its lock any more: left in place
  assert paths.read_json(f"{wd}/.lock")["token"] == taker.me["token"]
  taker.release()
  assert not paths.exists(f"{wd}/.lock")
  _no_local_url_directory()


def test_urls_go_through_gcsfs_where_tensorflow_is_installed_too(tmp_path):
  """etils.epath (ours, Orbax's checkpoint files) switches gs:// to TensorFlow's gfile whenever
  TensorFlow is importable: in an environment that also prepares TFDS data, bucket checkpoints
  then bypassed gcsfs (its retries, the emulator) and failed against the emulator."""
  fake = tmp_path / "site" / "tensorflow"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text("")  # importable: what etils checks
  probe = (
    "import big_transfer; from etils import epath; "
    "print(type(epath.Path('gs://b/x')._backend).__name__)"
  )
  env = {k: v for k, v in os.environ.items() if k != "EPATH_USE_TF"}
  env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), ROOT])
  out = subprocess.run(
    [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
  )
  assert out.stdout.strip() == "_FileSystemSpecBackend", out.stdout + out.stderr[-1000:]
  env["EPATH_USE_TF"] = "1"  # the user's own choice is kept
  out = subprocess.run(
    [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
  )
  assert out.stdout.strip() == "_TfBackend", out.stdout + out.stderr[-1000:]


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
  assert leaves_equal(got, jax.tree.map(lambda x: x + 1, state))
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


def test_metrics_in_a_bucket_are_stored_before_each_checkpoint_and_resume_drops_later_rows(
  bucket_dir, monkeypatch
):
  import shutil

  from big_transfer import logging as log_lib

  monkeypatch.setattr(log_lib.MetricWriter, "SYNC_EVERY_S", 3600.0)  # uploads only when told
  w = log_lib.MetricWriter(bucket_dir, tensorboard=True)
  for step in (1, 2, 3):
    w.write(step, {"train/loss": float(step)})
  w.flush()  # what the loop does before each checkpoint (here: checkpoint 3)
  for step in (4, 5):
    w.write(step, {"train/loss": float(step)})
  # Killed here (no close): rows 4 and 5 never reached the bucket; rows 1-3 did, whole.
  assert [r["step"] for r in log_lib.read_metrics(bucket_dir)] == [1, 2, 3]
  assert any(f.startswith("tensorboard/events.") for f in paths.files_under(bucket_dir))
  shutil.rmtree(w._mirror.local)  # noqa: SLF001  the killed process's staging directory
  # A run resumed from checkpoint 2 (3 was corrupt, say) drops row 3 and logs it again, once.
  w = log_lib.MetricWriter(bucket_dir, tensorboard=False, resume_step=2)
  w.write(3, {"train/loss": 3.5})
  w.close()
  rows = log_lib.read_metrics(bucket_dir)
  assert [(r["step"], r["train/loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.5)]


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


def test_a_public_checkpoint_in_a_bucket_converts_into_the_bucket_and_exports_from_it(
  bucket_dir, tmp_path
):
  from test_interop import random_weights

  from big_transfer import convert_checkpoint as cc
  from big_transfer import interop

  ours = random_weights("vit_ti16", 5, depth=2, image_size=32, patch=4)
  ours["pos_embed"][0] = 0  # big_vision has no position embedding for the class token
  np.savez(tmp_path / "vit.npz", **interop.export(ours, interop.big_vision_rule("bv", "tok", 3)))
  src, out = f"{bucket_dir}/public/vit.npz", f"{bucket_dir}/converted"
  paths.write_bytes(src, (tmp_path / "vit.npz").read_bytes())
  assert cc.main(["--from=big_vision", src, "--model=vit_ti4", f"--out={out}"]) == 0
  state, step = checkpoint.load_state(out)
  assert step == 0 and paths.read_json(f"{out}/config.json")["config"]["model"] == "vit_ti4"
  from big_transfer.transfer import flatten

  flat = flatten(state["params"])
  assert set(flat) == set(ours) and all(np.array_equal(flat[k], ours[k]) for k in ours)
  assert cc.main(["--to=timm", out, f"--out={bucket_dir}/export/vit.safetensors"]) == 0
  from safetensors.numpy import load

  exported = load(paths.read_bytes(f"{bucket_dir}/export/vit.safetensors"))
  meta = paths.read_json(f"{bucket_dir}/export/vit.json")
  assert meta["pretrained_cfg"]["file"] == f"{bucket_dir}/export/vit.safetensors"
  assert meta["source"] == f"{out}/checkpoints" and len(exported) == len(ours)
  _no_local_url_directory()


# ---------------------------------------------------------------- runs in the bucket


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
  proc = popen_train(args, wd)
  wait_until(lambda: _finished_steps(wd), proc, poll=0.2)  # each poll lists the bucket
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
    assert leaves_equal(got[part], ref[part]), part
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


@pytest.mark.slow  # ~2 min: a study in the bucket as three workers, collected, reported
def test_a_study_in_a_bucket_runs_as_workers_each_run_once_collects_and_reports_there(
  bucket_dir, tmp_path
):
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
  # Two workers and a third that says it is worker 0 again (a requeued task): each run is
  # claimed in the bucket (create-if-absent), so none runs twice.
  procs = [
    subprocess.Popen(
      [*cmd, f"--worker={w}"],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for w in ("0/2", "1/2", "0/2")
  ]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  for p, out in zip(procs, outs):  # a transfer run may wait for the other's pre-training
    assert p.returncode in (0, 1), out[-3000:]
  again = [
    subprocess.run([*cmd, f"--worker={w}"], cwd=ROOT, env=env, capture_output=True, text=True)
    for w in ("0/2", "1/2")
  ]
  assert all(a.returncode == 0 for a in again), again[0].stdout[-2000:] + again[1].stdout[-2000:]
  ran = [l for o in outs + [a.stdout for a in again] for l in o.splitlines() if ": ok in " in l]
  assert len(ran) == 3 and len({l.split("] ")[1].split(":")[0] for l in ran}) == 3  # once each
  assert not paths.exists(f"{wd}/results.jsonl")  # workers never write the shared table
  # The study itself finds every run finished in the bucket, derives the table, writes the report.
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "3 runs, 3 already finished, 0 to run" in out.stdout, out.stdout[-2000:]
  rows = [json.loads(line) for line in paths.read_text(f"{wd}/results.jsonl").splitlines()]
  assert sorted(r["tags"]["arm"] for r in rows) == ["scratch", "supervised_glyphs"]
  assert paths.read_json(f"{wd}/manifest.json")["runs"]
  assert paths.exists(f"{wd}/report/report.md")
  assert paths.read_bytes(f"{wd}/report/accuracy_vs_shots.png")[:4] == b"\x89PNG"
  assert not [f for f in paths.files_under(wd) if f.endswith((".claim", ".lock"))]  # released
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


@pytest.mark.slow  # ~2 min: two JAX processes (as the hosts of a pod) write to the bucket
def test_two_processes_checkpoint_into_a_bucket_and_one_process_resumes_from_it(
  bucket_dir, tmp_path
):
  """2 processes x 2 devices to step 4 in the bucket (every process writes its shards through
  tensorstore, process 0 the lock, metrics and markers), then 1 process on to step 8: the losses
  are those of an uninterrupted local 1-process run (float tolerance: another reduction order)."""
  from conftest import losses

  base = [
    f"--config={MINI}:steps=8,batch=32,width=0.125",
    "--config.checkpoint_every=4",
    "--config.optimizer.schedule=constant",
    *ARGS,
  ]
  ref_wd, wd = str(tmp_path / "ref"), f"{bucket_dir}/pod"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  train = [sys.executable, "-m", "big_transfer.train", *base]
  subprocess.run(
    [*train, f"--workdir={ref_wd}"], cwd=ROOT, env=env, check=True, capture_output=True
  )
  local = [os.path.join(ROOT, "launch", "local.sh"), "2", "2", "--", "python", "-m"]
  out = subprocess.run(
    [*local, "big_transfer.train", *base, f"--workdir={wd}", "--config.total_steps=4"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stdout[-3000:]
  assert "2 process(es)" in out.stdout
  assert checkpoint.find_checkpoints(wd)[1] == [4]
  assert {f.split("/")[0] for f in paths.files_under(f"{wd}/checkpoints/4/state")} >= {
    "ocdbt.process_0",
    "ocdbt.process_1",
  }  # both processes wrote their shards
  out = subprocess.run(
    [*train, f"--workdir={wd}", "--accept_changes=total_steps"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resumed from {wd}/checkpoints/4" in out.stdout
  np.testing.assert_allclose(losses(wd), losses(ref_wd), rtol=2e-5, atol=2e-5)
  _no_local_url_directory()


def test_the_data_converter_refuses_a_bucket_in_one_line(tmp_path):
  from big_transfer.data import convert

  for argv, what in (
    (["imagefolder", "gs://bucket/images", str(tmp_path / "out")], "SRC=gs://bucket/images"),
    (["imagefolder", str(tmp_path), "gs://bucket/converted"], "DST=gs://bucket/converted"),
  ):
    with pytest.raises(SystemExit) as e:
      convert.main(argv)
    msg = str(e.value)
    assert msg.startswith(f"error: {what}: gs:// is not readable") and "gcsfuse" in msg
    assert "\n" not in msg
  assert not os.path.exists(tmp_path / "out")
  _no_local_url_directory()


# ---------------------------------------------------------------- outages


def _errors(text: str) -> list[str]:
  return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.mark.slow  # ~1 min: a run through a bucket outage that outlasts the retries
def test_an_outage_through_a_save_is_one_line_naming_that_step_and_the_one_that_is_intact(
  bucket_dir, store_outage
):
  total, every = 400, 20
  args = [
    f"--config={MINI}:steps={total},batch=16,width=0.125",
    f"--config.checkpoint_every={every}",
  ]
  wd = f"{bucket_dir}/pretrain"
  proc = popen_train(args + ARGS, wd, env={"BT_STORE_RETRY_S": "3"})
  wait_until(lambda: _finished_steps(wd), proc, poll=0.2)
  store_outage.start(ops=("write", "delete"))  # everything written from now on fails
  out, err = proc.communicate(timeout=600)
  store_outage.stop()
  assert proc.returncode == 2, err[-3000:]
  (line,) = _errors(err)  # one line, no traceback, nothing chained on top of it
  assert "Traceback" not in err, err[-3000:]
  intact = _finished_steps(wd)[-1]
  assert f"saving checkpoint {wd}/checkpoints/{intact + every} failed: " in line, line
  assert f"the previous checkpoint {wd}/checkpoints/{intact} is intact" in line, line
  # The lock could not be removed either: said, with how the next run gets past it.
  assert f"the lock {wd}/.lock could not be released" in out and "takes it over" in out
  # The store back, the same command resumes from the intact checkpoint (the lock's holder is
  # gone) and finishes.
  out = run_cli(args + ARGS + [f"--workdir={wd}"])
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resumed from {wd}/checkpoints/{intact}" in out.stdout


@pytest.mark.slow  # ~40 s: a restore whose reads fail until the retries give up
def test_a_restore_whose_reads_fail_is_retried_then_one_line(bucket_dir, store_outage):
  args = [f"--config={MINI}:steps=10,batch=16,width=0.125", "--config.checkpoint_every=5", *ARGS]
  wd = f"{bucket_dir}/pretrain"
  run_cli(args + [f"--workdir={wd}"], check=True)
  store_outage.start(ops=("read",), match="CHECKSUMS.json")
  out = run_cli(args + [f"--workdir={wd}"], env={"BT_STORE_RETRY_S": "3"})
  store_outage.stop()
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
  (line,) = _errors(out.stderr)
  assert f"checkpoints in {wd}/checkpoints could not be read" in line, line
  assert "Service Unavailable" in line and "not corruption: nothing moved aside" in line
  assert "still after 3s of retries" in line
  assert sorted(checkpoint.find_checkpoints(wd)[1]) == [5, 10]  # nothing moved aside
  out = run_cli(args + [f"--workdir={wd}"])  # the store back: restored, already finished
  assert out.returncode == 0 and f"resumed from {wd}/checkpoints/10" in out.stdout, out.stderr


def test_a_bucket_that_does_not_exist_is_one_line_before_anything_runs(gcs_emulator, tmp_path):
  for module, config in (
    ("big_transfer.train", f"--config={MINI}"),
    ("big_transfer.study", f"--config={ROOT}/configs/mini/study.py"),
    ("big_transfer.report", None),
  ):
    out = subprocess.run(
      [
        sys.executable,
        "-m",
        module,
        *([config] if config else []),
        "--workdir=gs://no-such-bucket/x",
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert out.returncode == 2, (module, out.stderr[-2000:])
    (line,) = out.stderr.strip().splitlines()
    assert line == (
      "error: --workdir gs://no-such-bucket/x: the bucket gs://no-such-bucket does not exist or "
      "cannot be reached"
    ), (module, line)
  _no_local_url_directory()
