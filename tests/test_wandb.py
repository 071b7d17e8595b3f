"""Weights & Biases logging (config.wandb.*), in offline mode: no network. The run's .wandb
file is read back record by record (W&B's LevelDB-style log of protobuf records), so the test
checks what W&B would upload: the config, every logged step once, one run across a resume."""

import glob
import os
import shutil
import struct

import pytest

from big_transfer import config_lib, train
from conftest import mini_config, one_device


def wandb_records(path):
  """The protobuf Records of an offline run file: a 7-byte header, then 32 KiB blocks of
  chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
  from wandb.proto import wandb_internal_pb2 as pb

  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B"
  pos, block, buf, out = 7, 32768, b"", []
  while pos + 7 <= len(data):
    left = block - pos % block
    if left < 7:
      pos += left
      continue
    _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
    if length == 0 and kind == 0:  # block padding
      pos += left
      continue
    buf += data[pos + 7 : pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):
      r = pb.Record()
      r.ParseFromString(buf)
      out.append(r)
      buf = b""
  return out


def logged(path):
  """(run record, {step: {key: value}}) of an offline run file."""
  import json

  run, history = None, {}
  for r in wandb_records(path):
    kind = r.WhichOneof("record_type")
    if kind == "run":
      run = r.run
    elif kind == "history":
      items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
      history[items.pop("_step")] = {k: v for k, v in items.items() if not k.startswith("_")}
  return run, history


@pytest.mark.interop
def test_wandb_offline_logs_config_and_every_step_once_across_a_resume(tmp_path):
  pytest.importorskip("wandb")
  workdir = str(tmp_path / "run")
  c = mini_config(
    **{
      "wandb.project": "bt-test",
      "wandb.mode": "offline",
      "wandb.tags": "a,b",
      "checkpoint_every": 3,
    }
  )
  train.run(c, workdir, devices=one_device())
  run_id = open(os.path.join(workdir, "wandb_run_id")).read().strip()
  [first] = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", f"run-{run_id}.wandb"))
  run, history = logged(first)
  assert run.project == "bt-test" and run.run_id == run_id and list(run.tags) == ["a", "b"]
  config = {i.key: i.value_json for i in run.config.update}
  assert config["optimizer.lr"] == str(c.optimizer.lr) and config["model"] == '"resnet18"'
  assert sorted(history) == [1, 2, 3, 4, 5, 6]
  assert all("train/loss" in row and "train/lr" in row for row in history.values())

  # Lose the last checkpoint: the restart resumes from step 3 and continues the same W&B run.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  os.remove(os.path.join(workdir, "done.json"))
  train.run(c, workdir, devices=one_device())
  files = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", f"run-{run_id}.wandb"))
  assert len(files) == 2
  run2, history2 = logged(next(f for f in files if f != first))
  assert run2.run_id == run_id
  assert sorted(history2) == [4, 5, 6]
  for s in (4, 5, 6):  # the resumed steps are the same steps (bitwise resume)
    assert history2[s]["train/loss"] == history[s]["train/loss"]


def test_wandb_config_errors_are_one_line(monkeypatch):
  c = mini_config(**{"wandb.project": "p", "wandb.mode": "sometimes"})
  with pytest.raises(config_lib.ConfigError, match="config.wandb.mode='sometimes'"):
    config_lib.validate(c)
  real = config_lib.importlib.util.find_spec
  monkeypatch.setattr(
    config_lib.importlib.util,
    "find_spec",
    lambda name, *a: None if name == "wandb" else real(name, *a),
  )
  c.wandb.mode = "offline"
  with pytest.raises(config_lib.ConfigError, match=r"wandb is not installed \(pip install"):
    config_lib.validate(c)
