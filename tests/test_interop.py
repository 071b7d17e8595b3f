"""Interop without PyTorch: BiT and big_vision .npz layouts in and out, every mismatch listed,
and a converted checkpoint used by finetune (CLI) and train (init_from) like a native one.

The equivalence tests against the reference implementations themselves (OpenCLIP, timm) are in
test_interop_reference.py; they need requirements-dev.txt."""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from big_transfer import convert_checkpoint as cc
from big_transfer import interop, models, train, transfer
from big_transfer.sharding import path_name
from conftest import ROOT, mini_config, one_device


def random_weights(name, num_classes, seed=0, **kwargs):
  """{our name: array} of a model with random values everywhere (BatchNorm statistics too)."""
  from flax import nnx

  m = nnx.eval_shape(
    lambda: models.create(name, num_classes=num_classes, rngs=nnx.Rngs(0), **kwargs)
  )
  rng = np.random.RandomState(seed)
  out = {}
  for p, v in jax.tree_util.tree_flatten_with_path(nnx.state(m).to_pure_dict())[0]:
    n = path_name(p)
    out[n] = (
      rng.rand(*v.shape) + 0.5
      if n.endswith("var")
      else rng.randn(*v.shape) * (0.1 if len(v.shape) < 2 else v.shape[-2] ** -0.5)
    ).astype(np.float32)
  return out


def restored_flat(workdir):
  pre = transfer.load_pretrained(workdir)
  return {
    **transfer.flatten(pre.state["params"]),
    **transfer.flatten(pre.state.get("model_state", {})),
  }, pre


def test_bit_npz_converts_both_ways_and_lists_every_mismatch(tmp_path):
  ours = random_weights("bit_r26x1", 7)
  npz = interop.export(ours, interop.bit_rule)
  assert "resnet/block3/unit02/c/standardized_conv2d/kernel" in npz
  assert npz["resnet/head/conv2d/kernel"].shape == (1, 1, 2048, 7)
  np.savez(tmp_path / "bit.npz", **npz)
  summary = cc.convert("bit", str(tmp_path / "bit.npz"), str(tmp_path / "out"))
  assert (summary["model"], summary["num_classes"]) == ("bit_r26x1", 7)
  back, pre = restored_flat(str(tmp_path / "out"))
  assert pre.method == "supervised" and pre.config.model == "bit_r26x1"
  assert set(back) == set(ours)
  for k in ours:
    np.testing.assert_array_equal(back[k], ours[k], err_msg=k)

  # A truncated, extended and reshaped checkpoint: each problem named once, nothing written.
  bad = dict(npz)
  del bad["resnet/block2/unit01/b/group_norm/gamma"]
  bad["resnet/extra/kernel"] = np.zeros(3, np.float32)
  bad["resnet/block1/unit01/a/standardized_conv2d/kernel"] = np.zeros((1, 1, 64, 32), np.float32)
  np.savez(tmp_path / "bad.npz", **bad)
  with pytest.raises(interop.ConversionError) as e:
    cc.convert("bit", str(tmp_path / "bad.npz"), str(tmp_path / "bad"))
  msg = str(e.value)
  assert "(3 mismatches)" in msg
  assert "stages/1/0/norms/1/norm/scale: bit checkpoint" in msg
  assert "has no resnet/block2/unit01/b/group_norm/gamma" in msg
  assert "resnet/extra/kernel (3,): in the bit checkpoint, not in this model" in msg
  assert "stages/0/0/conv1/kernel: model (1, 1, 64, 64) vs" in msg
  assert not os.path.exists(tmp_path / "bad")
  # --model that disagrees with the tensors, and a file that is not a checkpoint: one line.
  with pytest.raises(interop.ConversionError, match="--model=bit_r50x1, but .* bit_r26x1"):
    cc.convert("bit", str(tmp_path / "bit.npz"), str(tmp_path / "x"), model="bit_r50x1")
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "big_transfer.convert_checkpoint",
      "--from=bit",
      str(tmp_path / "junk.npz"),
      f"--out={tmp_path / 'y'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
  assert r.stderr.startswith(f"error: {tmp_path / 'junk.npz'}: not a readable .npz")


@pytest.mark.parametrize("layout", ["bv", "bv_scan", "vit_jax", "bv_gap"])
def test_big_vision_vit_npz_layouts(tmp_path, layout):
  pool = "gap" if layout == "bv_gap" else "tok"
  ours = random_weights("vit_ti16", 5, depth=2, image_size=32, pool=pool, act="gelu_tanh")
  if pool == "tok":
    ours["pos_embed"][0] = 0  # big_vision has no position embedding for the class token
  rule = interop.big_vision_rule("vit_jax" if layout == "vit_jax" else "bv", pool, heads=3)
  npz = interop.export(ours, rule)
  if layout == "bv_scan":  # big_vision's scanned encoder: one stacked array per name
    blocks = sorted(k for k in npz if k.startswith("Transformer/encoderblock_0/"))
    for k in blocks:
      stacked = k.replace("encoderblock_0/", "encoderblock/")
      second = k.replace("encoderblock_0/", "encoderblock_1/")
      npz[stacked] = np.stack([npz.pop(k), npz.pop(second)])
  npz = {f"params/{k}": v for k, v in npz.items()}  # as big_vision saves them
  np.savez(tmp_path / "vit.npz", **npz)
  summary = cc.convert("big_vision", str(tmp_path / "vit.npz"), str(tmp_path / "out"))
  assert summary["model"] == "vit_ti16"
  assert summary["model_kwargs"] == {
    "depth": 2,
    "mlp_dim": 768,
    "heads": 3,
    "pool": pool,
    "image_size": 32,
    "act": "gelu_tanh",
  }
  back, _ = restored_flat(str(tmp_path / "out"))
  assert set(back) == set(ours)
  for k in ours:
    np.testing.assert_array_equal(back[k], ours[k], err_msg=k)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """A small ViT in big_vision's layout, converted: the stand-in for a public checkpoint."""
  root = tmp_path_factory.mktemp("converted")
  ours = random_weights("vit_ti16", 11, seed=1, depth=2, image_size=32, patch=4)
  ours["pos_embed"][0] = 0
  np.savez(root / "vit.npz", **interop.export(ours, interop.big_vision_rule("bv", "tok", 3)))
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "big_transfer.convert_checkpoint",
      "--from=big_vision",
      str(root / "vit.npz"),
      "--model=vit_ti4",
      f"--out={root / 'ckpt'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert r.returncode == 0, r.stderr
  summary = json.loads(r.stdout.strip().splitlines()[-1])
  assert summary["params"] == sum(v.size for v in ours.values())
  return str(root / "ckpt"), ours


def test_a_converted_checkpoint_finetunes_with_the_cli(converted, tmp_path):
  ckpt, _ = converted
  arg = f"pretrained={ckpt},protocol=lp,shots=5"
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "big_transfer.finetune",
      f"--config={ROOT}/configs/mini/finetune.py:{arg}",
      f"--workdir={tmp_path / 'lp'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [json.loads(x) for x in open(tmp_path / "lp" / "results.jsonl")]
  assert len(rows) == 1 and rows[0]["protocol"] == "lp" and rows[0]["shots"] == 5
  assert rows[0]["pretrained"].endswith("ckpt")
  # Random (converted) features still carry signal: well above chance on 10 digits.
  assert rows[0]["test_accuracy"] > 0.2


def test_train_continues_from_a_converted_checkpoint(converted, tmp_path):
  ckpt, ours = converted
  c = mini_config(**{"model": "vit_ti4", "optimizer.lr": 0.0, "total_steps": 1})
  c.model_kwargs = ml_collections.ConfigDict(dict(depth=2, image_size=32, act="gelu_tanh"))
  c.init_from = ckpt
  with pytest.raises(
    Exception, match=r"head/kernel: checkpoint .* \(192, 11\) vs model \(192, 10\)"
  ):
    train.run(c, str(tmp_path / "a"), devices=one_device())
  c.init_skip = "head"  # the digits have 10 classes, the checkpoint's head 11
  state = train.run(c, str(tmp_path / "b"), devices=one_device())
  got = transfer.flatten(jax.tree.map(np.asarray, state.params))
  for k, v in ours.items():
    if not k.startswith("head/"):
      np.testing.assert_array_equal(got[k], v, err_msg=k)  # lr 0: the step kept them


def test_timm_export_round_trips_and_names_the_architecture(converted, tmp_path):
  """--to=timm writes timm's names and layout (read back by --from=timm: the same tensors) and
  the .json a timm user builds the model from; where timm has no such network, one line."""
  ckpt, ours = converted
  out = tmp_path / "vit.safetensors"
  assert cc.main([ckpt, "--to=timm", f"--out={out}"]) == 0
  with open(tmp_path / "vit.json") as f:
    meta = json.load(f)
  # ViT-Ti at patch 4 has no timm name: the registered ViT-Ti, every dimension an argument.
  assert meta["architecture"] == "vit_tiny_patch16_224"
  assert {
    k: meta["kwargs"][k]
    for k in (
      "img_size",
      "patch_size",
      "embed_dim",
      "depth",
      "num_heads",
      "num_classes",
      "global_pool",
    )
  } == dict(
    img_size=32,
    patch_size=4,
    embed_dim=192,
    depth=2,
    num_heads=3,
    num_classes=11,
    global_pool="token",
  )
  assert meta["pretrained_cfg"]["file"] == str(out)
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask  # like any file written here, not 0600
  # Read back under our name, and under the timm name the export wrote (the tensors say the
  # patch and the resolution the name does not).
  for model in ("vit_ti4", meta["architecture"]):
    cc.convert("timm", str(out), str(tmp_path / f"back_{model}"), model=model)
    back, _ = restored_flat(str(tmp_path / f"back_{model}"))
    assert set(back) == set(ours)
    for k in ours:
      np.testing.assert_array_equal(back[k], ours[k], err_msg=k)


@pytest.mark.parametrize(
  "model,kwargs,expect",
  [
    ("resnet50", {}, ("resnet50", "v1.5")),
    ("bit_r101x3", {}, ("resnetv2_101x3_bit", "v2")),
    ("vit_b16", {}, ("vit_base_patch16_224", "vit")),
    (
      "vit_b32",
      dict(eps=1e-5, patch_bias=False, ln_pre=True, act="quick_gelu"),
      ("vit_base_patch32_clip_224", "vit"),
    ),
    ("vit_s16", dict(image_size=384, pool="gap"), ("vit_small_patch16_384", "vit")),
    ("clip_rn50", {}, "--to=openclip"),
    ("resnet18", dict(width=0.25), "width=0.25"),
    ("bit_r50x2", {}, "bit_r50x1, bit_r50x3"),
    ("vit_b16", dict(ln_pre=True), "pre-norm"),
  ],
)
def test_timm_architectures_of_our_models(model, kwargs, expect):
  if isinstance(expect, str):
    with pytest.raises(interop.ConversionError, match=expect.replace(".", r"\.")):
      interop.timm_config(model, kwargs, 10)
    return
  arch, args, kind = interop.timm_config(model, kwargs, 10)
  assert (arch, kind) == expect and args["num_classes"] == 10
  if kind == "vit":
    assert args["pre_norm"] == kwargs.get("ln_pre", False)
    assert args["global_pool"] == ("avg" if kwargs.get("pool") == "gap" else "token")
    assert args["act_layer"] == kwargs.get("act", "gelu")
