"""A workdir is one run: resume checks what it resumes, every checkpoint is verified by what its
own save wrote, nothing restarts from step 0 without saying so, no row is lost, and the report
and the command line say what is wrong in one line."""

import glob
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from big_transfer import checkpoint, config_lib, finetune, identity, report, study, train
from big_transfer.logging import read_metrics
from conftest import MINI, ROOT, flip_a_byte, mini_config, one_device, run_cli

FT = os.path.join(ROOT, "configs", "mini", "finetune.py")


def _cfg(**kw):
  return mini_config(**{"total_steps": 4, "checkpoint_every": 2, **kw})


def _read(path):
  with open(path) as f:
    return f.read()


def _steps(wd):
  return [r["step"] for r in read_metrics(wd) if "train/loss" in r]


# ---------------------------------------------------------------- run identity


def test_a_restart_with_another_config_is_refused_in_one_line_before_anything_is_written(tmp_path):
  wd = str(tmp_path / "run")
  train.run(_cfg(), wd, devices=one_device())
  os.remove(os.path.join(wd, "done.json"))  # as if stopped after its last save
  kept = {
    n: _read(os.path.join(wd, n))
    for n in ("config.json", "parameters.txt", "metrics.jsonl", "run.json")
  }
  with pytest.raises(
    identity.IdentityError,
    match=r"1 key\(s\) differ: batch_size 32 -> 16\).*"
    r"--accept_changes=batch_size$",
  ):
    train.run(_cfg(batch_size=16), wd, devices=one_device())
  with pytest.raises(identity.IdentityError, match=r"model_kwargs.width 0.125 -> 0.25"):
    train.run(_cfg(**{"model_kwargs.width": 0.25}), wd, devices=one_device())
  # The refused restarts wrote nothing: the run can still be resumed and fine-tuned.
  assert {n: _read(os.path.join(wd, n)) for n in kept} == kept
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2", "4"]

  # The command line: one error line, exit 2, naming the key and both values.
  out = run_cli(
    [
      f"--config={MINI}:steps=4,batch=16,width=0.125",
      f"--workdir={wd}",
      "--config.eval_data=none",
      "--config.tensorboard=false",
      "--config.log_every=1",
      "--config.optimizer.warmup_steps=0",
      "--config.checkpoint_every=2",
    ]
  )
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
  (err,) = [l for l in out.stderr.splitlines() if l.strip()]
  assert err.startswith(f"error: workdir {wd} holds a run with another config")
  assert "batch_size 32 -> 16" in err

  # Changes that cannot alter the result resume, recorded.
  train.run(_cfg(log_every=2, data_threads=3, keep_checkpoints=4), wd, devices=one_device())
  record = json.loads(_read(os.path.join(wd, "run.json")))
  assert {(c["key"], c["why"]) for c in record["changes"]} == {
    ("log_every", "neutral"),
    ("data_threads", "neutral"),
    ("keep_checkpoints", "neutral"),
  }
  # An accepted change: recorded with both values; the run goes on from its checkpoint.
  state = train.run(
    _cfg(total_steps=6, log_every=2, data_threads=3, keep_checkpoints=4),
    wd,
    devices=one_device(),
    accept_changes="total_steps",
  )
  assert int(state.step) == 6
  record = json.loads(_read(os.path.join(wd, "run.json")))
  assert {"key": "total_steps", "from": 4, "to": 6, "why": "accepted"}.items() <= record["changes"][
    -1
  ].items()
  assert record["identity"]["total_steps"] == 6
  assert _steps(wd) == [1, 2, 3, 4, 6]  # 5 is not a multiple of log_every=2: one row for 5-6


def test_keys_the_code_added_since_a_run_started_resume_at_their_defaults_only(tmp_path):
  wd, logged = str(tmp_path), []
  now = config_lib.to_plain(mini_config())
  identity.check(wd, now, kind="train", log=logged.append)
  # The run as an older version froze it: without the clip section's ssl_weight.
  record = json.loads(_read(os.path.join(wd, "run.json")))
  del record["identity"]["clip"]["ssl_weight"]
  with open(os.path.join(wd, "run.json"), "w") as f:
    json.dump(record, f)
  assert identity.check(wd, now, kind="train", log=logged.append) == []
  assert (
    "added to the config since this run started, at their defaults: clip.ssl_weight" in logged[-1]
  )
  changes = json.loads(_read(os.path.join(wd, "run.json")))["changes"]
  assert [(c["key"], c["why"]) for c in changes] == [("clip.ssl_weight", "added at its default")]
  # An added key set to something else than its default is a change like any other.
  record = json.loads(_read(os.path.join(wd, "run.json")))
  del record["identity"]["clip"]["ssl_weight"]
  with open(os.path.join(wd, "run.json"), "w") as f:
    json.dump(record, f)
  changed = config_lib.to_plain(mini_config(**{"clip.ssl_weight": 0.5}))
  with pytest.raises(identity.IdentityError, match=r'clip.ssl_weight "\(absent\)" -> 0.5'):
    identity.check(wd, changed, kind="train", log=logged.append)


def test_a_finished_transfer_run_rerun_with_other_shots_or_checkpoint_is_refused(tmp_path):
  pre, wd = str(tmp_path / "pre"), str(tmp_path / "lp")
  train.run(_cfg(), pre, devices=one_device())
  c = lambda **kw: config_lib.load(
    f"{FT}:pretrained={pre},protocol=lp,"
    + ",".join(f"{k}={v}" for k, v in {"shots": 2, **kw}.items())
  )
  (row,) = finetune.run(c(), wd, devices=one_device())
  assert row["shots"] == 2
  # Before: "already done" and the 2-shot row returned for a 5-shot question.
  with pytest.raises(
    identity.IdentityError, match=r"1 key\(s\) differ: shots '2' -> '5'\).*--accept_changes=shots$"
  ):
    finetune.run(c(shots=5), wd, devices=one_device())
  with pytest.raises(identity.IdentityError, match=r"seed 0 -> 1"):
    finetune.run(c(seed=1), wd, devices=one_device())
  # The pre-trained run moved on: its newest checkpoint is another model.
  train.run(_cfg(total_steps=6), pre, devices=one_device(), accept_changes="total_steps")
  with pytest.raises(identity.IdentityError, match=r"pretrained_checkpoint.step 4 -> 6"):
    finetune.run(c(), wd, devices=one_device())
  # Accepted: computed anew (the old rows kept aside), recorded.
  (row5,) = finetune.run(
    c(shots=5), wd, devices=one_device(), accept_changes="shots,pretrained_checkpoint"
  )
  assert row5["shots"] == 5 and row5["pretrain_steps"] == 6
  assert os.path.exists(os.path.join(wd, "done.json.before_change"))
  keys = {ch["key"] for ch in json.loads(_read(os.path.join(wd, "run.json")))["changes"]}
  assert {"shots", "pretrained_checkpoint.step", "resolved.num_train"} <= keys


# ---------------------------------------------------------------- verified checkpoints


def test_each_checkpoint_is_sealed_by_its_own_save_not_by_the_next(tmp_path):
  ck = checkpoint.Checkpointer(str(tmp_path))
  state = {"step": jnp.ones((), jnp.int32), "params": {"w": jnp.arange(12.0).reshape(3, 4)}}
  ck.save(1, state)
  ck.wait()  # finished, as a run killed right after its save would leave it
  assert os.path.exists(tmp_path / "checkpoints" / "1" / checkpoint.CHECKSUMS)
  assert checkpoint.read_digest(str(tmp_path / "checkpoints" / "1"))[
    "arrays"
  ] == checkpoint.state_digest(state)
  ck.close()
  # The digest: equal on device and host; one changed element changes it.
  host = jax.device_get(state)
  small = checkpoint.HOST_DIGEST_MAX_BYTES
  try:
    checkpoint.HOST_DIGEST_MAX_BYTES = 0  # the device program, as for a large state
    assert checkpoint.host_digest(host) == checkpoint.state_digest(state)
  finally:
    checkpoint.HOST_DIGEST_MAX_BYTES = small
  host["params"]["w"] = host["params"]["w"].copy()
  host["params"]["w"][1, 2] += 1e-6
  assert checkpoint.host_digest(host)["params/w"] != checkpoint.state_digest(state)["params/w"]


def test_an_unsealed_checkpoint_with_changed_bytes_falls_back_and_is_never_sealed_later(tmp_path):
  ref_wd, wd = str(tmp_path / "ref"), str(tmp_path / "run")
  kw = dict(total_steps=12, checkpoint_every=4, keep_checkpoints=5)
  train.run(mini_config(**kw), ref_wd, devices=one_device())
  train.run(mini_config(**kw), wd, devices=one_device())
  shutil.rmtree(os.path.join(wd, "checkpoints", "12"))  # stopped after step 8's save ...
  os.remove(os.path.join(wd, "done.json"))
  step8 = os.path.join(wd, "checkpoints", "8")
  os.remove(os.path.join(step8, checkpoint.CHECKSUMS))  # ... before it was sealed
  flip_a_byte(step8)
  # A save a kill left half-written is removed, saying so.
  os.makedirs(os.path.join(wd, "checkpoints", "12.orbax-checkpoint-tmp-1234", "state"))
  state = train.run(mini_config(**kw), wd, devices=one_device())
  ref, _ = checkpoint.load_state(ref_wd)
  leaves = lambda t: [np.asarray(x) for x in jax.tree.leaves(t)]
  assert all(
    np.array_equal(a, b)
    for a, b in zip(leaves(jax.device_get(state.params)), leaves(ref["params"]))
  )  # from step 4
  moved = os.path.join(wd, "checkpoints_corrupt", "8")
  assert os.path.isdir(moved) and not os.path.exists(os.path.join(moved, checkpoint.CHECKSUMS))
  assert not glob.glob(os.path.join(wd, "checkpoints", "*orbax-checkpoint-tmp*"))


def test_after_every_checkpoint_was_corrupt_a_rerun_still_refuses_step_0_and_keeps_the_record(
  tmp_path, capsys
):
  wd = str(tmp_path)
  train.run(_cfg(), wd, devices=one_device())
  for step in ("2", "4"):
    flip_a_byte(os.path.join(wd, "checkpoints", step))
  for _ in range(2):  # the second time, checkpoints/ is empty: it still refuses
    with pytest.raises(checkpoint.CheckpointError, match="Not starting again from step 0"):
      train.run(_cfg(), wd, devices=one_device())
  assert "checkpoints 2, 4 were moved to checkpoints_corrupt/ earlier" in str(
    pytest.raises(checkpoint.CheckpointError, train.run, _cfg(), wd, devices=one_device()).value
  )
  assert json.loads(_read(os.path.join(wd, "done.json")))["step"] == 4
  assert _steps(wd) == [1, 2, 3, 4]  # the metrics of the run are untouched
  capsys.readouterr()
  state = train.run(_cfg(allow_fresh_start=True), wd, devices=one_device())
  out = capsys.readouterr().out
  assert "starting again from step 0 (allow_fresh_start)" in out
  assert int(state.step) == 4 and _steps(wd) == [1, 2, 3, 4]
  kept = glob.glob(os.path.join(wd, "metrics.before_fresh_start_*.jsonl"))
  assert len(kept) == 1 and len(_read(kept[0]).splitlines()) == 4
  assert sorted(
    os.listdir(glob.glob(os.path.join(wd, "checkpoints_corrupt", "before_fresh_start_*"))[0])
  ) == ["2", "4"]


def _records(path, n=64, bad_every=5):
  from big_transfer.data import sources

  rng = np.random.default_rng(0)
  exs = []
  for i in range(n):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    data = buf.getvalue() if i % bad_every else b"\x89PNG broken"
    exs.append({"image": data, "label": i % 2, "key": f"img{i}"})
  sources.write_arrayrecord(path, {"train": exs}, class_names=["a", "b"])


def test_the_final_line_counts_the_records_skipped_over_the_whole_run(tmp_path, capsys):
  _records(str(tmp_path / "data"))
  kw = dict(
    total_steps=8,
    checkpoint_every=4,
    keep_checkpoints=5,
    batch_size=8,
    data=f"arrayrecord:{tmp_path / 'data'}",
    pp_train="decode|value_range(-1,1)",
    max_skip_fraction=0.9,
  )
  wd = str(tmp_path / "run")
  train.run(_cfg(**kw), wd, devices=one_device())
  whole = int(re.search(r"skipped (\d+) corrupt", capsys.readouterr().out)[1])
  assert whole > 0
  shutil.rmtree(os.path.join(wd, "checkpoints", "8"))  # resume from step 4
  os.remove(os.path.join(wd, "done.json"))
  train.run(_cfg(**kw), wd, devices=one_device())
  assert f"skipped {whole} corrupt records over the run" in capsys.readouterr().out
  assert read_metrics(wd)[-1]["train/skipped_records"] == whole


# ---------------------------------------------------------------- labels


def test_a_label_outside_the_classes_is_skipped_and_counted_in_training_and_refused_in_transfer(
  tmp_path,
):
  from big_transfer.data import pipeline, sources

  src = sources.open_source("builtin:digits")
  skipped = pipeline.SkipCounter("", 0.5)
  it = pipeline.train_dataset(
    src, pp="", batch_size=64, seed=0, keys=("label",), threads=1, skipped=skipped, num_classes=9
  )
  labels = np.concatenate([next(it)["label"] for _ in range(3)])
  it.close()
  assert labels.max() == 8 and skipped.count > 0  # the 9s were skipped and counted
  c = config_lib.load(f"{FT}:protocol=lp,shots=2")
  c.unlock()
  c.num_classes = 5
  with pytest.raises(sources.DataError, match=r"records have a label outside \[0, 5\)"):
    finetune.transfer_data(c)


# ---------------------------------------------------------------- the study and the report


def test_the_study_heals_a_row_that_never_reached_its_table(tmp_path):
  wd = tmp_path / "run"
  wd.mkdir()
  rows = [
    {
      "row_id": f"{wd}#0",
      "data": "d",
      "protocol": "lp",
      "shots": 2,
      "seed": 0,
      "val_accuracy": 0.5,
      "test_accuracy": 0.5,
    }
  ]
  (wd / "done.json").write_text(json.dumps({"rows": rows}))
  r = study.Run(
    kind="transfer", name="t", workdir=str(wd), config="", overrides={}, deps=[], fields={}
  )
  table = str(tmp_path / "results.jsonl")
  assert r.done() and not r.done(set())  # done.json alone is not "done"
  n_rows, n_runs, ids = study.heal_results([r], table)
  assert (n_rows, n_runs) == (1, 1) and r.done(ids)
  assert study.heal_results([r], table)[:2] == (0, 0)  # idempotent
  assert [x["row_id"] for x in map(json.loads, _read(table).splitlines())] == [f"{wd}#0"]


def test_the_report_lists_failed_rows_and_cells_missing_seeds_instead_of_a_traceback(tmp_path):
  def row(arm, seed, acc, **kw):
    return {
      "data": "tfds:dtd",
      "protocol": "lp",
      "shots": 5,
      "seed": seed,
      "val_accuracy": acc,
      "test_accuracy": acc,
      "tags": {"arm": arm},
      "row_id": f"{arm}#{seed}",
      **kw,
    }

  rows = [
    row("a", 0, 0.6),
    row("a", 1, 0.61),
    row("b", 0, 0.6),
    {k: v for k, v in row("b", 1, 0.5).items() if k != "test_accuracy"},
    row("b", 2, None),
  ]
  (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  md = _read(report.write_report(str(tmp_path)))
  assert "60.0 — 1 of 2 seeds, missing seed 1" in md
  assert "`b#1`: no test_accuracy" in md and "`b#2`: test_accuracy is null" in md
  agg = report.aggregate(rows)
  assert agg[("b", "tfds:dtd", "lp", "5")]["missing_seeds"] == [1]
  spec = json.loads(_read(tmp_path / "report" / "specs.json"))
  series = spec["accuracy_vs_shots"]["panels"][0]["series"]
  assert series["b"]["seeds"] == ["1/2"] and series["a"]["seeds"] == [""]
  assert "*" in report.summary(agg) and "missing seeds" in report.summary(agg)


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize(
  "arg,want",
  [
    (
      "--config.batch_size=abc",
      "--config.batch_size=abc: batch_size expects int (now 128); 'abc' is not one",
    ),
    ("--config.optimizer.learning_rate=0.1", "did you mean optimizer.lr (float, now 0.002)?"),
    ("--config.zeroshot.data=x", "did you mean evals.zeroshot.data (str, now 'builtin:digits')?"),
  ],
)
def test_config_errors_name_the_key_the_value_its_type_and_the_nearest_key(arg, want):
  config = os.path.join(ROOT, "configs", "mini", "clip.py")
  argv = ["train", f"--config={config}", arg]
  assert want in config_lib.explain_flag_error(argv)


def test_a_mistyped_config_path_on_the_command_line_is_one_line(tmp_path):
  out = run_cli([f"--config={ROOT}/configs/mini/supervize.py", f"--workdir={tmp_path}"])
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
    f"error: --config={ROOT}/configs/mini/supervize.py: no such config file; the nearest "
    f"existing one is {ROOT}/configs/mini/supervised.py"
  ]
  # (a key or value mistake on the command line: test_train.py::test_bad_input_is_one_line...)


def _popen(args, env=None):
  return subprocess.Popen(
    [sys.executable, "-m", "big_transfer.train", *args],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
  )


def _wait_for_line(proc, text, timeout=300):
  t0 = time.time()
  for line in proc.stdout:
    if text in line:
      return
    if time.time() - t0 > timeout:
      break
  raise AssertionError(f"no {text!r} line: {proc.stderr.read()[-2000:]}")


@pytest.mark.slow  # ~25 s: two training processes signalled
def test_sigterm_during_start_up_and_a_second_ctrl_c_are_one_line_each(tmp_path):
  args = [
    f"--config={MINI}:steps=3000,batch=16,width=0.125",
    "--config.eval_data=none",
    "--config.tensorboard=false",
    "--config.checkpoint_every=5000",
  ]
  proc = _popen(args + [f"--workdir={tmp_path / 'a'}"])
  _wait_for_line(proc, "model: ")  # set up, compiling: before the first step
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 75, err[-2000:]
  assert err.strip().splitlines()[-1].startswith("stopped: SIGTERM outside a training loop")
  assert "Traceback" not in err
  proc = _popen(args + [f"--workdir={tmp_path / 'b'}", "--config.log_every=1"])
  _wait_for_line(proc, "step 3/")
  proc.send_signal(signal.SIGINT)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode in (130, 75), err[-2000:]
  assert "Traceback" not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith(("interrupted: a second Ctrl-C", "stopped: SIGINT")), err[-2000:]
