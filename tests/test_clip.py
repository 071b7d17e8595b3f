"""CLIP, SigLIP and SLIP: tokenizer, text tower, global-batch losses across processes, the mini
run (falling loss, zero-shot above chance), webdataset training, exact resume."""

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from big_transfer import config_lib, train
from big_transfer.data import ops, tokenizer
from big_transfer.evaluators import retrieval, zeroshot
from big_transfer.logging import read_metrics
from big_transfer.models.text import TextTransformer
from conftest import ROOT, losses, one_device, override

CLIP_MINI = os.path.join(ROOT, "configs", "mini", "clip.py")
CAPTIONS = [
  "a photo of a dog",
  "A Photo of a Cat!",
  "two dogs and a cat",
  "a dog's toy",
  "photos of dogs &amp; cats",
  "the cat sat on the mat",
  "dogs dogs dogs",
]


# ------------------------------------------------------------------------------ tokenizer


def test_trained_bpe_is_deterministic_round_trips_and_saves(tmp_path):
  tok = tokenizer.train(CAPTIONS * 3, vocab_size=560)
  again = tokenizer.train(CAPTIONS * 3, vocab_size=560)
  assert tok.ranks == again.ranks and 514 < tok.vocab_size <= 560
  assert tok.eot_id == tok.vocab_size - 1 and tok.sot_id == tok.vocab_size - 2
  # Frequent words become single tokens; text decodes back (cleaned: lower case, unescaped).
  assert len(tok.encode("dogs")) == 1 and len(tok.encode("photo")) == 1
  assert tok.decode(tok.encode("Photos of  dogs &amp; cats")) == "photos of dogs & cats"
  # Unseen words and unicode fall back to bytes, losslessly.
  assert tok.decode(tok.encode("zebra über 東京")) == "zebra über 東京"
  path = str(tmp_path / "v.txt")
  tok.save(path)
  loaded = tokenizer.Tokenizer.from_file(path)
  assert loaded.vocab_size == tok.vocab_size
  np.testing.assert_array_equal(loaded.tokenize(CAPTIONS, 12), tok.tokenize(CAPTIONS, 12))


def real_looking_captions():
  """Alt-text-like captions (big_transfer/data/captions_sample.txt: URLs, prices, emoji, HTML
  entities, mojibake, ten scripts, fullwidth forms, ligatures, long words, literal special
  tokens) plus control characters and random printable ASCII."""
  lines = tokenizer.sample_captions()
  rng = np.random.RandomState(0)
  ascii_ = ["".join(chr(c) for c in rng.randint(32, 127, rng.randint(1, 60))) for _ in range(300)]
  return (
    lines
    + ascii_
    + [
      "\x1b[31mred\x1b[0m terminal text",
      "null\x00byte",
      "bell\x07",
      "line\u2028separator",
      "form\x0cfeed",
      "a\r\nb",
    ]
  )


def test_rust_encoder_gives_the_python_encoders_ids(monkeypatch):
  """The fast encoder (Hugging Face tokenizers, built from the same merges) and the pure-Python
  one give the same ids on real-looking captions, with a vocabulary learnt from them."""
  captions = real_looking_captions()
  tok = tokenizer.train(captions * 2, vocab_size=1200)
  assert tok.backend == "rust"
  for text in captions:
    assert tok.encode(text) == tok.encode_python(text), text
  monkeypatch.setenv("BT_TOKENIZER", "python")
  slow = tokenizer.Tokenizer(sorted(tok.ranks, key=tok.ranks.get))
  assert slow.backend == "python"
  np.testing.assert_array_equal(slow.tokenize(captions, 16), tok.tokenize(captions, 16))


def test_cleaning_skips_ftfy_only_where_it_cannot_change_the_text():
  import html

  import ftfy

  for text in real_looking_captions() + ["&amp;amp;amp;", "a &lt;b&gt;", "Caf\u00e9"]:
    full = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).strip().split()).lower()
    assert tokenizer.clean(text) == full, repr(text)


def test_tokenize_truncates_keeping_end_of_text_and_pads():
  tok = tokenizer.train(CAPTIONS, vocab_size=530)
  rows = tok.tokenize(["a dog", "the cat sat on the mat " * 10], context_length=8)
  assert rows.shape == (2, 8) and rows.dtype == np.int32
  short, long = rows
  n = len(tok.encode("a dog"))
  assert short[0] == tok.sot_id and short[n + 1] == tok.eot_id and (short[n + 2 :] == 0).all()
  assert long[0] == tok.sot_id and long[-1] == tok.eot_id and tok.eot_id not in long[:-1]


def test_tokenizer_command_learns_a_vocabulary_from_a_source(tmp_path, capsys):
  out = str(tmp_path / "glyphs_bpe.txt")
  tokenizer.main(["train", "builtin:glyphs?n=300", "--vocab_size=600", f"--out={out}"])
  assert "wrote" in capsys.readouterr().out
  tok = tokenizer.Tokenizer.from_file(out)
  assert len(tok.encode("handwritten")) == 1  # a caption word became one token
  tokenizer.main(["encode", out, "a handwritten 7", "--context_length=6"])
  ids = [int(x) for x in capsys.readouterr().out.split()]
  assert ids[0] == tok.sot_id and tok.eot_id in ids and len(ids) == 6
  with pytest.raises(SystemExit):
    tokenizer.main(["train", "builtin:digits", "--vocab_size=600", f"--out={out}"])
  assert "no captions" in capsys.readouterr().err


def test_clip_format_vocabulary_file_layout(tmp_path):
  # A CLIP-style merges file (gzip, '#version' header, more merges than the vocabulary uses).
  merges = ["d o", "do g</w>", "c a", "ca t</w>", "a </w>", "x y"]
  path = str(tmp_path / "bpe.txt.gz")
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
  tok = tokenizer.Tokenizer.from_file(path, vocab_size=512 + 4 + 2)  # uses 4 merges
  assert tok.vocab_size == 518 and tok.sot_id == 516 and tok.eot_id == 517
  # ids: 256 bytes, 256 bytes+</w>, then merges in order: 'do'=512, 'dog</w>'=513, ...
  assert tok.encode("dog cat") == [513, 515]
  assert tok.encode("a") == [256 + ord("a") - 33]  # 'a</w>' (bytes with </w> start at 256)
  with pytest.raises(ValueError, match="needs"):
    tokenizer.Tokenizer.from_file(path, vocab_size=600)
  with pytest.raises(FileNotFoundError, match="no such file"):
    tokenizer.Tokenizer.from_file(str(tmp_path / "missing.txt"))


def test_tokenize_op_is_bound_by_the_trainer_and_rejects_empty_captions(tmp_path):
  tok = tokenizer.train(CAPTIONS, vocab_size=530)
  path = str(tmp_path / "v.txt")
  tok.save(path)
  fn = ops.parse("tokenize", bind={"vocab": path, "max_len": 10})
  out = fn({"caption": "a dog", "image": 1}, np.random.default_rng(0))
  np.testing.assert_array_equal(out["text"], tok.tokenize("a dog", 10)[0])
  assert "caption" not in out and out["image"] == 1
  with pytest.raises(ValueError, match="empty"):
    fn({"caption": "  "}, np.random.default_rng(0))
  unbound = ops.parse("tokenize")
  with pytest.raises(ops.PreprocessError, match="config.text.tokenizer"):
    unbound({"caption": "a"}, np.random.default_rng(0))


# ------------------------------------------------------------------------------ text tower


def test_text_tower_is_causal_and_reads_the_end_of_text_token():
  m = TextTransformer(
    vocab_size=100,
    context_length=8,
    width=32,
    layers=2,
    heads=4,
    embed_dim=16,
    eot_id=99,
    rngs=nnx.Rngs(0),
  )
  t = jnp.array(
    [
      [98, 5, 6, 99, 0, 0, 0, 0],
      [98, 5, 6, 99, 7, 8, 9, 1],  # tokens after the end: invisible
      [98, 5, 7, 99, 0, 0, 0, 0],  # an earlier token changed: visible
      [98, 5, 6, 3, 99, 0, 0, 0],
    ]
  )  # a longer text: read at its own end
  y = np.asarray(m(t))
  np.testing.assert_allclose(y[0], y[1], atol=1e-6)
  assert np.abs(y[0] - y[2]).max() > 1e-3 and np.abs(y[0] - y[3]).max() > 1e-3


# ------------------------------------------------------------------------------ evaluators


def test_recall_at_k_against_brute_force():
  rng = np.random.default_rng(0)
  img, txt = rng.normal(size=(30, 5)), rng.normal(size=(30, 5))
  txt[:10] = img[:10] + 0.01 * rng.normal(size=(10, 5))  # the first 10 pairs match well
  got = retrieval.recall_at_k(img, txt)
  n = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  sim = n(img) @ n(txt).T
  for k in (1, 5, 10):
    i2t = np.mean([i in np.argsort(-sim[i])[:k] for i in range(30)])
    t2i = np.mean([i in np.argsort(-sim[:, i])[:k] for i in range(30)])
    assert got[f"image_to_text_r{k}"] == pytest.approx(i2t)
    assert got[f"text_to_image_r{k}"] == pytest.approx(t2i)
  assert got["image_to_text_r1"] >= 1 / 3


def test_zeroshot_templates():
  assert zeroshot.templates_of("simple") == ("a photo of a {}.",)
  assert zeroshot.templates_of("a {};the {} photo") == ("a {}", "the {} photo")
  with pytest.raises(ValueError, match="exactly one"):
    zeroshot.templates_of("no placeholder")


# ------------------------------------------------------------------------------ losses


def test_global_batch_losses_and_gradients_are_the_same_across_two_processes(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  import mp_loss

  w, x1, x2 = mp_loss.data()
  cmd = [
    os.path.join(ROOT, "launch", "local.sh"),
    "2",
    "2",
    "--",
    sys.executable,
    os.path.join(ROOT, "tests", "mp_loss.py"),
    str(tmp_path),
  ]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-3000:]
  got = json.load(open(tmp_path / "losses.json"))
  assert got["processes"] == 2 and got["devices"] == 4
  for name, fn in mp_loss.loss_fns().items():
    ref_loss, ref_grad = jax.value_and_grad(fn)(w, x1, x2)  # one device, the whole batch
    np.testing.assert_allclose(got[name]["loss"], ref_loss, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(got[name]["grad"], ref_grad, rtol=1e-4, atol=1e-6, err_msg=name)


# ------------------------------------------------------------------------------ training


def clip_config(arg="steps=6,batch=32,width=0.125", **overrides):
  c = config_lib.load(f"{CLIP_MINI}:{arg}")
  c.log_every = 1
  c.tensorboard = False
  c.optimizer.warmup_steps = 0
  c.evals.retrieval.data = ""
  return override(c, **overrides)


@pytest.mark.slow  # ~35 s: a learning-quality check (CLIP's mechanics: the default set)
def test_mini_clip_learns_and_zero_shot_rises_above_chance(tmp_path):
  wd = str(tmp_path)
  c = clip_config(
    "steps=150,batch=64",
    log_every=10,
    eval_every=150,
    checkpoint_every=150,
    **{
      "optimizer.warmup_steps": 10,
      "evals.retrieval.data": "builtin:glyphs?n=6000",
      "evals.retrieval.max_examples": 200,
    },
  )
  train.run(c, wd, devices=one_device())
  ls = losses(wd)
  assert ls[-1] < 0.85 * ls[0], ls
  rows = read_metrics(wd)
  zs = [r["zeroshot/digits/accuracy"] for r in rows if "zeroshot/digits/accuracy" in r]
  assert zs[-1] > 0.2, zs  # ten classes of real handwritten digits: chance is 0.1
  r10 = [
    r["retrieval/glyphs/image_to_text_r10"]
    for r in rows
    if "retrieval/glyphs/image_to_text_r10" in r
  ]
  assert r10[-1] > 0.1  # 200 candidates: chance is 0.05
  assert open(os.path.join(wd, "tokenizer_bpe.txt")).readline().startswith("#version")
  scales = [r["train/logit_scale"] for r in rows if "train/logit_scale" in r]
  assert scales[0] == pytest.approx(1 / 0.07, rel=0.05)


@pytest.mark.slow  # ~30 s: two more model variants (the losses are tested by default)
def test_siglip_and_slip_train(tmp_path):
  c = clip_config(
    "steps=3,batch=16,width=0.125,loss=sigmoid,method=slip", **{"evals.zeroshot.data": ""}
  )
  state = train.run(c, str(tmp_path), devices=one_device())
  rows = [r for r in read_metrics(str(tmp_path)) if "train/loss" in r]
  assert all(np.isfinite(r["train/loss"]) for r in rows)
  assert {"train/clip_loss", "train/ssl_loss", "train/logit_scale"} <= set(rows[0])
  assert rows[0]["train/logit_scale"] == pytest.approx(10.0, rel=0.05)  # SigLIP's init
  assert "logit_bias" in state.params and "ssl_projection" in state.params


def _jpeg(rng, size=20):
  from PIL import Image

  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
  return buf.getvalue()


def test_clip_trains_on_a_converted_webdataset_and_resumes_exactly(tmp_path):
  from big_transfer.data import convert

  rng = np.random.default_rng(0)
  shards = tmp_path / "shards"
  shards.mkdir()
  with tarfile.open(shards / "00000.tar", "w") as tar:
    for i in range(40):
      for ext, data in (("jpg", _jpeg(rng)), ("txt", f"a photo of thing {i % 7}".encode())):
        info = tarfile.TarInfo(f"{i:05d}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  dst = tmp_path / "converted"
  convert.main(["webdataset", str(shards), str(dst), "--workers=1"])
  kw = {
    "evals.zeroshot.data": "",
    "data": f"arrayrecord:{dst}",
    "batch_size": 16,
    "total_steps": 4,
    "checkpoint_every": 2,
    "keep_checkpoints": 5,
    "text.tokenizer": "train:600",
    "pp_train": "decode|resize(32)|value_range(-1, 1)|tokenize",
  }
  ref_wd, wd = str(tmp_path / "ref"), str(tmp_path / "run")
  ref = train.run(clip_config(**kw), ref_wd, devices=one_device())
  assert len(losses(ref_wd)) == 4
  tok = tokenizer.Tokenizer.from_file(os.path.join(ref_wd, "tokenizer_bpe.txt"))
  assert len(tok.encode("thing")) == 1  # learnt from the shards' captions

  # Exact resume: a second run, its last checkpoint removed (as if stopped after step 2),
  # resumed, ends bitwise equal to the uninterrupted one.
  train.run(clip_config(**kw), wd, devices=one_device())
  shutil.rmtree(os.path.join(wd, "checkpoints", "4"))
  state = train.run(clip_config(**kw), wd, devices=one_device())
  for a, b in zip(jax.tree.leaves(jax.device_get(ref)), jax.tree.leaves(jax.device_get(state))):
    np.testing.assert_array_equal(a, b)


def test_clip_without_tokenizer_is_a_config_error(tmp_path):
  c = clip_config(**{"text.tokenizer": ""})
  with pytest.raises(config_lib.ConfigError, match="config.text.tokenizer"):
    train.run(c, str(tmp_path), devices=one_device())


def test_paper_pretraining_configs_carry_the_published_settings():
  clip = config_lib.load(
    os.path.join(ROOT, "configs/pretrain/clip.py") + ":data=arrayrecord:/data/laion,size=2.7M"
  )
  assert clip.data == "arrayrecord:/data/laion?size=2.7M" and clip.model == "clip_rn50"
  assert (
    clip.batch_size,
    clip.total_epochs,
    clip.optimizer.lr,
    clip.optimizer.weight_decay,
    clip.optimizer.b2,
    clip.optimizer.warmup_steps,
  ) == (1024, 16, 1e-3, 0.1, 0.999, 5000)
  assert (
    clip.text.width,
    clip.text.layers,
    clip.text.heads,
    clip.text.context_length,
    clip.clip.embed_dim,
  ) == (512, 12, 8, 77, 1024)
  assert clip.clip.logit_scale_init == pytest.approx(1 / 0.07) and clip.clip.logit_scale_max == 100
  simclr = config_lib.load(os.path.join(ROOT, "configs/pretrain/simclr.py") + ":size=2.7M")
  assert (
    simclr.batch_size,
    simclr.total_epochs,
    simclr.optimizer.b2,
    simclr.optimizer.warmup_epochs,
    simclr.temperature,
  ) == (1024, 16, 0.98, 2, 0.1)
  assert tuple(simclr.projection_dims) == (4096, 4096, 256)
  for c in (clip, simclr):
    ops.parse(c.pp_train, bind={"vocab": None, "max_len": 77})


def test_clip_vocabulary_comes_from_open_clip_or_a_clear_message():
  path = tokenizer.packaged_clip_vocab()
  if path is None:
    with pytest.raises(FileNotFoundError, match="pip install open_clip_torch"):
      tokenizer.resolve("clip")
  else:  # the real vocabulary: CLIP's known ids
    tok = tokenizer.load(tokenizer.resolve("clip"))
    assert tok.vocab_size == 49408
    assert tok.tokenize("a diagram", 5)[0].tolist() == [49406, 320, 22697, 49407, 0]


def test_a_learnt_vocabulary_smaller_than_asked_says_why(tmp_path, capsys):
  from big_transfer import config_lib, train
  from big_transfer.data import sources

  c = config_lib.load(os.path.join(ROOT, "configs/mini/clip.py") + ":steps=1,batch=8")
  c.unlock()
  c.text.tokenizer = "train:5000"
  src = sources.open_source("builtin:glyphs?n=200")
  path = train.resolve_tokenizer(c, str(tmp_path), src)
  out = capsys.readouterr().out + capsys.readouterr().err
  line = [l for l in out.splitlines() if "tokens learnt" in l][-1]
  assert "(5000 asked: no other pair of symbols occurs twice in these captions)" in line, line
  assert os.path.exists(path)
