"""Transfer: restore from every pre-training method, the protocols, validation-only selection,
the study's acceptance numbers on built-in digits, results rows."""

import json
import os

import numpy as np
import pytest

from big_transfer import checkpoint, config_lib, finetune, train, transfer
from big_transfer.logging import read_metrics
from conftest import ROOT, one_device, override

FT_MINI = os.path.join(ROOT, "configs", "mini", "finetune.py")


def ft_config(arg="", **overrides):
  c = config_lib.load(f"{FT_MINI}:{arg}" if arg else FT_MINI)
  c.log_every = 100
  return override(c, **overrides)


def run_ft(tmp_path, name, arg="", **overrides):
  return finetune.run(ft_config(arg, **overrides), str(tmp_path / name), devices=one_device())


# ---------------------------------------------------------------- pre-trained runs (once)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """Small runs of the three methods: supervised on glyphs (a source related to digits),
  SimCLR and CLIP (a few steps each; CLIP's zero-shot evaluator runs at its last step)."""
  root = tmp_path_factory.mktemp("pretrained")
  out = {}
  c = config_lib.load(os.path.join(ROOT, "configs/mini/supervised.py") + ":steps=150,batch=64")
  c.data, c.eval_data, c.tensorboard, c.log_every = "builtin:glyphs?n=4000", "none", False, 50
  train.run(c, str(root / "supervised"), devices=one_device())
  out["supervised"] = str(root / "supervised")
  c = config_lib.load(
    os.path.join(ROOT, "configs/mini/simclr.py") + ":steps=2,batch=16,width=0.125"
  )
  c.evals.fewshot.data, c.tensorboard = "", False
  train.run(c, str(root / "simclr"), devices=one_device())
  out["simclr"] = str(root / "simclr")
  c = config_lib.load(os.path.join(ROOT, "configs/mini/clip.py") + ":steps=30,batch=32,width=0.125")
  c.evals.retrieval.data, c.tensorboard, c.eval_every = "", False, 30
  train.run(c, str(root / "clip"), devices=one_device())
  out["clip"] = str(root / "clip")
  return out


# ---------------------------------------------------------------- restore


@pytest.mark.parametrize("method", ["supervised", "simclr", "clip"])
def test_restores_the_image_tower_of_every_method_by_name(pretrained, method):
  pre = transfer.load_pretrained(pretrained[method])
  assert pre.method == method
  s = finetune.Session(ft_config(f"pretrained={pretrained[method]}"), "/nonexistent")
  w = s.initial_weights()
  tower = transfer.flatten(pre.params(), pre.tower)
  got = transfer.flatten(w.params["backbone"])
  assert got and set(got) <= set(tower)
  for name, value in got.items():
    np.testing.assert_array_equal(value, tower[name], err_msg=name)
  stats = transfer.flatten(pre.state["model_state"], pre.tower)
  for name, value in transfer.flatten(w.model_state["backbone"]).items():
    np.testing.assert_array_equal(value, stats[name], err_msg=name)
  # The new head starts at zero; the pre-training head/projection/text tower are not in it.
  assert not np.any(w.params["head"]["kernel"])
  assert ("projection" in w.params) == (method == "clip")


def test_a_checkpoint_of_another_model_lists_what_does_not_match(pretrained):
  c = ft_config(f"pretrained={pretrained['supervised']}", model="resnet26")
  s = finetune.Session(c, "/nonexistent")
  with pytest.raises(checkpoint.CheckpointError, match="does not fit the model.*not in the"):
    s.initial_weights()


def test_position_embeddings_are_resampled_for_another_resolution():
  rng = np.random.default_rng(0)
  src = {"enc": {"pos_embed": rng.normal(size=(1 + 16, 8)), "w": np.ones((3, 3))}}
  target = {"pos_embed": np.zeros((1 + 36, 8), np.float32), "w": np.zeros((3, 3), np.float32)}
  out, resampled = transfer.load_by_name(target, src, prefix="enc")
  assert out["pos_embed"].shape == (37, 8) and resampled
  np.testing.assert_allclose(out["pos_embed"][0], src["enc"]["pos_embed"][0], rtol=1e-6)
  with pytest.raises(checkpoint.CheckpointError, match=r"w: checkpoint \(3, 3\) vs model"):
    transfer.load_by_name({**target, "w": np.zeros((2, 2))}, src, prefix="enc")


# ---------------------------------------------------------------- protocols and acceptance


@pytest.mark.slow  # ~30 s: a learning-quality check (the protocol's mechanics are tested below)
def test_full_finetuning_from_a_related_source_reaches_97_percent(pretrained, tmp_path):
  rows = run_ft(tmp_path, "ft", f"pretrained={pretrained['supervised']}")
  assert len(rows) == 1 and rows[0]["test_accuracy"] >= 0.97, rows
  assert rows[0]["pretrain_method"] == "supervised" and rows[0]["shots"] == "full"


@pytest.mark.slow  # ~40 s: a learning-quality check over four fine-tuning runs
def test_related_pretraining_beats_scratch_at_5_and_10_shots(pretrained, tmp_path):
  for shots in (5, 10):
    arg = f"shots={shots},epochs=20"
    pre = run_ft(tmp_path, f"pre{shots}", f"pretrained={pretrained['supervised']},{arg}")[0]
    scratch = run_ft(tmp_path, f"scratch{shots}", arg)[0]
    assert pre["num_train"] == scratch["num_train"] == 10 * shots
    assert pre["test_accuracy"] > scratch["test_accuracy"] + 0.1, (pre, scratch)


def test_closed_form_probe_matches_scikit_learn_ridge(pretrained):
  from sklearn.linear_model import RidgeClassifier

  s = finetune.Session(
    ft_config(f"pretrained={pretrained['supervised']},protocol=lp,shots=10"), "/nonexistent"
  )
  w = s.to_device(s.initial_weights())
  tx, ty = s.features(w, "train")
  vx, vy = s.features(w, "val")
  x, y = s.features(w, "test")
  kernel, bias, l2, scores = transfer.ridge_probe(tx, ty, vx, vy, 10, (1e-3, 1e-1, 10.0))
  ours = np.mean(np.argmax(x @ kernel + bias, -1) == y)
  scale = float(np.mean(np.sum(tx.astype(np.float64) ** 2, -1)))
  ref = RidgeClassifier(alpha=l2 * scale).fit(tx, ty)
  assert abs(ours - ref.score(x, y)) <= 0.005, (ours, ref.score(x, y))
  assert ours > 0.6
  # The SGD probe (softmax regression) learns too.
  kernel, bias, _, _ = transfer.sgd_probe(tx, ty, vx, vy, 10, (1e-4,), steps=300)
  assert np.mean(np.argmax(x @ kernel + bias, -1) == y) > 0.6


def test_lp_ft_selects_on_validation_only_and_rerun_is_free(pretrained, tmp_path):
  table = tmp_path / "study" / "results.jsonl"
  wd = tmp_path / "lpft"
  c = ft_config(
    f"pretrained={pretrained['supervised']},protocol=lp_ft,shots=5,epochs=10,lrs=1e-5;3e-3",
    results_file=str(table),
    tags="arm=related",
  )
  rows = finetune.run(c, str(wd), devices=one_device())
  (row,) = rows
  grid = row["grid"]
  chosen = max(grid, key=lambda g: g["val_accuracy"])
  assert row["hyperparameters"]["lr"] == chosen["lr"] and row["head_init"] == "probe"
  assert row["test_accuracy"] == chosen["test_accuracy"]  # the val-chosen run's test number
  assert row["test_selected_accuracy"] == max(g["test_accuracy"] for g in grid)
  assert row["tags"] == {"arm": "related"} and row["selection"] == "val"
  # One row in the run's own results file and in the study table.
  assert [json.loads(x)["test_accuracy"] for x in open(wd / "results.jsonl")] == [
    row["test_accuracy"]
  ]
  assert transfer.read_results(str(table)) == [json.loads(open(wd / "results.jsonl").read())]
  # Each learning rate ran in its own resumable sub-run.
  assert sorted(os.listdir(wd)) == [
    "done.json",
    "lr_0.003",
    "lr_1e-05",
    "results.jsonl",
    "run.json",
  ]
  assert rows == finetune.run(c, str(wd), devices=one_device())  # done: nothing recomputed
  assert len(transfer.read_results(str(table))) == 1


def test_the_authors_grid_with_best_over_epochs_test_selection_beside_the_honest_choice(
  pretrained, tmp_path, monkeypatch
):
  from big_transfer import published

  monkeypatch.setattr(
    published, "authors_grid", lambda ds, protocol="ft": [(1e-3, 16, 2), (3e-3, 32, 3)]
  )
  wd = tmp_path / "paper"
  (row,) = run_ft(
    tmp_path,
    "paper",
    f"pretrained={pretrained['supervised']},shots=5",
    paper_grid="dtd",
    warmup_cap=0.0,
  )
  assert [(g["lr"], g["batch_size"], g["epochs"]) for g in row["grid"]] == [
    (1e-3, 16, 2.0),
    (3e-3, 32, 3.0),
  ]
  assert [len(g["test_by_epoch"]) for g in row["grid"]] == [2, 3]
  for g in row["grid"]:  # the last epoch's test accuracy is the run's
    assert g["test_by_epoch"][-1] == pytest.approx(g["test_accuracy"], abs=1e-6)
  every = [a for g in row["grid"] for a in g["test_by_epoch"]]
  assert row["test_selected_accuracy"] == max(every)
  assert row["test_selected_by"] == "best test over the grid and epochs"
  assert row["hyperparameters"]["grid"].startswith("the authors' log (dtd, ft, 2 points)")
  chosen = max(row["grid"], key=lambda g: (g["val_accuracy"], -g["lr"]))
  assert row["test_accuracy"] == chosen["test_accuracy"]  # honest: chosen on validation
  assert sorted(d for d in os.listdir(wd) if d.startswith("lr_")) == [
    "lr_0.001_b16_e2",
    "lr_0.003_b32_e3",
  ]
  # Uncapped warm-up (mini config: 20 steps) as the authors ran: 8 steps never reach the peak.
  lrs = [r["train/lr"] for r in read_metrics(str(wd / "lr_0.001_b16_e2")) if "train/lr" in r]
  assert max(lrs) < 0.5e-3


def test_full_data_refits_on_train_and_val_and_few_shot_test_can_be_subsampled(
  pretrained, tmp_path
):
  (row,) = run_ft(
    tmp_path, "full", f"pretrained={pretrained['supervised']},epochs=1", refit_full=True
  )
  assert row["num_train"] + row["num_val"] == row["refit"]["num_train"] == 1437
  assert row["refit"]["on"] == "train+val" and row["test_accuracy"] > 0.5
  assert os.path.isdir(tmp_path / "full" / "refit")
  (row,) = run_ft(
    tmp_path, "sub", f"pretrained={pretrained['supervised']},protocol=lp,shots=5", test_shots=True
  )
  assert row["test_subsampled"] == 5 and row["num_test"] == 50 and "refit" not in row
  c = ft_config(f"pretrained={pretrained['supervised']},shots=5", test_shots=True)
  from big_transfer.data import fewshot, sources

  test = finetune.transfer_data(c)["test"]
  base, idx = sources.provenance(test)
  assert sources.identity_of(base)[2] == "test" and len(set(idx)) == 50
  assert np.bincount(fewshot.labels_of(test)).tolist() == [5] * 10


def test_the_feature_cache_is_keyed_by_everything_that_changes_a_feature(pretrained, tmp_path):
  # A 1-shot probe with k test images per class, then the 5-shot one on the same cache: the
  # 5-shot row is scored on its own 50 test images, exactly as without a cache.
  cache = str(tmp_path / "features")
  arg = f"pretrained={pretrained['supervised']},protocol=lp"
  one = run_ft(tmp_path, "k1", arg + ",shots=1", test_shots=True, feature_cache=cache)[0]
  five = run_ft(tmp_path, "k5", arg + ",shots=5", test_shots=True, feature_cache=cache)[0]
  plain = run_ft(tmp_path, "k5_nocache", arg + ",shots=5", test_shots=True)[0]
  assert (one["num_test"], five["num_test"]) == (10, 50)
  assert five["test_accuracy"] == pytest.approx(plain["test_accuracy"], abs=1e-9)
  assert five["val_accuracy"] == pytest.approx(plain["val_accuracy"], abs=1e-9)
  s = finetune.Session(
    ft_config(arg + ",shots=5", test_shots=True, feature_cache=cache), "/nonexistent"
  )
  x, y = s.frozen_features("test")
  assert x.shape[0] == 50 and np.bincount(y).tolist() == [5] * 10
  # Each base split is embedded once (the pool and the test split) and every run indexes it.
  files = sorted(os.listdir(cache))
  assert len(files) == 2, files
  # Another preprocessing makes other features: a new entry, not the cached one.
  run_ft(
    tmp_path,
    "k5_pp",
    arg + ",shots=5",
    test_shots=True,
    feature_cache=cache,
    pp_eval="to_rgb|resize(32)|value_range(-1, 1)",
  )
  assert len(os.listdir(cache)) == 4
  # A cache entry that does not match its source (another size) is recomputed, not trusted.
  for f in files:
    np.savez(os.path.join(cache, f), x=np.zeros((3, 2), np.float32), y=np.zeros(3, np.int64))
  again = run_ft(tmp_path, "k5_stale", arg + ",shots=5", test_shots=True, feature_cache=cache)[0]
  assert again["test_accuracy"] == pytest.approx(plain["test_accuracy"], abs=1e-9)


def test_clip_zero_shot_text_head_and_wise_ft(pretrained, tmp_path):
  # The zero-shot protocol's text-initialised head gives exactly the accuracy the
  # pre-training run's zero-shot evaluator logged for the same checkpoint and digits test set.
  logged = [
    r["zeroshot/digits/accuracy"]
    for r in read_metrics(pretrained["clip"])
    if "zeroshot/digits/accuracy" in r
  ][-1]
  zs = run_ft(tmp_path, "zs", f"pretrained={pretrained['clip']},protocol=zeroshot")[0]
  assert zs["test_accuracy"] == pytest.approx(logged, abs=1e-6) and zs["head_init"] == "text"
  rows = run_ft(
    tmp_path,
    "wise",
    f"pretrained={pretrained['clip']},protocol=wise_ft,shots=5,epochs=10",
    **{"wise_ft.alphas": (0.0, 0.5, 1.0)},
  )
  assert [r["hyperparameters"]["alpha"] for r in rows] == [0.0, 0.5, 1.0]
  (chosen,) = [r for r in rows if r["chosen"]]  # one alpha, the validation's best
  assert chosen["val_accuracy"] == max(r["val_accuracy"] for r in rows)
  assert rows[0]["test_accuracy"] == pytest.approx(zs["test_accuracy"], abs=1e-6)
  assert rows[-1]["test_accuracy"] == pytest.approx(rows[-1]["grid"][0]["test_accuracy"])


def test_zero_shot_needs_a_clip_run_and_bad_shots_are_one_line(pretrained, tmp_path):
  with pytest.raises(finetune.TransferError, match="zeroshot needs a CLIP"):
    run_ft(tmp_path, "x", f"pretrained={pretrained['supervised']},protocol=zeroshot")
  with pytest.raises(finetune.TransferError, match="config.shots='five'"):
    run_ft(tmp_path, "y", "shots=five")


def test_bit_hyperrule():
  small = transfer.bit_hyperrule(1_000, image_size=8)
  assert (
    small["total_steps"],
    small["optimizer"]["warmup_steps"],
    small["mixup_alpha"],
    small["resize"],
    small["crop"],
  ) == (500, 100, 0.0, 160, 128)
  assert small["optimizer"]["boundaries"] == (200, 300, 400)
  assert small["optimizer"]["lr"] == 0.003 and small["optimizer"]["weight_decay"] == 0.0
  mid = transfer.bit_hyperrule(50_000, image_size=224)
  assert (mid["total_steps"], mid["mixup_alpha"], mid["crop"]) == (10_000, 0.1, 480)
  assert transfer.bit_hyperrule(1_281_167)["total_steps"] == 20_000


# ---------------------------------------------------------------- the authors' recipe


def test_transfer_defaults_are_the_authors_recipe_and_the_texts_is_one_value_away():
  from big_transfer import optim

  c = finetune.transfer_config()
  o = c.optimizer
  assert (o.name, o.weight_decay, o.decay, o.grad_clip_norm, o.warmup_steps) == (
    "adamw",
    0.1,
    "all",
    1.0,
    500,
  )
  assert c.warmup_cap == 0.0 and c.templates == "openai80" and c.feature_norm == "auto"
  assert (c.lp.lp_ft_solver, c.lp.adamw_epochs, c.lp.adamw_lr) == ("adamw", 128.0, 3e-3)
  params = {"kernel": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)}
  zero = {k: np.zeros_like(v) for k, v in params.items()}

  def after_one_step(**kw):
    cfg = finetune.transfer_config().optimizer
    cfg.update(lr=0.5, warmup_steps=0, **kw)
    tx, _ = optim.build(cfg, 10)
    u, _ = tx.update(zero, tx.init(params), params)
    return {k: np.asarray(params[k] + u[k]) for k in params}

  # Decoupled weight decay on every parameter (theirs), or on kernels only (the option).
  theirs = after_one_step()
  np.testing.assert_allclose(theirs["bias"], 1 - 0.5 * 0.1, rtol=1e-6)
  np.testing.assert_allclose(theirs["kernel"], 1 - 0.5 * 0.1, rtol=1e-6)
  kernels = after_one_step(decay="kernels")
  np.testing.assert_array_equal(kernels["bias"], 1.0)
  np.testing.assert_allclose(kernels["kernel"], 1 - 0.5 * 0.1, rtol=1e-6)
  # The gradient's global norm is clipped to 1.0: a gradient 100x larger moves SGD the same.
  cfg = finetune.transfer_config().optimizer
  cfg.update(name="sgd", momentum=0.0, lr=1.0, warmup_steps=0, weight_decay=0.0)
  tx, _ = optim.build(cfg, 10)
  g = {"kernel": np.full((2, 2), 3.0, np.float32), "bias": np.full(2, 4.0, np.float32)}
  u, _ = tx.update(g, tx.init(params), params)
  norm = np.sqrt(sum(float(np.sum(np.asarray(v) ** 2)) for v in u.values()))
  assert norm == pytest.approx(1.0, rel=1e-5)
  with pytest.raises(config_lib.ConfigError, match="optimizer.decay='bias'"):
    bad = config_lib.load(FT_MINI)
    bad.unlock()
    bad.optimizer.decay = "bias"
    config_lib.validate(bad)


def test_the_paper_config_evaluates_in_float16_as_the_authors_autocast_and_trains_in_float32(
  pretrained, tmp_path
):
  paper = config_lib.load(os.path.join(ROOT, "configs", "finetune", "default.py"))
  assert (paper.dtype, paper.eval_dtype) == ("float32", "float16")
  arg = f"pretrained={pretrained['supervised']},protocol=lp,shots=2"
  feats = {}
  for dt in ("", "float16"):
    s = finetune.Session(ft_config(arg, eval_dtype=dt), "/nonexistent")
    feats[dt], _ = s.frozen_features("test")
    assert finetune.recipe_of(s)["eval_dtype"] == (dt or "float32")
  # Features computed in half precision: close to float32's, not the same numbers.
  assert feats[""].dtype == feats["float16"].dtype == np.float32
  assert not np.array_equal(feats[""], feats["float16"])
  scale = np.abs(feats[""]).max()
  np.testing.assert_allclose(feats["float16"], feats[""], atol=1e-2 * scale)
  # The run's rows say so, and its evaluation took the same half-precision path.
  row = run_ft(tmp_path, "lp16", arg, eval_dtype="float16")[0]
  assert row["recipe"]["eval_dtype"] == "float16" and row["recipe"]["dtype"] == "float32"
  with pytest.raises(finetune.TransferError, match="config.eval_dtype='half'"):
    run_ft(tmp_path, "bad", arg, eval_dtype="half")


def test_simclr_features_are_l2_normalised_before_the_head(pretrained):
  for norm, expect in (("auto", True), ("none", False)):
    s = finetune.Session(
      ft_config(f"pretrained={pretrained['simclr']},protocol=lp,shots=2", feature_norm=norm),
      "/nonexistent",
    )
    assert s.method.normalize is expect
    x, _ = s.frozen_features("train")
    norms = np.linalg.norm(x, axis=-1)
    assert np.allclose(norms, 1.0, atol=1e-4) is expect, norms[:4]
  s = finetune.Session(
    ft_config(f"pretrained={pretrained['supervised']},protocol=lp,shots=2"), "/nonexistent"
  )
  assert s.method.normalize is False  # supervised and from-scratch features stay raw


def test_lp_ft_starts_from_the_authors_adamw_probe_head(pretrained, tmp_path):
  s = finetune.Session(
    ft_config(f"pretrained={pretrained['supervised']},protocol=lp,shots=10"), "/nonexistent"
  )
  tx, ty = s.frozen_features("train")
  vx, vy = s.frozen_features("val")
  x, y = s.frozen_features("test")
  kernel, bias, lr, scores = transfer.adamw_probe(
    tx,
    ty,
    vx,
    vy,
    10,
    epochs=128,
    lr=3e-3,
    batch=32,
    weight_decay=0.1,
    warmup_steps=500,
    clip_norm=1.0,
  )
  assert lr == 3e-3 and set(scores) == {3e-3}
  assert np.mean(np.argmax(x @ kernel + bias, -1) == y) > 0.6
  # 128 epochs of 4 batches (100 examples, the last batch of 4) = 512 steps: past the 500
  # warm-up steps; a run of 2 epochs stays in warm-up and learns less.
  short = transfer.adamw_probe(
    tx,
    ty,
    vx,
    vy,
    10,
    epochs=2,
    lr=3e-3,
    batch=32,
    weight_decay=0.1,
    warmup_steps=500,
    clip_norm=1.0,
  )
  assert np.abs(short[0]).max() < np.abs(kernel).max()
  # A learning rate of 0 leaves the head where it starts: the given init (CLIP: zero-shot).
  k0, b0 = np.ones_like(kernel), np.full_like(bias, 0.5)
  k1, b1, _, _ = transfer.adamw_probe(
    tx,
    ty,
    vx,
    vy,
    10,
    epochs=1,
    lr=0.0,
    batch=32,
    weight_decay=0.1,
    warmup_steps=0,
    clip_norm=1.0,
    init=(k0, b0),
  )
  np.testing.assert_array_equal(k1, k0)
  np.testing.assert_array_equal(b1, b0)
  # CLIP's probe starts from its zero-shot head, as the authors' LP and LP-FT did; others at 0.
  s = finetune.Session(
    ft_config(f"pretrained={pretrained['clip']},protocol=lp_ft,shots=2"), "/nonexistent"
  )
  init = s.adamw_probe_init()
  np.testing.assert_array_equal(init[0], s.text_head()[0])
  assert np.abs(init[0]).max() > 0
  assert (
    finetune.Session(
      ft_config(f"pretrained={pretrained['supervised']},protocol=lp_ft,shots=2"), "/nonexistent"
    ).adamw_probe_init()
    is None
  )
  (row,) = run_ft(
    tmp_path,
    "lpft",
    f"pretrained={pretrained['supervised']},protocol=lp_ft,shots=5,epochs=2",
    **{"lp.adamw_epochs": 4.0},
  )
  assert row["recipe"]["probe_solver"] == "adamw" and row["head_init"] == "probe"
  assert (row["recipe"]["grad_clip_norm"], row["recipe"]["decay"]) == (1.0, "all")
  assert (row["recipe"]["warmup_cap"], row["recipe"]["feature_norm"]) == (0.0, "none")
  assert row["recipe"]["probe_init"] == "zero"
  assert row["recipe"]["probe_features"] == "train_pp, last epoch"


def test_lp_ft_probe_fits_augmented_training_features_computed_once_as_the_authors(pretrained):
  arg = f"pretrained={pretrained['supervised']},protocol=lp_ft,shots=5"
  s = finetune.Session(ft_config(arg), "/nonexistent")
  assert s.config.lp.lp_ft_features == "train_pp"  # random_crop(32) of resize(36) here
  w = s.frozen_weights()
  plain, y = s.frozen_features("train")
  aug, y2 = s.features(w, "train", augmented=True)
  np.testing.assert_array_equal(y, y2)
  assert not np.allclose(aug, plain, atol=1e-3)  # through the training augmentation
  np.testing.assert_array_equal(aug, s.features(w, "train", augmented=True)[0])  # seeded
  other = finetune.Session(ft_config(arg + ",seed=1", shot_seed=0), "/nonexistent")
  assert not np.allclose(other.features(w, "train", augmented=True)[0], aug, atol=1e-3)
  # The probe the run starts from is the one fitted on them (and eval_pp's is another).
  kernel, bias, _, _ = s.probe("adamw", augmented=True)
  np.testing.assert_array_equal(s.start_head()[0], kernel)
  ev = finetune.Session(ft_config(arg, **{"lp.lp_ft_features": "eval_pp"}), "/nonexistent")
  assert not np.array_equal(ev.start_head()[0], kernel)
  assert finetune.recipe_of(ev)["probe_features"] == "eval_pp, last epoch"
  with pytest.raises(finetune.TransferError, match="lp.lp_ft_features='test'"):
    finetune.Session(ft_config(arg, **{"lp.lp_ft_features": "test"}), "/nonexistent")


@pytest.mark.slow  # ~1 min: a grid trained fused and one by one
def test_a_fused_learning_rate_grid_equals_the_points_trained_one_by_one(pretrained, tmp_path):
  """fuse_grid: the grid's points that share batch and length train as one vmapped program
  (one state per point on the same batches); each point's numbers, the choice and the row are
  those of the points trained one by one, to float rounding."""
  arg = f"pretrained={pretrained['supervised']},shots=5,epochs=3,lrs=1e-3;1e-2"
  runs = {}
  for mode in ("off", "on"):
    (runs[mode],) = run_ft(tmp_path, mode, arg, fuse_grid=mode)
  one, fused = runs["off"], runs["on"]
  assert [g["lr"] for g in fused["grid"]] == [g["lr"] for g in one["grid"]] == [1e-3, 1e-2]
  for a, b in zip(one["grid"], fused["grid"]):
    assert (a["steps"], a["batch_size"]) == (b["steps"], b["batch_size"])
    assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=2 / 143)  # 2 of 143 images
    assert b["test_accuracy"] == pytest.approx(a["test_accuracy"], abs=2 / 360)
  assert fused["hyperparameters"]["lr"] == one["hyperparameters"]["lr"]  # the same choice
  # One program, one resumable directory holding the stacked state; each point logs its own
  # curve, which matches the point's own run.
  fused_dir = tmp_path / "on" / "lr_0.001+lr_0.01"
  assert (fused_dir / "checkpoints").is_dir() and not (tmp_path / "on" / "lr_0.001").exists()
  for point in ("lr_0.001", "lr_0.01"):
    mine = [r["train/loss"] for r in read_metrics(str(fused_dir / point)) if "train/loss" in r]
    alone = [
      r["train/loss"] for r in read_metrics(str(tmp_path / "off" / point)) if "train/loss" in r
    ]
    np.testing.assert_allclose(mine, alone, rtol=2e-3)
  assert finetune.run(
    ft_config(arg, fuse_grid="on"), str(tmp_path / "on"), devices=one_device()
  ) == [fused]


@pytest.mark.slow  # ~1 min: eight short fine-tuning runs
def test_few_shot_batches_padded_to_one_shape_train_as_their_own_rows_and_compile_once(
  pretrained, tmp_path
):
  """Every shot count and learning rate of a model runs one compiled training step: what varies
  (lr, warm-up, length, seed) is a runtime value, and a few-shot set smaller than the batch is
  padded to it with masked rows — left out of the loss and of BatchNorm's statistics, so the
  run equals the one at the set's own batch size, to float rounding."""
  from big_transfer import logging as log_lib
  from big_transfer import programs

  programs.clear()
  count = lambda: log_lib.COMPILES["by_name"].get("jit(train_step)", 0)
  before = count()
  arg = f"pretrained={pretrained['supervised']},epochs=8,lrs=1e-3;1e-2"
  ft = lambda name, shots, **kw: run_ft(
    tmp_path, name, f"{arg},shots={shots}", warmup_cap=0.2, **kw
  )
  rows = {k: ft(f"pad{k}", k, pad_batches="on")[0] for k in ("2", "5", "full")}
  assert count() - before == 1  # 3 shot counts x 2 learning rates: one program
  assert [g["batch_size"] for g in rows["5"]["grid"]] == [50, 50]  # its own rows per step
  record = json.load(open(tmp_path / "pad5" / "lr_0.001" / "config.json"))
  assert (record["resolved"]["batch_size"], record["resolved"]["padded_to"]) == (50, 64)
  (alone,) = ft("nopad5", 5, pad_batches="off")
  assert count() - before == 2  # unpadded: a program of its own shape
  for a, b in zip(alone["grid"], rows["5"]["grid"]):
    assert a["steps"] == b["steps"]
    assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=2 / 143)  # 2 images
    assert b["test_accuracy"] == pytest.approx(a["test_accuracy"], abs=2 / 360)
  assert rows["5"]["hyperparameters"]["lr"] == alone["hyperparameters"]["lr"]
  for lr, rtol in (("0.001", 1e-5), ("0.01", 1e-2)):  # rounding, grown by the larger steps
    pad = [r["train/loss"] for r in read_metrics(str(tmp_path / "pad5" / f"lr_{lr}"))]
    own = [r["train/loss"] for r in read_metrics(str(tmp_path / "nopad5" / f"lr_{lr}"))]
    np.testing.assert_allclose(pad, own, rtol=rtol)


def test_a_pretrained_run_that_does_not_exist_is_one_line_naming_the_nearest_and_writes_nothing(
  pretrained, tmp_path
):
  typo = pretrained["supervised"] + "d"  # .../supervisedd
  wd = tmp_path / "ft"
  with pytest.raises(checkpoint.CheckpointError) as e:
    run_ft(tmp_path, "ft", f"pretrained={typo}")
  assert f"no such run {typo!r}" in str(e.value)
  assert f"the nearest run directory there is {pretrained['supervised']!r}" in str(e.value)
  assert not wd.exists()  # nothing written


def test_a_text_head_can_be_wired_in_another_codes_class_order_on_purpose(pretrained, tmp_path):
  """``text_head_order``: a file of class names in another code's order (the authors' lists,
  not in their label order) makes column i say that file's i-th name — their wiring,
  reproduced on purpose and recorded in every row; the default says each label's own name."""
  arg = f"pretrained={pretrained['clip']},protocol=zeroshot"
  right = finetune.Session(ft_config(arg), "/nonexistent")
  names = list(right.data["class_names"])
  order = tmp_path / "their_order.txt"
  order.write_text("\n".join(reversed(names)) + "\n")
  wrong = finetune.Session(ft_config(arg, text_head_order=str(order)), "/nonexistent")
  np.testing.assert_allclose(wrong.text_head()[0], right.text_head()[0][:, ::-1], rtol=1e-5)
  (row,) = run_ft(tmp_path, "zs", arg, text_head_order=str(order))
  assert row["recipe"]["text_head_order"] == str(order)
  order.write_text("one\ntwo\n")
  with pytest.raises(finetune.TransferError, match="2 names for 10 classes"):
    finetune.Session(ft_config(arg, text_head_order=str(order)), "/nonexistent").text_head()
