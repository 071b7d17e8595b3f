"""Never lose work: verified checkpoints and their fallback, corrupt vs. incompatible vs.
transient, preemption by a real signal, one run per workdir, bounded skipping, disk full,
exactly-once result and metric rows."""

import errno
import io
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from big_transfer import checkpoint, config_lib, finetune, train, transfer
from big_transfer.logging import read_metrics
from conftest import (
  MINI,
  ROOT,
  flip_a_byte,
  leaves_equal,
  losses,
  mini_config,
  one_device,
  popen_train,
  run_cli,
  wait_until,
)

ARGS = [
  "--config.eval_data=none",
  "--config.tensorboard=false",
  "--config.log_every=1",
  "--config.optimizer.warmup_steps=0",
]


def _logged_steps(wd):
  try:
    return [r["step"] for r in read_metrics(wd) if "train/loss" in r]
  except (FileNotFoundError, ValueError):
    return []


# ---------------------------------------------------------------- verified checkpoints


def test_flipped_bytes_are_caught_by_the_checksums_and_the_run_falls_back_exactly(tmp_path):
  ref_wd, wd = str(tmp_path / "ref"), str(tmp_path / "run")
  kw = dict(total_steps=12, checkpoint_every=4, keep_checkpoints=5)
  train.run(mini_config(**kw), ref_wd, devices=one_device())
  train.run(mini_config(**kw), wd, devices=one_device())
  import shutil  # the run as if it had been stopped after step 8

  shutil.rmtree(os.path.join(wd, "checkpoints", "12"))
  assert os.path.exists(os.path.join(wd, "checkpoints", "8", checkpoint.CHECKSUMS))
  flip_a_byte(os.path.join(wd, "checkpoints", "8"))
  assert "does not match its checksum" in checkpoint.verify(os.path.join(wd, "checkpoints", "8"))
  state = train.run(mini_config(**kw), wd, devices=one_device())
  ref, _ = checkpoint.load_state(ref_wd)
  assert leaves_equal(jax.device_get(state.params), ref["params"])  # from step 4, exactly
  assert os.path.isdir(os.path.join(wd, "checkpoints_corrupt", "8"))


def test_no_restorable_checkpoint_is_an_error_naming_each_unless_fresh_start_is_allowed(tmp_path):
  wd = str(tmp_path)
  train.run(mini_config(total_steps=4, checkpoint_every=2), wd, devices=one_device())
  for step in ("2", "4"):
    flip_a_byte(os.path.join(wd, "checkpoints", step))
  os.remove(os.path.join(wd, "done.json"))
  c = mini_config(total_steps=4, checkpoint_every=2)
  with pytest.raises(
    checkpoint.CheckpointError,
    match=r"no checkpoint in .* restores \(step 4: .*checksum.*; step 2: .*"
    r"Not starting again from step 0: set config.allow_fresh_start",
  ):
    train.run(c, wd, devices=one_device())
  assert not os.listdir(os.path.join(wd, "checkpoints"))
  state = train.run(
    mini_config(total_steps=2, checkpoint_every=2, allow_fresh_start=True),
    wd,
    devices=one_device(),
    accept_changes="total_steps",
  )
  assert int(state.step) == 2


def test_a_transient_read_error_is_retried_and_never_moves_a_checkpoint_aside(
  tmp_path, monkeypatch
):
  wd = str(tmp_path)
  train.run(mini_config(total_steps=4, checkpoint_every=4), wd, devices=one_device())
  real, calls = checkpoint.Checkpointer._restore, []

  def flaky(self, step, abstract):
    calls.append(step)
    if len(calls) <= 2:
      raise OSError(errno.ETIMEDOUT, "Connection timed out")
    return real(self, step, abstract)

  monkeypatch.setattr(checkpoint.Checkpointer, "_restore", flaky)
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev), checkpoint.load_state(wd)[0]
  )
  ck = checkpoint.Checkpointer(wd)
  step, _, loader, problems = ck.restore_latest(abstract, backoff_s=0.01)
  ck.close()
  assert (step, problems, calls) == (4, [], [4, 4, 4]) and loader["next_batch"] == 4
  monkeypatch.setattr(
    checkpoint.Checkpointer,
    "_restore",
    lambda *a: (_ for _ in ()).throw(OSError(errno.ESTALE, "Stale handle")),
  )
  ck = checkpoint.Checkpointer(wd)
  with pytest.raises(checkpoint.CheckpointError, match="transient failure, not corruption"):
    ck.restore_latest(abstract, retries=1, backoff_s=0.01)
  ck.close()
  assert os.path.isdir(os.path.join(wd, "checkpoints", "4"))  # still there
  assert not os.path.exists(os.path.join(wd, "checkpoints_corrupt"))


def test_finetune_uses_the_newest_good_checkpoint_and_the_study_needs_the_done_marker(tmp_path):
  from big_transfer import study

  pre = str(tmp_path / "pre")
  train.run(
    mini_config(total_steps=4, checkpoint_every=2, keep_checkpoints=3), pre, devices=one_device()
  )
  assert study.pretrain_finished(pre)
  flip_a_byte(os.path.join(pre, "checkpoints", "4"))
  loaded = transfer.load_pretrained(pre)
  assert loaded.step == 2
  c = config_lib.load(
    os.path.join(ROOT, "configs/mini/finetune.py") + f":pretrained={pre},protocol=lp,shots=2"
  )
  (row,) = finetune.run(c, str(tmp_path / "lp"), devices=one_device())
  assert row["pretrain_steps"] == 2
  os.remove(os.path.join(pre, "done.json"))  # a run that never finished
  assert not study.pretrain_finished(pre)


# ---------------------------------------------------------------- preemption


def test_sigterm_finishes_the_step_saves_and_the_restart_loses_no_step(tmp_path):
  args = [
    f"--config={MINI}:steps=150,batch=16,width=0.125",
    "--config.checkpoint_every=1000",
    *ARGS,
  ]
  ref_wd, wd = str(tmp_path / "ref"), str(tmp_path / "run")
  proc = popen_train(args, wd)
  wait_until(lambda: len(_logged_steps(wd)) >= 15, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 75, err[-2000:]
  stopped = [l for l in err.splitlines() if l.startswith("stopped: SIGTERM at step")]
  assert len(stopped) == 1, err[-2000:]
  step = int(stopped[0].split("at step ")[1].split(":")[0])
  assert 15 <= step < 150 and os.path.isdir(os.path.join(wd, "checkpoints", str(step)))
  assert _logged_steps(wd) == list(range(1, step + 1))  # logged up to the saved step
  out = run_cli(args + [f"--workdir={wd}"], check=True)
  assert f"resumed from {wd}/checkpoints/{step}" in out.stdout
  assert _logged_steps(wd) == list(range(1, 151))  # every step once: none lost, none repeated
  run_cli(args + [f"--workdir={ref_wd}"], check=True)
  ref, _ = checkpoint.load_state(ref_wd)
  got, _ = checkpoint.load_state(wd)
  assert leaves_equal(got["params"], ref["params"])
  assert leaves_equal(got["opt_state"], ref["opt_state"])


@pytest.mark.slow  # ~1 min: a run preempted and resumed, and an uninterrupted one
def test_a_resumed_runs_metrics_rows_equal_an_uninterrupted_runs(tmp_path):
  """Stopped between two rows (SIGTERM), the run saves the window in progress with its
  checkpoint: resumed, it logs exactly the rows an uninterrupted run logs — no row at the stop,
  the next row's means over all of its steps."""
  args = [
    f"--config={MINI}:steps=300,batch=16,width=0.125",
    "--config.checkpoint_every=1000",
    *ARGS,
    "--config.log_every=50",
  ]
  ref_wd, wd = str(tmp_path / "ref"), str(tmp_path / "run")
  steps = lambda w: [r["step"] for r in read_metrics(w) if "train/loss" in r]
  proc = popen_train(args, wd)
  wait_until(lambda: os.path.exists(os.path.join(wd, "metrics.jsonl")) and steps(wd), proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 75, err[-2000:]
  stopped = int(err.split("stopped: SIGTERM at step ")[1].split(":")[0])
  assert stopped < 300 and stopped % 50, "stopped on a logged step: nothing to test"
  assert steps(wd)[-1] < stopped  # no row at the stop itself
  run_cli(args + [f"--workdir={wd}"], check=True)
  run_cli(args + [f"--workdir={ref_wd}"], check=True)
  keys = ("step", "train/loss", "train/grad_norm", "train/param_norm", "train/lr")
  rows = lambda w: [tuple(r[k] for k in keys) for r in read_metrics(w) if "train/loss" in r]
  assert rows(wd) == rows(ref_wd)  # every row, number for number


# ---------------------------------------------------------------- one run per workdir


def test_a_second_run_on_a_workdir_refuses_and_a_dead_runs_lock_is_taken_over(tmp_path):
  args = [
    f"--config={MINI}:steps=2000,batch=16,width=0.125",
    "--config.checkpoint_every=5000",
    *ARGS,
  ]
  wd = str(tmp_path)
  first = popen_train(args, wd)
  try:
    wait_until(lambda: len(_logged_steps(wd)) >= 2, first)
    out = run_cli(args + [f"--workdir={wd}"])
    assert out.returncode == 2
    (err,) = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert f"is in use by pid {first.pid} on" in err and "use another --workdir" in err
    assert "first step" not in out.stdout
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  assert os.path.exists(os.path.join(wd, ".lock"))  # left behind by the killed run
  args[0] = f"--config={MINI}:steps=3,batch=16,width=0.125"
  out = run_cli(args + [f"--workdir={wd}", "--accept_changes=total_steps"], check=True)
  assert (
    f"taking over the lock of a run that is gone (pid {first.pid} on this host is not "
    "running)" in out.stdout
  )
  assert not os.path.exists(os.path.join(wd, ".lock"))


# ---------------------------------------------------------------- bounded skipping


def _png_records(path, n=40):
  from big_transfer.data import sources

  rng = np.random.default_rng(0)
  exs = []
  for i in range(n):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    exs.append({"image": buf.getvalue(), "label": i % 2, "key": f"img{i}"})
  sources.write_arrayrecord(path, {"train": exs[:32], "test": exs[32:]}, class_names=["a", "b"])


def test_a_chain_that_fails_on_every_record_stops_train_and_finetune_with_one_line(tmp_path):
  _png_records(str(tmp_path / "data"))
  bad_pp = "decode|central_crop(32)|value_range(-1,1)"  # the records hold 8x8 images
  out = run_cli(
    [
      f"--config={MINI}",
      f"--workdir={tmp_path / 'run'}",
      f"--config.data=arrayrecord:{tmp_path / 'data'}",
      f"--config.pp_train={bad_pp}",
      "--config.batch_size=8",
      "--config.eval_data=none",
    ],
    timeout=300,
  )
  assert out.returncode == 2, out.stderr[-2000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in out.stderr
  assert f"preprocessing '{bad_pp}' failed on each of the first" in errors[0]
  assert "key 'img" in errors[0] and "step 1/" not in out.stdout
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "big_transfer.finetune",
      f"--config={ROOT}/configs/mini/finetune.py:data=arrayrecord:{tmp_path / 'data'},batch=8",
      f"--workdir={tmp_path / 'ft'}",
      f"--config.pp_train={bad_pp}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 2, out.stderr[-2000:]
  assert [l for l in out.stderr.splitlines() if l.startswith("error:")][0].startswith(
    f"error: preprocessing '{bad_pp}' failed on each of the first"
  )


def test_evaluation_with_a_corrupt_record_on_8_devices_masks_it(tmp_path):
  from big_transfer.data import sources

  _png_records(str(tmp_path / "data"), 40)
  src = sources.ArrayRecordSource(str(tmp_path / "data"), "test")
  exs = [src[i] for i in range(len(src))]
  exs[3]["image"] = b"broken"
  train_src = sources.ArrayRecordSource(str(tmp_path / "data"), "train")
  sources.write_arrayrecord(
    str(tmp_path / "data2"),
    {"train": [train_src[i] for i in range(len(train_src))], "test": exs},
    class_names=["a", "b"],
  )
  c = mini_config(
    data=f"arrayrecord:{tmp_path / 'data2'}",
    eval_data="",
    total_steps=2,
    batch_size=16,
    eval_batch_size=8,
    pp_train="decode|resize(32)|value_range(-1,1)",
    pp_eval="decode|resize(32)|value_range(-1,1)",
  )
  train.run(c, str(tmp_path / "run"), devices=jax.devices()[:8])
  evals = [r for r in read_metrics(str(tmp_path / "run")) if "eval/accuracy" in r]
  assert evals and 0 <= evals[-1]["eval/accuracy"] <= 1


# ---------------------------------------------------------------- disk full


@pytest.fixture
def tiny_disk(tmp_path):
  mnt = tmp_path / "tiny"
  mnt.mkdir()
  if subprocess.run(
    ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True
  ).returncode:
    pytest.skip("cannot mount a small tmpfs here (needs root)")
  yield mnt
  subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow  # ~20 s: a small file system mounted for the run
def test_a_full_disk_during_a_save_is_one_line_and_the_run_resumes_when_space_is_back(tiny_disk):
  wd = str(tiny_disk / "run")
  args = [
    f"--config={MINI}:steps=12,batch=16,width=0.25",
    "--config.checkpoint_every=4",
    "--config.keep_checkpoints=10",
    *ARGS,
    f"--workdir={wd}",
  ]
  out = run_cli(args)
  assert out.returncode == 2, out.stderr[-3000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "no space left on device" in errors[0], out.stderr[-3000:]
  assert "GiB free of" in errors[0] and wd in errors[0]
  assert len(out.stderr.splitlines()) < 40, out.stderr  # not a 2,000-line log
  saved = checkpoint.Checkpointer(wd).steps()
  subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
  out = run_cli(args)
  assert out.returncode == 0, out.stderr[-3000:]
  assert (f"resumed from {wd}/checkpoints/{saved[-1]}" in out.stdout) if saved else True
  assert checkpoint.load_state(wd)[1] == 12


# ---------------------------------------------------------------- exactly once


def test_metric_rows_are_not_repeated_after_a_resume(tmp_path):
  import shutil

  wd = str(tmp_path)
  train.run(
    mini_config(total_steps=10, checkpoint_every=4, keep_checkpoints=5), wd, devices=one_device()
  )
  for step in ("8", "10"):  # a run killed after step 10 whose last checkpoint was step 4
    shutil.rmtree(os.path.join(wd, "checkpoints", step))
  with open(os.path.join(wd, "metrics.jsonl"), "a") as f:
    f.write('{"step": 11, "train/lo')  # a line cut by the kill
  train.run(mini_config(total_steps=10, checkpoint_every=4), wd, devices=one_device())
  assert _logged_steps(wd) == list(range(1, 11))


def test_a_transfer_run_writes_its_rows_once_even_when_stopped_between_marker_and_rows(
  tmp_path, monkeypatch
):
  table = str(tmp_path / "results.jsonl")
  c = config_lib.load(os.path.join(ROOT, "configs/mini/finetune.py") + ":protocol=lp,shots=2")
  c.results_file = table
  real = transfer.append_results
  monkeypatch.setattr(
    transfer, "append_results", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())
  )
  with pytest.raises(KeyboardInterrupt):  # killed after done.json, before the rows
    finetune.run(c, str(tmp_path / "lp"), devices=one_device())
  assert os.path.exists(tmp_path / "lp" / "done.json") and not os.path.exists(table)
  monkeypatch.setattr(transfer, "append_results", real)
  for _ in range(2):
    finetune.run(c, str(tmp_path / "lp"), devices=one_device())
  rows = transfer.read_results(table)
  assert len(rows) == 1 and rows[0]["row_id"].endswith("lp#0")
  assert len(transfer.read_results(str(tmp_path / "lp" / "results.jsonl"))) == 1


# ---------------------------------------------------------------- elastic resume


@pytest.mark.slow  # ~2 minutes: JAX processes through launch/local.sh
def test_a_run_resumed_on_two_processes_continues_the_same_global_stream(tmp_path):
  """1 process to step 4, then 2 processes x 2 devices to step 8: the losses of steps 5-8 are
  those of an uninterrupted 1-process run (float tolerance: another reduction order)."""
  base = [
    f"--config={MINI}:steps=8,batch=32,width=0.125",
    "--config.checkpoint_every=4",
    "--config.optimizer.schedule=constant",
    *ARGS,
  ]
  ref_wd, wd = str(tmp_path / "ref"), str(tmp_path / "run")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  subprocess.run(
    [sys.executable, "-m", "big_transfer.train", *base, f"--workdir={ref_wd}"],
    cwd=ROOT,
    env=env,
    check=True,
    capture_output=True,
  )
  subprocess.run(
    [
      sys.executable,
      "-m",
      "big_transfer.train",
      *base,
      f"--workdir={wd}",
      "--config.total_steps=4",
    ],
    cwd=ROOT,
    env=env,
    check=True,
    capture_output=True,
  )
  out = subprocess.run(
    [
      os.path.join(ROOT, "launch", "local.sh"),
      "2",
      "2",
      "--",
      "python",
      "-m",
      "big_transfer.train",
      *base,
      f"--workdir={wd}",
      "--accept_changes=total_steps",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stdout[-3000:]
  assert "2 process(es)" in out.stdout and f"resumed from {wd}/checkpoints/4" in out.stdout
  assert "resuming with accepted changes" in out.stdout and "total_steps 4 -> 8" in out.stdout
  assert _logged_steps(wd) == list(range(1, 9))
  np.testing.assert_allclose(losses(wd), losses(ref_wd), rtol=2e-5, atol=2e-5)


def _two_processes(wd, steps=3000, env=None):
  cmd = [
    os.path.join(ROOT, "launch", "local.sh"),
    "2",
    "2",
    "--",
    "python",
    "-m",
    "big_transfer.train",
    f"--config={MINI}:steps={steps},batch=16,width=0.125",
    "--config.checkpoint_every=10000",
    *ARGS,
    f"--workdir={wd}",
  ]
  env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, **(env or {})}
  return subprocess.Popen(
    cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )


def _running(wd) -> list[int]:
  out = subprocess.run(["pgrep", "-f", f"big_transfer.train.*workdir={wd}"], capture_output=True)
  return [int(p) for p in out.stdout.split()]


@pytest.mark.slow  # ~1 min: two processes stopped through their launcher
def test_the_launcher_forwards_sigterm_waits_for_the_save_and_leaves_nothing_behind(tmp_path):
  wd = str(tmp_path)
  proc = _two_processes(wd)
  wait_until(lambda: len(_logged_steps(wd)) >= 10, proc)
  proc.send_signal(signal.SIGTERM)  # what `timeout` or a scheduler sends to the launcher
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 75, out[-3000:]
  assert "SIGTERM: forwarded to the 2 processes" in out
  stops = [l for l in out.splitlines() if "stopped: SIGTERM at step" in l]
  assert len(stops) == 2, out[-3000:]
  assert _running(wd) == []  # no orphans


@pytest.mark.slow  # ~1 min: a process killed, its peer ended in bounded time
def test_a_process_whose_peer_died_stops_within_the_heartbeat_timeout(tmp_path):
  import time

  wd = str(tmp_path)
  proc = _two_processes(wd, env={"BT_HEARTBEAT_TIMEOUT_S": "10"})
  wait_until(lambda: len(_logged_steps(wd)) >= 10, proc)
  os.kill(max(_running(wd)), signal.SIGKILL)  # a host gone
  t0 = time.time()
  out, _ = proc.communicate(timeout=300)
  assert time.time() - t0 < 60, "the surviving process hung"
  assert proc.returncode != 0 and _running(wd) == []
  assert "was ended by JAX's coordination service after a peer process died" in out, out[-3000:]
  assert "was killed (SIGKILL)" in out


@pytest.mark.slow  # ~2 minutes
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step_after_saving(tmp_path):
  wd = str(tmp_path)
  cmd = [
    os.path.join(ROOT, "launch", "local.sh"),
    "2",
    "2",
    "--",
    "python",
    "-m",
    "big_transfer.train",
    f"--config={MINI}:steps=3000,batch=16,width=0.125",
    "--config.checkpoint_every=10000",
    *ARGS,
    f"--workdir={wd}",
  ]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.Popen(
    cmd,
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    start_new_session=True,
  )
  wait_until(lambda: len(_logged_steps(wd)) >= 10, proc)
  pids = subprocess.run(
    ["pgrep", "-f", f"big_transfer.train.*workdir={wd}"], capture_output=True, text=True
  ).stdout.split()
  workers = [int(p) for p in pids if int(p) != proc.pid]
  os.kill(max(workers), signal.SIGTERM)  # the notice reaches one host only
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 75, out[-3000:]
  stops = [l for l in out.splitlines() if "stopped: SIGTERM at step" in l]
  assert len(stops) == 2, out[-3000:]  # both processes, at the same step
  step = int(stops[0].split("at step ")[1].split(":")[0])
  assert all(f"at step {step}:" in l for l in stops)
  assert os.path.isdir(os.path.join(wd, "checkpoints", str(step)))
