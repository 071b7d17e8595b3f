"""TFDS datasets prepared outside runs (big_transfer.data.prepare), then read by tfds: specs;
a run never downloads, and a missing dataset is one line naming the command that prepares it."""

import os
import subprocess
import sys

import numpy as np
import pytest

from big_transfer import finetune, train
from big_transfer.logging import read_metrics
from conftest import MINI, ROOT, mini_config, one_device, run_cli

TESTS = os.path.dirname(os.path.abspath(__file__))


def _prepare(names, data_dir, **kw):
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "big_transfer.data.prepare",
      *names,
      f"--data_dir={data_dir}",
      "--imports=tfds_tiny",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    **kw,
  )


def _errors(text):
  return [l for l in text.replace("\r", "\n").splitlines() if l.startswith("error:")]


def test_prepared_tfds_dataset_trains_and_finetunes_through_data_dir(tmp_path):
  data_dir = str(tmp_path / "tfds")
  out = _prepare(["bt_tiny_digits"], data_dir)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "bt_tiny_digits: prepared 1.0.0" in out.stdout and "train 1437" in out.stdout
  again = _prepare(["bt_tiny_digits"], data_dir)
  assert "already prepared" in again.stdout and again.returncode == 0
  # Read by this process without the builder class: TFDS reads the prepared files.
  c = mini_config(
    data="tfds:bt_tiny_digits",
    data_dir=data_dir,
    eval_data="",
    total_steps=40,
    batch_size=32,
    checkpoint_every=40,
  )
  c.optimizer.lr = 0.05
  train.run(c, str(tmp_path / "pre"), devices=one_device())
  evals = [r["eval/accuracy"] for r in read_metrics(str(tmp_path / "pre")) if "eval/accuracy" in r]
  assert evals and evals[-1] > 0.25  # learnt from the prepared data (chance: 0.1)
  from big_transfer import config_lib

  ft = config_lib.load(
    os.path.join(ROOT, "configs/mini/finetune.py")
    + f":pretrained={tmp_path / 'pre'},data=tfds:bt_tiny_digits,protocol=lp,"
    f"shots=5"
  )
  ft.data_dir = data_dir
  (row,) = finetune.run(ft, str(tmp_path / "lp"), devices=one_device())
  assert row["num_train"] == 50 and row["num_test"] == 360 and row["test_accuracy"] > 0.25


def test_a_dataset_that_is_not_prepared_is_one_line_naming_the_command(tmp_path):
  data_dir = str(tmp_path / "empty")
  out = run_cli(
    [
      f"--config={MINI}",
      f"--workdir={tmp_path / 'run'}",
      "--config.data=tfds:cifar10",
      f"--config.data_dir={data_dir}",
    ]
  )
  assert out.returncode == 2 and "Traceback" not in out.stderr
  (err,) = _errors(out.stderr)
  assert f"python -m big_transfer.data.prepare cifar10 --data_dir={data_dir}" in err
  assert not os.path.exists(data_dir) or not os.listdir(data_dir)  # nothing downloaded
  # TFDS_DATA_DIR is honoured the same way when config.data_dir is unset.
  out = run_cli(
    [f"--config={MINI}", f"--workdir={tmp_path / 'run'}", "--config.data=tfds:cifar10"],
    env={"TFDS_DATA_DIR": data_dir},
  )
  (err,) = _errors(out.stderr)
  assert f"--data_dir={data_dir}" in err
  # A dataset TFDS cannot download says where its files come from.
  from big_transfer.data import sources

  sources.set_tfds_data_dir(data_dir)
  try:
    with pytest.raises(sources.DataError, match="manual download.*ILSVRC2012_img_train.tar"):
      sources.open_source("tfds:imagenet2012")
  finally:
    sources.set_tfds_data_dir(None)


def test_image_datasets_name_their_build_time_dependency_when_tensorflow_is_missing(tmp_path):
  try:
    import tensorflow  # noqa: F401

    pytest.skip("TensorFlow is installed (the prepare-marked test covers this path)")
  except ImportError:
    pass
  out = _prepare(["bt_tiny_images"], str(tmp_path / "tfds"))
  assert out.returncode == 1
  assert any(
    "needs TensorFlow at build time: pip install -r requirements-prepare.txt" in l
    for l in _errors(out.stderr)
  )


@pytest.mark.prepare  # needs requirements-prepare.txt (TensorFlow); CI installs it last
def test_image_feature_dataset_prepares_with_tensorflow_and_trains_without_decoding(tmp_path):
  pytest.importorskip("tensorflow")
  data_dir = str(tmp_path / "tfds")
  out = _prepare(["bt_tiny_images"], data_dir)
  assert out.returncode == 0, out.stderr[-2000:]
  from big_transfer.data import sources

  sources.set_tfds_data_dir(data_dir)
  try:
    src = sources.open_source("tfds:bt_tiny_images")
    assert len(src) == 24 and src.class_names == ("dark", "light")
    assert src[0]["image"].dtype == np.uint8 and src[0]["image"].shape[-1] == 3
  finally:
    sources.set_tfds_data_dir(None)
  c = mini_config(
    data="tfds:bt_tiny_images",
    data_dir=data_dir,
    eval_data="",
    total_steps=2,
    batch_size=8,
    pp_train="decode|resize(32)|value_range(-1,1)",
    pp_eval="decode|resize(32)|value_range(-1,1)",
  )
  train.run(c, str(tmp_path / "run"), devices=one_device())
  assert any("eval/accuracy" in r for r in read_metrics(str(tmp_path / "run")))
