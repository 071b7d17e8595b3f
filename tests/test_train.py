"""The training loop end to end: outputs, sharding layouts, exact resume, failure modes."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from big_transfer import checkpoint, config_lib, optim, train
from big_transfer.logging import read_metrics
from conftest import MINI, ROOT, losses, mini_config, one_device, run_cli


def _by_name(tree):
  from big_transfer.sharding import path_name

  return {path_name(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _leaves_equal(a, b):
  """Bitwise equality by parameter name (checkpoints store integer keys as strings)."""
  na, nb = _by_name(a), _by_name(b)
  assert sorted(na) == sorted(nb)
  return all(np.array_equal(na[k], nb[k]) for k in na)


def test_mini_run_writes_metrics_config_checkpoints_and_learns(tmp_path):
  wd = str(tmp_path)
  c = mini_config(
    "steps=40,batch=32,width=0.125",
    log_every=10,
    eval_every=20,
    checkpoint_every=20,
    eval_data="",
    tensorboard=True,
  )
  train.run(c, wd, devices=one_device())
  rows = read_metrics(wd)
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [10, 20, 30, 40]
  assert {
    "train/lr",
    "train/accuracy",
    "train/grad_norm",
    "train/examples_per_sec",
    "eta_s",
  } <= set(train_rows[0])
  assert train_rows[-1]["train/loss"] < 0.7 * train_rows[0]["train/loss"]
  evals = [r for r in rows if "eval/accuracy" in r]
  assert [r["step"] for r in evals] == [20, 40] and evals[-1]["eval/accuracy"] > 0.5
  cfg = json.load(open(os.path.join(wd, "config.json")))
  assert cfg["config"]["model"] == "resnet18" and cfg["resolved"]["total_steps"] == 40
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["20", "40"]
  (events,) = glob.glob(os.path.join(wd, "tensorboard", "events.out.tfevents.*"))
  raw = open(events, "rb").read()
  assert b"optimizer.lr" in raw and b"hparams" in raw  # the config, as TensorBoard hparams
  overview = open(os.path.join(wd, "parameters.txt")).read()  # every parameter, its shape
  n_params = sum(v.size for v in _by_name(checkpoint.load_state(wd)[0]["params"]).values())
  assert "| head/kernel" in overview and f"Total: {n_params:,} " in overview


def test_durations_in_epochs_and_examples_resolve_to_steps(tmp_path):
  c = mini_config(total_steps=None, total_epochs=0.1, eval_data="")
  data = train.prepare(c, str(tmp_path))
  assert data["total_steps"] == 5  # ceil(0.1 * 1437 / 32)
  c = mini_config(total_steps=None, total_examples=100)
  assert train.prepare(c, str(tmp_path))["total_steps"] == 4
  c = mini_config(total_steps=0, total_epochs=1.0)  # 0 unsets, as on a command line
  assert train.prepare(c, str(tmp_path))["total_steps"] == 45
  from big_transfer.config_lib import ConfigError

  with pytest.raises(ConfigError, match="exactly one of total_steps, total_epochs"):
    train.prepare(mini_config(total_epochs=1.0), str(tmp_path))


# lr 0.05: the loss moves, and the dynamics are tame enough that float noise from another
# reduction order (~3e-6 in the first gradients) stays within 2e-5 for six steps. At lr 0.2
# this tiny BatchNorm network amplifies it ~100x within four steps, whatever the layout.
SHARDING_KW = dict(param_sharding_min_size=0, **{"optimizer.lr": 0.05})


@pytest.fixture(scope="module")
def one_device_reference(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("one_device"))
  state = train.run(mini_config(**SHARDING_KW), wd, devices=one_device())
  return losses(wd), jax.device_get(state.params)


@pytest.mark.parametrize("data,fsdp", [(8, 1), pytest.param(4, 2, marks=pytest.mark.slow), (1, 8)])
def test_same_loss_trajectory_on_one_and_eight_devices(tmp_path, one_device_reference, data, fsdp):
  ref, ref_params = one_device_reference
  c = mini_config(**SHARDING_KW)
  c.mesh.data, c.mesh.fsdp = data, fsdp
  state = train.run(c, str(tmp_path), devices=jax.devices()[:8])
  got = losses(str(tmp_path))
  assert len(ref) == 6 and len(set(np.round(ref, 4))) > 3  # the loss really moves
  np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(state.params)}
  if fsdp > 1:  # parameters really are sharded over the fsdp axis
    assert any("fsdp" in s for s in specs)
  # Reductions run in another order on 8 devices. Six steps of SGD through
  # BatchNorm amplify that float noise in a few near-zero-gradient entries (BN offsets move by
  # up to 3e-4), so the parameters are compared as a whole: relative L2 distance.
  got_p, ref_p = jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(ref_params)
  diff = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(got_p, ref_p)))
  norm = np.sqrt(sum(np.sum(b**2) for b in ref_p))
  assert diff / norm < 1e-3, diff / norm


def _wait_for(path, proc, timeout=300):
  t0 = time.time()
  while not os.path.isdir(path):
    if proc.poll() is not None:
      raise AssertionError(f"run ended before {path} appeared: {proc.stderr.read()[-2000:]}")
    if time.time() - t0 > timeout:
      raise AssertionError(f"timeout waiting for {path}")
    time.sleep(0.02)


@pytest.mark.parametrize("total,every", [(40, 7), pytest.param(25, 4, marks=pytest.mark.slow)])
def test_sigkill_after_a_checkpoint_resumes_bitwise_exactly(tmp_path, total, every):
  args = [
    f"--config={MINI}:steps={total},batch=16,width=0.125",
    "--config.eval_data=none",
    f"--config.checkpoint_every={every}",
    "--config.log_every=5",
    "--config.tensorboard=false",
    "--config.keep_checkpoints=2",
  ]
  ref_wd, wd = str(tmp_path / "ref"), str(tmp_path / "killed")
  run_cli(args + [f"--workdir={ref_wd}"], check=True)

  proc = subprocess.Popen(
    [sys.executable, "-m", "big_transfer.train", *args, f"--workdir={wd}"],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  _wait_for(os.path.join(wd, "checkpoints", str(every)), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.isdir(os.path.join(wd, "checkpoints", str(total))), "killed too late"

  out = run_cli(args + [f"--workdir={wd}"], check=True)
  assert "resumed from" in out.stdout
  ref_state, ref_step = checkpoint.load_state(ref_wd)
  state, step = checkpoint.load_state(wd)
  assert ref_step == step == total
  assert _leaves_equal(state["params"], ref_state["params"])
  assert _leaves_equal(state["opt_state"], ref_state["opt_state"])
  assert _leaves_equal(state["model_state"], ref_state["model_state"])


def test_nonfinite_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
  wd = str(tmp_path)
  train.run(mini_config(total_steps=4, checkpoint_every=2), wd, devices=one_device())
  good, _ = checkpoint.load_state(wd)
  c = mini_config(total_steps=12, checkpoint_every=2, log_every=3, **{"optimizer.lr": 1e30})
  with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at step \d+") as e:
    train.run(c, wd, devices=one_device(), accept_changes="optimizer.lr,total_steps")
  bad_step = int(str(e.value).split("at step ")[1].split(";")[0])
  assert bad_step > 4
  assert "Last good checkpoint: step 4" in str(e.value)
  state, step = checkpoint.load_state(wd)
  assert step == 4 and _leaves_equal(state, good)


def test_checkpoint_of_another_optimiser_is_a_clear_error_not_corruption(tmp_path):
  wd = str(tmp_path)
  train.run(mini_config(total_steps=2, checkpoint_every=2), wd, devices=one_device())
  c = mini_config(total_steps=4, **{"optimizer.momentum": 0.0})  # no momentum buffers
  with pytest.raises(checkpoint.CheckpointError, match="different model or optimiser.*trace"):
    train.run(c, wd, devices=one_device(), accept_changes="all")  # past the config check
  assert os.listdir(os.path.join(wd, "checkpoints")) == ["2"]  # nothing moved or deleted
  assert not os.path.exists(os.path.join(wd, "checkpoints_corrupt"))
  # The refused restart rewrote none of the run's records: it can still be fine-tuned.
  with open(os.path.join(wd, "config.json")) as f:
    assert json.load(f)["config"]["optimizer"]["momentum"] == 0.9


def test_corrupt_latest_checkpoint_falls_back_to_previous_and_resumes_exactly(tmp_path):
  ref_wd, wd = str(tmp_path / "ref"), str(tmp_path / "run")
  kw = dict(total_steps=8, checkpoint_every=2, keep_checkpoints=10)
  train.run(mini_config(**kw), ref_wd, devices=one_device())
  # The run that was stopped after step 6 (whose step 6 checkpoint was then damaged).
  os.makedirs(os.path.join(wd, "checkpoints"))
  for s in ("2", "4", "6"):
    shutil.copytree(os.path.join(ref_wd, "checkpoints", s), os.path.join(wd, "checkpoints", s))
  for f in glob.glob(os.path.join(wd, "checkpoints", "6", "state", "**", "*"), recursive=True):
    if os.path.isfile(f) and ("ocdbt" in f or "/d/" in f):
      open(f, "wb").close()  # truncate the array data
  state = train.run(mini_config(**kw), wd, devices=one_device())
  ref, _ = checkpoint.load_state(ref_wd)
  assert _leaves_equal(jax.device_get(state.params), ref["params"])
  assert os.path.isdir(os.path.join(wd, "checkpoints_corrupt", "6"))  # kept, not deleted
  assert [r["step"] for r in read_metrics(wd) if "train/loss" in r] == [5, 6, 7, 8]


@pytest.mark.slow  # ~40 s; 1-device resume of an 8-device run (CI runs it)
def test_checkpoint_restores_onto_a_different_mesh(tmp_path):
  wd = str(tmp_path)
  c = mini_config(total_steps=3, checkpoint_every=3, param_sharding_min_size=0)
  c.mesh.data, c.mesh.fsdp = 2, 4
  train.run(c, wd, devices=jax.devices()[:8])
  saved, _ = checkpoint.load_state(wd)
  c = mini_config(total_steps=5, checkpoint_every=5)
  # Another mesh and sharding cannot change the result: only the longer run needs accepting.
  state = train.run(c, wd, devices=one_device(), accept_changes="total_steps")
  assert int(state.step) == 5
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
  assert not _leaves_equal(jax.device_get(state.params), saved["params"])


def test_normalising_on_the_device_trains_as_normalising_on_the_host(tmp_path):
  on_device = train.run(mini_config(), str(tmp_path / "device"), devices=one_device())
  on_host = train.run(
    mini_config(normalize_on_device=False), str(tmp_path / "host"), devices=one_device()
  )
  np.testing.assert_allclose(
    losses(str(tmp_path / "device")), losses(str(tmp_path / "host")), rtol=1e-5, atol=1e-6
  )
  a, b = jax.device_get(on_device.params), jax.device_get(on_host.params)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_tfds_dataset_trains(tmp_path):
  import tensorflow_datasets as tfds

  c = mini_config(
    data="tfds:mnist",
    eval_data="",
    eval_split="test",
    pp_train="to_rgb|resize(32)|value_range(-1,1)",
    pp_eval="to_rgb|resize(32)|value_range(-1,1)",
    total_steps=3,
    batch_size=8,
  )
  with tfds.testing.mock_data(num_examples=24):
    train.run(c, str(tmp_path), devices=one_device())
  rows = read_metrics(str(tmp_path))
  assert any("eval/accuracy" in r for r in rows) and len(losses(str(tmp_path))) == 3


def test_converted_image_folder_trains(tmp_path):
  from PIL import Image

  from big_transfer.data import convert, sources

  digits = sources.open_source("builtin:digits")
  for i in range(80):
    d = tmp_path / "folder" / ("train" if i < 64 else "test") / str(int(digits[i]["label"]))
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(digits[i]["image"][..., 0]).save(d / f"{i}.png")
  (tmp_path / "folder" / "train" / "3" / "broken.png").write_bytes(b"\x89PNG broken")
  convert.main(["imagefolder", str(tmp_path / "folder"), str(tmp_path / "data"), "--workers=1"])
  c = mini_config(
    data=f"arrayrecord:{tmp_path / 'data'}",
    eval_data="",
    pp_train="decode|resize(32)|value_range(-1,1)",
    pp_eval="decode|resize(32)|value_range(-1,1)",
    total_steps=3,
    batch_size=16,
  )
  train.run(c, str(tmp_path / "run"), devices=one_device())
  assert len(losses(str(tmp_path / "run"))) == 3
  assert any("eval/accuracy" in r for r in read_metrics(str(tmp_path / "run")))


@pytest.mark.slow  # ~40 s of optimiser and dtype variants
def test_adamw_ema_bf16_clipping_and_lars_step_schedule_train(tmp_path):
  c = mini_config(
    "steps=8,batch=32,width=0.125",
    dtype="bfloat16",
    ema_decay=0.9,
    **{
      "optimizer.name": "adamw",
      "optimizer.lr": 3e-3,
      "optimizer.weight_decay": 0.05,
      "optimizer.grad_clip_norm": 1.0,
    },
  )
  state = train.run(c, str(tmp_path / "adamw"), devices=one_device())
  assert state.ema_params is not None
  assert not _leaves_equal(jax.device_get(state.ema_params), jax.device_get(state.params))
  l = losses(str(tmp_path / "adamw"))
  assert np.isfinite(l).all() and l[-1] < l[0]
  c = mini_config(
    "steps=8,batch=32,width=0.125",
    **{
      "optimizer.name": "lars",
      "optimizer.lr": 0.5,
      "optimizer.schedule": "step",
      "optimizer.boundaries": (4,),
    },
  )
  train.run(c, str(tmp_path / "lars"), devices=one_device())
  lrs = [r["train/lr"] for r in read_metrics(str(tmp_path / "lars")) if "train/lr" in r]
  np.testing.assert_allclose(lrs, [0.5] * 4 + [0.05] * 4, rtol=1e-6)


@pytest.mark.parametrize(
  "args,message",
  [
    (["--config.bogus=1"], "--config.bogus=1: " + MINI + " has no key 'bogus'"),
    (
      ["--config.optimizer.lrr=0.1"],
      "has no key 'optimizer.lrr'; did you mean optimizer.lr (float, now 0.1)?",
    ),
    (
      ["--config.batch_size=64x"],
      "--config.batch_size=64x: batch_size expects int (now 128); '64x' is not one",
    ),
    (["--config.data=tfds:no_such_dataset"], "TFDS has no dataset 'no_such_dataset'"),
    (["--config.data=arrayrecord:/no/such/dir"], "'/no/such/dir' does not exist"),
    (["--config.pp_train=decode|blur(2)"], "unknown preprocessing op 'blur'"),
    (["--config.model=resnet7"], "unknown model 'resnet7'"),
    (["--config.mesh.data=3", "--config.mesh.fsdp=2"], "config.mesh: data=3 x fsdp=2 != 8"),
    (["--config.optimizer.lr=nan"], "config.optimizer.lr=nan: must be a finite number"),
    (["--config.optimizer.weight_decay=inf"], "config.optimizer.weight_decay=inf: must be"),
  ],
)
def test_bad_input_is_one_line_before_any_compile(tmp_path, args, message):
  out = run_cli([f"--config={MINI}", f"--workdir={tmp_path}", *args])
  assert out.returncode == 2
  err = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and message in err[0], out.stderr[-1500:]
  assert "Traceback" not in out.stderr
  assert "first step" not in out.stdout
  assert not os.path.isdir(os.path.join(tmp_path, "checkpoints"))


@pytest.mark.slow  # ~50 s: spawns Grain worker processes
def test_multiprocess_data_workers_feed_the_same_batches(tmp_path):
  ref_wd, wd = str(tmp_path / "threads"), str(tmp_path / "workers")
  train.run(mini_config(), ref_wd, devices=one_device())
  out = run_cli(
    [
      f"--config={MINI}:{'steps=6,batch=32,width=0.125'}",
      f"--workdir={wd}",
      "--config.data_workers=2",
      "--config.log_every=1",
      "--config.eval_data=none",
      "--config.tensorboard=false",
      "--config.optimizer.warmup_steps=0",
    ]
  )
  assert out.returncode == 0, out.stderr[-2000:]
  np.testing.assert_allclose(losses(wd), losses(ref_wd), rtol=1e-5, atol=1e-6)


def test_the_logged_learning_rate_is_the_steps_own_not_a_window_mean(tmp_path):
  from big_transfer import optim

  c = mini_config(total_steps=6, log_every=3)
  train.run(c, str(tmp_path), devices=one_device())
  rows = [r for r in read_metrics(str(tmp_path)) if "train/lr" in r]
  schedule = optim.schedule(c.optimizer, 6)
  assert [r["step"] for r in rows] == [3, 6]
  np.testing.assert_allclose(
    [r["train/lr"] for r in rows], [float(schedule(2)), float(schedule(5))], rtol=1e-6
  )
  assert rows[-1]["train/lr"] < 0.1 * c.optimizer.lr  # the end of the cosine, not its mean


def test_help_lists_every_flag_and_print_config_every_key(tmp_path):
  import subprocess
  import sys

  for module in ("big_transfer.train", "big_transfer.finetune"):
    out = subprocess.run(
      [sys.executable, "-m", module, "--help"],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert out.returncode == 0, out.stderr[-1000:]
    for flag in (
      "--config=FILE[:ARGS]  (required)",
      "--workdir=DIR  (required)",
      "--num_processes=INT",
      "--[no]print_config",
      "--config.KEY=VALUE",
    ):
      assert flag in out.stdout, (module, flag)
    assert "python -m " + module in out.stdout  # the docstring's example
  out = run_cli([f"--config={MINI}", "--print_config", "--config.batch_size=48"])
  assert out.returncode == 0 and not os.path.exists(tmp_path / "checkpoints")
  lines = out.stdout.splitlines()
  assert "batch_size = 48  # " in "\n".join(lines) and any(
    l.startswith("ema_decay = 0.0  # > 0 keeps an exponential moving average") for l in lines
  )


ENTRY_POINTS = (
  "big_transfer.train",
  "big_transfer.finetune",
  "big_transfer.study",
  "big_transfer.report",
  "big_transfer.convert_checkpoint",
  "big_transfer.bench",
  "big_transfer.data.prepare",
  "big_transfer.data.convert",
  "big_transfer.data.tokenizer",
)


def test_every_entry_point_has_one_help_format_and_one_line_for_a_misspelt_flag():
  """All nine ``python -m`` entry points parse with absl flags and print help one way
  (cli.render): the docstring with an example command, a usage line, then every flag on its own
  line with its help text indented below it; a misspelt flag is one line naming the nearest."""
  import re

  def start(module, *argv):
    return subprocess.Popen(
      [sys.executable, "-m", module, *argv],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )

  helps = {m: start(m, "--help") for m in ENTRY_POINTS}
  for module, proc in helps.items():
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (module, err[-500:])
    assert re.search(rf"python -m {module} [a-z'-]", out.split("usage:")[0]), module  # example
    usage = [l for l in out.splitlines() if l.startswith("usage: ")]
    assert usage and usage[0].startswith(f"usage: python -m {module} "), module
    if module == "big_transfer.data.tokenizer":  # subcommands: each lists its own flags
      assert re.search(r"^commands:\n  train\n {6}learn", out, re.M), out
      continue
    listed = out.split("\nflags:\n", 1)[1].splitlines()
    entries = [i for i, l in enumerate(listed) if l.startswith("  --")]
    assert len(entries) >= 3, module
    for i in entries:  # a flag, then its meaning indented below it
      assert listed[i + 1].startswith(" " * 6) and listed[i + 1].strip(), (module, listed[i])
  misspelt = {  # a flag each has, misspelt (the tokenizer: its command)
    "big_transfer.convert_checkpoint": ("x", "--otu=y", "--out"),
    "big_transfer.bench": ("--modle=resnet18", "--model"),
    "big_transfer.data.prepare": ("cifar10", "--data_dri=/tmp/x", "--data_dir"),
    "big_transfer.data.convert": ("csv", "a", "b", "--wrokers=1", "--workers"),
    "big_transfer.data.tokenizer": ("trian", "train"),
  }
  bad = {
    m: start(m, *misspelt.get(m, ("--wrokdir=/tmp/x", "--workdir"))[:-1]) for m in ENTRY_POINTS
  }
  for module, proc in bad.items():
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (module, err[-500:])
    (line,) = err.strip().splitlines()
    near = misspelt.get(module, ("--workdir",))[-1]
    assert line.startswith("error: unknown ") and f"; did you mean {near}? (" in line, line
    assert line.endswith(f"(python -m {module} --help lists what it takes)"), line


def test_every_config_key_is_declared_once_by_the_module_that_reads_it_with_its_meaning():
  from big_transfer import finetune, schema

  sections = finetune.sections()
  meanings = schema.help_of(sections)
  for config in (config_lib.base_config(), finetune.transfer_config()):
    keys = [
      k
      for k in config_lib.dotted(config_lib.to_plain(config))
      if not k.startswith(("evals.", "model_kwargs."))
    ]  # entries a config file adds
    missing = [k for k in keys if not config_lib.meaning_of(k, meanings).strip()]
    assert not missing, missing
  owners = {s.owner for s in sections}
  assert {
    "big_transfer.optim",
    "big_transfer.data.pipeline",
    "big_transfer.methods.clip",
    "big_transfer.methods.simclr",
    "big_transfer.evaluators.common",
    "big_transfer.logging",
    "big_transfer.finetune",
    "big_transfer.protocols.ft",
    "big_transfer.protocols.lp",
    "big_transfer.protocols.wise_ft",
    "big_transfer.config_lib",
  } <= owners
  with pytest.raises(ValueError, match="declared by big_transfer.optim and x"):
    schema.build([optim.SECTION, schema.Section("optimizer", "x", keys=(schema.Key("lr", 1.0),))])
  # Each config gets its own values: a placeholder set in one is not set in the next.
  first = config_lib.base_config()
  first.total_epochs, first.optimizer.warmup_epochs = 3.0, 1.0
  assert config_lib.base_config().total_epochs is None
  assert config_lib.base_config().optimizer.warmup_epochs is None


def test_every_config_takes_its_cadence_from_the_one_place():
  """Loop cadence and input threads come from configs/cadence.py's presets (a config changes
  only what differs, through config_lib.cadence), never set key by key in a config file."""
  import re

  for folder in ("mini", "pretrain", "finetune"):
    d = os.path.join(ROOT, "configs", folder)
    for name in sorted(os.listdir(d)):
      if not name.endswith(".py") or name == "study.py":
        continue
      text = open(os.path.join(d, name)).read()
      assert "config_lib.cadence(c, " in text, name
      for key in ("checkpoint_every", "eval_every", "data_threads"):
        assert not re.search(rf"\bc\.{key}\s*=", text), (name, key)
  c = config_lib.cadence(config_lib.base_config(), "mini", checkpoint_every=7)
  assert (c.log_every, c.checkpoint_every, c.data_threads) == (20, 7, 2)
  with pytest.raises(config_lib.ConfigError, match="cadence preset 'tpu': not one of mini"):
    config_lib.cadence(c, "tpu")


def test_every_user_facing_error_reaches_one_line_through_the_entrypoints(capsys):
  """Each error class that means bad input (not a bug) ends an entrypoint with one ``error:``
  line and exit 2, wherever it is raised — EvalConfigError from evaluators built inside fit,
  a URLPathError from the path layer, a TransferError ..."""
  from absl import flags as absl_flags

  from big_transfer import app, checkpoint, finetune, paths, runlock, schema
  from big_transfer.data import ops, pipeline, sources
  from big_transfer.evaluators.common import EvalConfigError
  from big_transfer.identity import IdentityError

  classes = [
    config_lib.ConfigError,
    schema.SectionError,
    sources.DataError,
    pipeline.SkipError,
    ops.PreprocessError,
    EvalConfigError,
    app.UserError,
    IdentityError,
    checkpoint.CheckpointError,
    runlock.LockError,
    paths.URLPathError,
    finetune.TransferError,
  ]
  app.define_flags()
  absl_flags.FLAGS(["prog", f"--config={MINI}", "--workdir=/tmp/bt_never_written"])
  for cls in classes:

    def run(config, workdir, accept_changes=(), cls=cls):
      raise cls(f"bad input of kind {cls.__name__}")

    with pytest.raises(SystemExit) as exit_:
      app.main_of(run, (finetune.TransferError,))([])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err == [f"error: bad input of kind {cls.__name__}"], cls
  absl_flags.FLAGS.unparse_flags()


def test_a_workdir_that_is_almost_a_url_or_of_an_unknown_scheme_is_one_line(tmp_path):
  for workdir, says in (
    ("gs:/bucket/x", "is not a URL (one slash); did you mean gs://bucket/x?"),
    ("s3://bucket/x", "s3:// is not supported here"),
  ):
    for module in ("big_transfer.train", "big_transfer.study", "big_transfer.report"):
      config = {
        "big_transfer.train": [f"--config={MINI}"],
        "big_transfer.study": [f"--config={ROOT}/configs/mini/study.py"],
        "big_transfer.report": [],
      }[module]
      out = subprocess.run(
        [sys.executable, "-m", module, *config, f"--workdir={workdir}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
      )
      assert out.returncode == 2, (module, out.stderr[-2000:])
      (line,) = out.stderr.strip().splitlines()
      assert line.startswith("error: --workdir") and says in line, (module, line)
      assert not os.listdir(tmp_path), (module, os.listdir(tmp_path))  # nothing written
