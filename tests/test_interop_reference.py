"""Our models are the reference networks: OpenCLIP and timm models with random weights,
converted, give the same features and logits in float32 (relative error <= 1e-4) with the same
parameter counts; OpenCLIP state dicts round-trip; CLIP's tokenizer gives OpenCLIP's ids; timm's
own .npz loaders read the BiT and big_vision layouts we read.

Needs requirements-dev.txt (torch, open_clip_torch, timm); skipped without it. Marked
``interop``: ``python -m pytest -m interop`` (CI runs it after installing the dev requirements).
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

from test_interop import random_weights  # noqa: E402

from big_transfer import config_lib, interop, train, transfer  # noqa: E402
from big_transfer import convert_checkpoint as cc  # noqa: E402
from big_transfer.data import tokenizer as tok_lib  # noqa: E402
from conftest import ROOT, one_device, override  # noqa: E402

pytestmark = pytest.mark.interop

TOL = 1e-4


def rel_err(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def randomize(model, seed=0):
  """Random values in every weight and BatchNorm statistic (a fresh model's zero-initialised
  residual branches and unit statistics would hide mistakes)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("logit_scale"):
        continue
      if p.ndim >= 2:
        p.normal_(0, p[0].numel() ** -0.5, generator=g)
      else:
        p.add_(0.1 * torch.randn(p.shape, generator=g))
    for name, b in model.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(0.1 * torch.randn(b.shape, generator=g))
      elif name.endswith("running_var"):
        b.copy_(torch.rand(b.shape, generator=g) + 0.5)
  return model.eval()


def restore(workdir):
  """Our whole model from a converted workdir (and its tokenizer for CLIP)."""
  from flax import nnx

  pre = transfer.load_pretrained(workdir)
  tok = tok_lib.load(pre.tokenizer_path()) if pre.method == "clip" else None
  method, graphdef, params, rest = transfer.restore_model(pre, tok)
  return nnx.merge(graphdef, params, rest), tok, pre


def nhwc(x):
  return jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


def param_count(model):
  return sum(p.numel() for p in model.parameters())


CAPTIONS = [
  "a photo of a cat.",
  "A DOG!!! running, fast?",
  "naïve café — déjà vu 😀 ünïcode",
  "don't   stop  &amp; think\n\ttwice",
  "the number 3.14159 and $100",
  "日本語のキャプション",
  "mojibake: Ã©tÃ© Ã  Paris",
  "word " * 120,  # truncated: end-of-text kept as the last token
  "",
  "x",
]


@pytest.fixture(scope="module")
def images():
  return torch.from_numpy(np.random.RandomState(0).randn(2, 3, 224, 224).astype(np.float32))


def test_clip_tokenizer_ids_equal_openclip(monkeypatch):
  """OpenAI's vocabulary: our Rust encoder and our pure-Python one both give OpenCLIP's ids,
  on these captions and on the packaged sample of alt-text-like ones."""
  texts = CAPTIONS + tok_lib.sample_captions()
  fast = tok_lib.Tokenizer.from_file(tok_lib.resolve("clip"))
  monkeypatch.setenv("BT_TOKENIZER", "python")
  slow = tok_lib.Tokenizer.from_file(tok_lib.resolve("clip"))
  assert (fast.backend, slow.backend) == ("rust", "python")
  ref = open_clip.get_tokenizer("RN50")(texts).numpy()
  np.testing.assert_array_equal(fast.tokenize(texts, 77), ref)
  np.testing.assert_array_equal(slow.tokenize(texts, 77), ref)
  assert ref[7, -1] == 49407 and (ref[7] != 0).all()  # truncated with end-of-text last


@pytest.mark.parametrize("name", ["RN50", "RN101", "ViT-B-32", "ViT-B-16"])
def test_openclip_model_equals_ours_and_round_trips(name, images, tmp_path):
  ref = randomize(open_clip.create_model_and_transforms(name, pretrained=None)[0])
  sd = {k: v.clone() for k, v in ref.state_dict().items()}
  torch.save(sd, tmp_path / "ref.pt")
  summary = cc.convert("openclip", str(tmp_path / "ref.pt"), str(tmp_path / "ours"), model=name)
  assert summary["params"] == param_count(ref)
  model, tok, pre = restore(str(tmp_path / "ours"))
  assert pre.method == "clip" and pre.config.text.act == "gelu"  # create_model(name): nn.GELU

  tokens = tok.tokenize(CAPTIONS[:4], pre.config.text.context_length)
  with torch.no_grad():
    ri = ref.encode_image(images).numpy()
    rt = ref.encode_text(torch.from_numpy(tokens)).numpy()
    r_img, r_txt, r_scale = ref(images, torch.from_numpy(tokens))[:3]
    r_logits = (r_scale * r_img @ r_txt.T).numpy()
  oi = jax.jit(lambda m, x: m.encode_image(x)[0])(model, nhwc(images))
  ot = jax.jit(lambda m, t: m.encode_text(t))(model, jnp.asarray(tokens))
  assert rel_err(oi, ri) < TOL and rel_err(ot, rt) < TOL
  oi, ot = (np.asarray(a) / np.linalg.norm(a, axis=-1, keepdims=True) for a in (oi, ot))
  logits = float(np.exp(transfer.flatten(pre.params())["logit_scale"])) * oi @ ot.T
  assert rel_err(logits, r_logits) < TOL

  # Round trip: ours -> OpenCLIP state dict gives back the very tensors.
  cc.export_openclip(str(tmp_path / "ours"), str(tmp_path / "back.pt"))
  back = torch.load(tmp_path / "back.pt")
  assert set(back) == set(sd)
  for k, v in sd.items():
    assert torch.equal(back[k], v), k


def test_openai_torchscript_archives_convert_like_state_dicts(tmp_path):
  """OpenAI distributes CLIP as TorchScript archives: read through torch.jit, same tensors."""
  cfg = dict(
    embed_dim=64,
    quick_gelu=True,
    vision_cfg=dict(layers=2, width=128, patch_size=8, image_size=32),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
  )
  ref = randomize(open_clip.CLIP(**cfg))
  tokens = open_clip.get_tokenizer("RN50")(["a cat"])
  traced = torch.jit.trace(
    ref, (torch.zeros(1, 3, 32, 32), tokens), strict=False, check_trace=False
  )
  traced.save(str(tmp_path / "openai.pt"))
  torch.save(ref.state_dict(), tmp_path / "sd.pt")
  a = cc.convert(
    "openclip", str(tmp_path / "openai.pt"), str(tmp_path / "a"), model=None, act="quick_gelu"
  )
  b = cc.convert("openclip", str(tmp_path / "sd.pt"), str(tmp_path / "b"), act="quick_gelu")
  assert a["model"] == b["model"] == "vit_b8"  # width 128: an off-grid ViT, dims spelled out
  assert a["model_kwargs"]["width"] == 128 and a["model_kwargs"]["act"] == "quick_gelu"
  ta, tb = (transfer.flatten(transfer.load_pretrained(str(tmp_path / d)).params()) for d in "ab")
  assert set(ta) == set(tb)
  for k in ta:
    np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)
  model, tok, pre = restore(str(tmp_path / "a"))
  x = torch.from_numpy(np.random.RandomState(2).randn(2, 3, 32, 32).astype(np.float32))
  with torch.no_grad():
    ri = ref.encode_image(x).numpy()
  oi = jax.jit(lambda m, a: m.encode_image(a)[0])(model, nhwc(x))
  assert rel_err(oi, ri) < TOL


@pytest.mark.parametrize(
  "name", ["resnet50", "resnetv2_50x1_bit", "vit_base_patch16_224", "vit_base_patch32_224"]
)
def test_timm_model_equals_ours(name, images, tmp_path):
  from safetensors.torch import save_file

  ref = randomize(timm.create_model(name, pretrained=False))
  save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "m.safetensors")
  summary = cc.convert("timm", str(tmp_path / "m.safetensors"), str(tmp_path / "ours"), model=name)
  assert summary["params"] == param_count(ref)
  model, _, _ = restore(str(tmp_path / "ours"))
  with torch.no_grad():
    r_feat = ref.forward_head(ref.forward_features(images), pre_logits=True).numpy()
    r_logits = ref(images).numpy()
  logits, out = jax.jit(lambda m, x: m(x))(model, nhwc(images))
  assert rel_err(out["pre_logits"], r_feat) < TOL and rel_err(logits, r_logits) < TOL


def test_bit_npz_we_write_is_read_by_timm_as_the_same_network(images, tmp_path):
  """Our BiT .npz layout is the one timm's BiT loader reads: the .npz of a random BiT, read by
  timm and by us, gives one network."""
  from timm.models.resnetv2 import _load_weights

  np.savez(
    tmp_path / "bit.npz", **interop.export(random_weights("bit_r50x1", 1000), interop.bit_rule)
  )
  ref = timm.create_model("resnetv2_50x1_bit", pretrained=False).eval()
  _load_weights(ref, str(tmp_path / "bit.npz"))
  cc.convert("bit", str(tmp_path / "bit.npz"), str(tmp_path / "ours"))
  model, _, _ = restore(str(tmp_path / "ours"))
  with torch.no_grad():
    r_logits = ref(images).numpy()
  logits, _ = jax.jit(lambda m, x: m(x))(model, nhwc(images))
  assert rel_err(logits, r_logits) < TOL


@pytest.mark.parametrize("layout", ["vit_jax", "bv"])
def test_big_vision_npz_we_read_is_the_network_timm_reads(layout, images, tmp_path):
  """A ViT .npz in the original vit_jax layout (position embeddings include the class token)
  and in big_vision's (patches only: timm's no_embed_class), read by timm's loader and by us:
  one network (timm's ViTs use exact GELU, hence --act=gelu)."""
  from timm.models.vision_transformer import _load_weights

  ours = random_weights("vit_s16", 1000)
  if layout == "bv":
    ours["pos_embed"][0] = 0
  prefix = "params/" if layout == "bv" else ""  # how each codebase saved them
  np.savez(
    tmp_path / "vit.npz",
    **{
      prefix + k: v
      for k, v in interop.export(ours, interop.big_vision_rule(layout, "tok", heads=6)).items()
    },
  )
  ref = timm.create_model(
    "vit_small_patch16_224",
    pretrained=False,
    **({"no_embed_class": True} if layout == "bv" else {}),
  ).eval()
  _load_weights(ref, str(tmp_path / "vit.npz"))
  cc.convert("big_vision", str(tmp_path / "vit.npz"), str(tmp_path / "ours"), act="gelu")
  model, _, _ = restore(str(tmp_path / "ours"))
  with torch.no_grad():
    r_logits = ref(images).numpy()
  logits, _ = jax.jit(lambda m, x: m(x))(model, nhwc(images))
  assert rel_err(logits, r_logits) < TOL


def test_a_clip_trained_here_exports_to_openclip(tmp_path):
  """A mini CLIP run (CLIP ResNet tower, a vocabulary learnt from its captions) exported as an
  OpenCLIP state dict: open_clip.CLIP(**cfg) loads it strictly and computes our features."""
  c = config_lib.load(f"{ROOT}/configs/mini/clip.py:model=clip_rn26,steps=2,batch=16,width=0.25")
  c.evals.zeroshot.data = c.evals.retrieval.data = ""
  c.tensorboard, c.checkpoint_every = False, 2
  train.run(c, str(tmp_path / "run"), devices=one_device())
  summary = cc.export_openclip(str(tmp_path / "run"), str(tmp_path / "exported.pt"))
  ref = open_clip.CLIP(**summary["config"]).eval()
  ref.load_state_dict(torch.load(tmp_path / "exported.pt"), strict=True)
  model, tok, pre = restore(str(tmp_path / "run"))
  x = torch.from_numpy(np.random.RandomState(1).randn(3, 3, 32, 32).astype(np.float32))
  tokens = tok.tokenize(["a handwritten 7", "the glyph q", "zero"], pre.config.text.context_length)
  with torch.no_grad():
    ri = ref.encode_image(x).numpy()
    rt = ref.encode_text(torch.from_numpy(tokens)).numpy()
  oi = jax.jit(lambda m, a: m.encode_image(a)[0])(model, nhwc(x))
  ot = jax.jit(lambda m, t: m.encode_text(t))(model, jnp.asarray(tokens))
  assert rel_err(oi, ri) < TOL and rel_err(ot, rt) < TOL
  shutil.rmtree(tmp_path / "run")
  assert os.path.exists(tmp_path / "exported.json")


# ----------------------------------------------------------------------------- timm export


def _mini_run(root, config, arg, **keys):
  c = config_lib.load(f"{ROOT}/configs/mini/{config}.py:{arg}")
  c.tensorboard, c.checkpoint_every, c.eval_data = False, c.total_steps, "none"
  with c.unlocked():
    override(c, **keys)
  workdir = str(root / f"{config}_{arg.split(',')[0].split('=')[-1]}")
  train.run(c, workdir, devices=one_device())
  return workdir


def timm_of(meta_path):
  """The exported model as a timm user builds it: from the .json beside the weights."""
  with open(meta_path) as f:
    meta = json.load(f)
  model = timm.create_model(
    meta["architecture"],
    pretrained=True,
    pretrained_cfg_overlay=meta["pretrained_cfg"],
    **meta["kwargs"],
  )
  return model.eval(), meta


@pytest.fixture(scope="module")
def supervised_resnet18(tmp_path_factory):
  """A mini supervised ResNet-18 at timm's width, trained 3 steps (BatchNorm statistics and
  head moved off their initial values)."""
  return _mini_run(
    tmp_path_factory.mktemp("sup"), "supervised", "model=resnet18,width=1.0,steps=3,batch=16"
  )


@pytest.mark.parametrize(
  "case", ["supervised_resnet18", "supervised_vit_gap", "simclr_resnet18", "clip_vit"]
)
def test_any_image_tower_exports_to_timm(case, supervised_resnet18, tmp_path):
  """A run of each method exported with --to=timm: timm.create_model(architecture,
  pretrained=True, pretrained_cfg_overlay=..., **kwargs) from the .json beside the weights
  loads it and computes our outputs (logits; the SimCLR backbone's features; the CLIP image
  embedding through the projection as the head); mean/std are the run's preprocessing."""
  if case == "supervised_resnet18":
    run = supervised_resnet18
  elif case == "supervised_vit_gap":
    run = _mini_run(
      tmp_path, "supervised", "model=vit_ti4,steps=2,batch=8", **{"model_kwargs.pool": "gap"}
    )
  elif case == "simclr_resnet18":
    run = _mini_run(tmp_path, "simclr", "model=resnet18,width=1.0,steps=2,batch=8")
  else:
    run = _mini_run(
      tmp_path,
      "clip",
      "model=vit_ti4,steps=2,batch=8",
      **{"evals.zeroshot.data": "", "evals.retrieval.data": ""},
    )
  out = tmp_path / "exported.safetensors"
  assert cc.main([run, "--to=timm", f"--out={out}"]) == 0
  ref, meta = timm_of(tmp_path / "exported.json")
  model, _, pre = restore(run)
  x = torch.from_numpy(np.random.RandomState(2).randn(3, 3, 32, 32).astype(np.float32))
  with torch.no_grad():
    r = ref(x).numpy()
  if case.startswith("supervised"):
    ours = jax.jit(lambda m, a: m(a)[0])(model, nhwc(x))
    assert meta["kwargs"]["num_classes"] == 10
  elif case.startswith("simclr"):
    ours = jax.jit(lambda m, a: m.backbone(a)[1]["pre_logits"])(model, nhwc(x))
    assert meta["kwargs"]["num_classes"] == 0
  else:
    ours = jax.jit(lambda m, a: m.encode_image(a)[0])(model, nhwc(x))
    assert meta["kwargs"]["num_classes"] == pre.config.clip.embed_dim
  assert r.shape == ours.shape and rel_err(ours, r) < TOL, case
  assert np.abs(np.asarray(ours)).max() > 0
  if case.startswith("supervised"):  # every weight went across, nothing added
    assert param_count(ref) == sum(v.size for v in transfer.flatten(pre.params()).values())
  assert meta["pretrained_cfg"]["mean"] == [0.5] * 3 and meta["pretrained_cfg"]["std"] == [0.5] * 3


def test_a_fine_tuned_classifier_exports_to_timm_and_scores_what_we_reported(
  supervised_resnet18, tmp_path
):
  """A fine-tuning run's sub-run exported with its head: timm's model, fed the test images
  through the run's own preprocessing, reaches the test accuracy the results row reports."""
  from big_transfer import finetune
  from big_transfer.data import ops, sources

  c = config_lib.load(
    f"{ROOT}/configs/mini/finetune.py:pretrained={supervised_resnet18},epochs=2,lrs=0.01,width=1.0"
  )
  c.tensorboard = False
  rows = finetune.run(c, str(tmp_path / "ft"), devices=one_device())
  sub = [d for d in os.listdir(tmp_path / "ft") if d.startswith("lr_")]
  assert len(sub) == 1
  out = tmp_path / "ft.safetensors"
  cc.export_timm(str(tmp_path / "ft" / sub[0]), str(out))
  ref, meta = timm_of(tmp_path / "ft.json")
  assert meta["architecture"] == "resnet18" and meta["kwargs"]["num_classes"] == 10
  test = sources.open_source("builtin:digits:test")
  pp = ops.parse(c.pp_eval)
  rng = np.random.default_rng(0)
  examples = [pp(dict(test[i]), rng) for i in range(len(test))]
  images = torch.from_numpy(
    np.stack([e["image"] for e in examples]).transpose(0, 3, 1, 2).astype(np.float32)
  )
  labels = np.array([e["label"] for e in examples])
  with torch.no_grad():
    predicted = ref(images).numpy().argmax(-1)
  acc = float((predicted == labels).mean())
  reported = rows[-1]["test_accuracy"]
  assert abs(acc - reported) <= 1.5 / len(labels), (acc, reported)
  assert len(set(predicted.tolist())) >= 3  # the head went across, not a constant


def test_the_openai_80_templates_are_openclips():
  from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

  from big_transfer.evaluators.zeroshot import TEMPLATES

  assert TEMPLATES["openai80"] == tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
  assert TEMPLATES["clip7"] == tuple(t("{}") for t in SIMPLE_IMAGENET_TEMPLATES)


@pytest.mark.parametrize("level", [0.0, 3.7, 9.0, 9.46])
def test_randaugment_ops_are_timms_rand_m9_mstd05_inc1_ops(level, monkeypatch):
  """Each of our RandAugment ops equals timm's (the authors ran timm 0.4.12; these op
  definitions are unchanged in the timm installed here) on a fixed image, at fixed levels and
  both directions, with ImageNet-mean fill and bicubic resampling as their create_transform
  set; the op list is timm's increasing set (Invert and SolarizeAdd in, no Identity)."""
  from PIL import Image
  from timm.data import auto_augment as aa

  from big_transfer.data import ops

  assert list(ops.TIMM_RA_OPS) == aa._RAND_INCREASING_TRANSFORMS
  img = Image.fromarray(np.random.default_rng(0).integers(40, 200, (37, 29, 3), dtype=np.uint8))
  hparams = {"translate_const": 100, "img_mean": ops.IMAGENET_FILL, "interpolation": Image.BICUBIC}
  for name in aa._RAND_INCREASING_TRANSFORMS:
    for sign in (1.0, -1.0):
      monkeypatch.setattr(aa, "_randomly_negate", lambda v, s=sign: v * s)
      theirs = aa.AugmentOp(name, prob=1.0, magnitude=level, hparams=hparams)(img)
      ours = ops.TIMM_RA_OPS[name](img, level, sign, ops.IMAGENET_FILL, Image.BICUBIC)
      np.testing.assert_array_equal(
        np.asarray(ours), np.asarray(theirs), err_msg=f"{name} level {level} sign {sign}"
      )
