"""Extending the codebase: a new method, model, preprocessing op, evaluator and data source,
each one file (tests/example_plugins/) plus one registry line, used end to end — pre-trained
with the Trainer, evaluated by the registry's evaluator, transferred by a linear probe. What
docs/ARCHITECTURE.md describes."""

import math

import numpy as np
import pytest

from big_transfer import config_lib, finetune, methods, models, train
from big_transfer.data import builtin, ops
from big_transfer.evaluators import common as evals_lib
from big_transfer.logging import read_metrics
from conftest import ROOT, mini_config, one_device

FT_MINI = f"{ROOT}/configs/mini/finetune.py"


@pytest.fixture(scope="module")
def plugins():
  from example_plugins import feature_stats_eval, invert_op  # noqa: F401  (they register)
  from example_plugins.stripes_source import StripesSource
  from example_plugins.tiny_cnn_model import TinyCNN

  methods.register("rotnet", "example_plugins.rotnet:Method")
  models.register(r"tinycnn_(\d+)", lambda m: (TinyCNN, {"width": int(m[1])}))
  builtin.register("stripes", StripesSource)
  yield
  methods.METHODS.pop("rotnet")
  models._PATTERNS[:] = [p for p in models._PATTERNS if p[0] != r"tinycnn_(\d+)"]
  builtin.BUILTINS.pop("stripes")


def test_a_method_model_op_evaluator_and_source_each_plug_in_with_one_line(plugins, tmp_path):
  # The method's config section joins the base config, with its meaning and its check.
  assert "rotnet.rotations = 4  # 4: 0/90/180/270" in config_lib.describe(config_lib.base_config())
  with pytest.raises(config_lib.ConfigError, match=r"config.rotnet.rotations=3: 2 or 4"):
    train.prepare(mini_config(method="rotnet", **{"rotnet.rotations": 3}), None)
  c = mini_config(
    method="rotnet",
    model="tinycnn_8",
    data="builtin:stripes",
    pp_train="invert|value_range(-1, 1)",
    pp_eval="value_range(-1, 1)",
    total_steps=4,
    batch_size=32,
  )
  c.model_kwargs = type(c.model_kwargs)()  # the tiny model takes no width multiplier
  c.unlock()
  c.evals.stats = evals_lib.entry("feature_stats", data="builtin:stripes", every=4)
  wd = str(tmp_path / "rotnet")
  state = train.run(c, wd, devices=one_device())
  assert int(state.step) == 4 and set(state.params) == {"backbone", "head"}
  rows = read_metrics(wd)
  assert all(math.isfinite(r["train/rotation_accuracy"]) for r in rows if "train/loss" in r)
  stats = [r["stats/feature_norm"] for r in rows if "stats/feature_norm" in r]
  assert len(stats) == 1 and stats[0] > 0  # the plug-in evaluator ran, prefixed in one place
  # Each registry refuses a second registration of a name.
  with pytest.raises(ValueError, match="registered twice"):
    methods.register("rotnet", "elsewhere:Method")
  with pytest.raises(ValueError, match="registered twice"):
    ops.register("invert")(lambda key="image": None)
  with pytest.raises(ValueError, match="registered twice"):
    evals_lib.register("feature_stats")(lambda *a: None)
  with pytest.raises(ValueError, match="registered twice"):
    builtin.register("stripes", object)

  # Transfer knows the new method's image tower from its traits: a linear probe on digits.
  ft = config_lib.load(f"{FT_MINI}:pretrained={wd},protocol=lp,shots=5")
  ft.pp_eval = ft.pp_train = "to_rgb|resize(16)|value_range(-1, 1)"
  rows = finetune.run(ft, str(tmp_path / "lp"), devices=one_device())
  assert rows[0]["pretrain_method"] == "rotnet" and 0.0 <= rows[0]["test_accuracy"] <= 1.0


def test_a_transfer_protocol_plugs_in_with_one_line_and_its_own_config_section(tmp_path):
  from example_plugins.nearest_mean_protocol import _predict

  from big_transfer import protocols, study
  from big_transfer.data import fewshot

  protocols.register("nearest_mean", "example_plugins.nearest_mean_protocol:Protocol")
  try:
    # Its section joins the transfer config, with its meaning and its check.
    c = config_lib.load(f"{FT_MINI}:protocol=nearest_mean,shots=5")
    assert c.nearest_mean.metric == "cosine"
    assert "nearest_mean.metric = 'cosine'  # cosine or euclidean" in config_lib.describe(
      c, tuple(finetune.sections())
    )
    c.nearest_mean.metric = "manhattan"
    with pytest.raises(finetune.TransferError, match="nearest_mean.metric='manhattan'"):
      finetune.run(c, str(tmp_path / "bad"), devices=one_device())
    # It runs like the built-in protocols: rows with the common fields, its own recipe.
    c = config_lib.load(f"{FT_MINI}:protocol=nearest_mean,shots=5")
    (row,) = finetune.run(c, str(tmp_path / "ncm"), devices=one_device())
    assert row["protocol"] == "nearest_mean" and row["recipe"]["metric"] == "cosine"
    assert (row["num_train"], row["num_classes"]) == (50, 10)
    # ... and its number is the plug-in's own computation on the run's frozen features.
    s = finetune.Session(c, str(tmp_path / "check"), one_device())
    tx, ty = s.frozen_features("train")
    x, y = s.frozen_features("test")
    means = np.stack([tx[ty == k].mean(0) for k in range(10)])
    assert row["test_accuracy"] == pytest.approx(np.mean(_predict(means, x, "cosine") == y))
    assert np.bincount(fewshot.labels_of(s.data["train"])).tolist() == [5] * 10
    # A study may name it (the study config's protocols are checked against the registry).
    assert "nearest_mean" in protocols.known()
    with pytest.raises(
      study.StudyConfigError, match="unknown protocol 'nearest_men'.*nearest_mean"
    ):
      study.load_study({"protocols": ("nearest_men",)})
  finally:
    protocols.PROTOCOLS.pop("nearest_mean")
