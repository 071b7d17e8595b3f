r"""Benchmarks, one JSON object per line.

  python -m big_transfer.bench --what=pipeline [--images=300 --height=375 --width=500]
  python -m big_transfer.bench --what=loader --workers=0,1,2 --batch_size=64 --seconds=10
  python -m big_transfer.bench --what=tokenizer --seconds=5
  python -m big_transfer.bench --what=study --workers=2 [--study_config=configs/mini/study.py]
  python -m big_transfer.bench --what=study --workers=1 --baseline=../before   # git worktree
  python -m big_transfer.bench --what=fuse [--steps=40]

``loader``: the training loader at each worker count (images/s), beside the same op chain on
one core in the same run, and their ratio per worker (``scaling_efficiency``).

``study``: a study's transfer stage from the same pre-trained arms, sequentially (one process),
with ``--baseline`` by an earlier checkout's code beside it (compared cell by cell), and as
``--workers`` worker processes at once, with the ratios, compilations, the start-up and compile
share, and whether the tables agree.

``fuse``: a fine-tuning grid's points trained one by one against as one fused (vmapped)
program, on the same batches: step time per point, and the largest difference of their losses.

``tokenizer``: captions/s on one core of the ``tokenize`` op's work, the pure-Python BPE
against the Rust one (Hugging Face ``tokenizers``) in the same run.

``pipeline``: single-core images/s of the input chain against the raw JPEG decode rate of
libjpeg-turbo (simplejpeg) on the same images in the same run: raw decode, PIL decode, the
study's training chain ``decode|inception_crop(224)|flip_lr|normalize('imagenet')`` as written
(fused: reduced-DCT decode of the crop) and with fusion off (full decode, then crop), and the
eval chain ``decode|resize_small(256)|central_crop(224)|normalize('imagenet')``. Ratios are
against the raw decode measured in the same process.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import types
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import simplejpeg
from absl import logging as absl_logging
from PIL import Image, ImageDraw, ImageFilter

from big_transfer import checkpoint as ckpt_lib
from big_transfer import cli, config_lib, methods, optim, sharding, train
from big_transfer import logging as log_lib
from big_transfer import trainer as trainer_lib
from big_transfer.app import UserError
from big_transfer.data import ops, pipeline, tokenizer
from big_transfer.workdir import Workdir


def synthetic_jpegs(
  n: int, height: int, width: int, seed: int = 0, quality: int = 90
) -> list[bytes]:
  """Photo-like JPEGs (smooth gradients, shapes, mild noise): realistic entropy per pixel."""
  rng = np.random.default_rng(seed)
  out = []
  yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
  for _ in range(n):
    base = np.stack(
      [
        np.sin(xx * rng.uniform(2, 9) + rng.uniform(0, 6)) * np.cos(yy * rng.uniform(2, 9))
        for _ in range(3)
      ],
      -1,
    )
    img = ((base * 0.5 + 0.5) * 200 + rng.normal(0, 8, (height, width, 3))).clip(0, 255)
    im = Image.fromarray(img.astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(12):
      x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
      x1, y1 = x0 + rng.uniform(10, width / 2), y0 + rng.uniform(10, height / 2)
      d.ellipse((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    im = im.filter(ImageFilter.GaussianBlur(0.8))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    out.append(buf.getvalue())
  return out


def _rates(cases: dict, items, seconds: float) -> dict[str, float]:
  """Items/s per case. Cases are interleaved (one pass over ``items`` each, round after round,
  for about ``seconds`` per case) and each case reports its median round: a shared, noisy
  machine then slows every case alike instead of whichever ran during the noise."""
  for fn in cases.values():
    fn(items[0])  # warm-up
  per_case = {k: [] for k in cases}
  spent = {k: 0.0 for k in cases}
  while min(spent.values()) < seconds or min(len(v) for v in per_case.values()) < 3:
    for name, fn in cases.items():
      t0 = time.perf_counter()
      for x in items:
        fn(x)
      dt = time.perf_counter() - t0
      spent[name] += dt
      per_case[name].append(len(items) / dt)
  return {k: float(np.median(v)) for k, v in per_case.items()}


def device_description() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return f"{cpu}, {os.cpu_count()} cores"


def bench_pipeline(images: int, height: int, width: int, seconds: float) -> list[dict]:

  data = synthetic_jpegs(images, height, width)
  rng = np.random.default_rng(0)
  train_pp = "decode|inception_crop(224)|flip_lr|normalize('imagenet')"
  eval_pp = "decode|resize_small(256)|central_crop(224)|normalize('imagenet')"
  paper_eval = "decode|resize_small(256, method='bicubic')|central_crop(224)|normalize('imagenet')"

  def opencv(pp):  # what antialiasing (the default: PIL's resampling) costs
    return (
      pp.replace("(224)|flip", "(224, antialias=False)|flip")
      .replace("(256)", "(256, antialias=False)")
      .replace("'bicubic')", "'bicubic', antialias=False)")
    )

  chains = {
    "train_chain_fused": ops.parse(train_pp),
    "train_chain_unfused": ops.parse(train_pp, fuse=False),
    "train_chain_fused_opencv": ops.parse(opencv(train_pp)),
    "eval_chain_fused": ops.parse(eval_pp),
    "eval_chain_fused_opencv": ops.parse(opencv(eval_pp)),
    "eval_chain_bicubic": ops.parse(paper_eval),
    "eval_chain_bicubic_opencv": ops.parse(opencv(paper_eval)),
  }
  cases = {
    "raw_decode_simplejpeg": lambda d: simplejpeg.decode_jpeg(d),
    "raw_decode_pil": lambda d: np.asarray(Image.open(io.BytesIO(d)).convert("RGB")),
    **{name: (lambda d, op=op: op({"image": d}, rng)) for name, op in chains.items()},
  }
  rates = _rates(cases, data, seconds)
  raw = rates["raw_decode_simplejpeg"]
  rows = []
  for name, r in rates.items():
    rows.append(
      {
        "bench": "pipeline",
        "case": name,
        "images_per_sec_per_core": round(r, 1),
        "ratio_to_raw_decode": round(r / raw, 3),
        "image_size": f"{width}x{height}",
        "images": images,
        "device": device_description(),
      }
    )
  return rows


# ----------------------------------------------------------------------------- loader

STUDY_TRAIN_PP = "decode|inception_crop(224)|flip_lr|normalize('imagenet')"


class JpegSource:
  """``n`` stream records cycling over a few distinct JPEGs (picklable: loader workers)."""

  def __init__(self, jpegs: list[bytes], n: int):
    self.jpegs, self.n = list(jpegs), n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"image": self.jpegs[i % len(self.jpegs)], "label": i % 10}


def bench_loader(
  workers: list[int],
  batch_size: int,
  seconds: float,
  images: int,
  height: int,
  width: int,
  pp: str = STUDY_TRAIN_PP,
) -> list[dict]:
  """The training loader (``pipeline.train_dataset``) at each worker count, beside the same op
  chain on one core in this process, measured in the same run: ``scaling_efficiency`` =
  images/s / (max(workers, 1) x chain images/s per core). The chain is the loader's host part:
  its trailing normalisation runs on the device (``normalize_on_device``)."""
  host_pp, _ = ops.split_device_affine(pp)
  source = JpegSource(synthetic_jpegs(images, height, width), 1_000_000)
  builder = pipeline._Builder(source, host_pp, 0, ("image", "label"), None, shuffle=True, threads=1)
  builder.example(0)  # warm-up
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    builder.example(n)
    n += 1
  per_core = n / (time.perf_counter() - t0)
  rows = []
  for w in workers:
    loader = pipeline.train_dataset(
      source,
      pp=host_pp,
      batch_size=batch_size,
      seed=0,
      keys=("image", "label"),
      workers=w,
      threads=1,
      prefetch=2,
    )
    try:
      for _ in range(2 if w == 0 else max(2, w + 1)):  # workers started, queues primed
        next(loader)
      n, t0 = 0, time.perf_counter()
      while time.perf_counter() - t0 < seconds or n < 2:
        batch = next(loader)
        n += 1
      rate = n * batch_size / (time.perf_counter() - t0)
    finally:
      loader.close()
    rows.append(
      {
        "bench": "loader",
        "workers": w,
        "batch_size": batch_size,
        "images_per_sec": round(rate, 1),
        "chain_images_per_sec_per_core": round(per_core, 1),
        "scaling_efficiency": round(rate / (max(w, 1) * per_core), 3),
        "output": f"{batch['image'].dtype}{list(batch['image'].shape[1:])}",
        "chain": host_pp,
        "image_size": f"{width}x{height}",
        "cpu_count": os.cpu_count(),
        "device": device_description(),
      }
    )
  return rows


# ----------------------------------------------------------------------------- tokenizer


def _zipf_captions(n: int, rng) -> list[str]:
  """ASCII captions whose words follow Zipf's law over ~100k made-up words (web alt-text has a
  long tail: a word cache does not cover it)."""
  syllables = (
    "ka lo mi tra vel son ber gu xi pho to graph ing ed er ly tion pre un re sta "
    "ble ment ness ous ive ist dog cat sun set"
  ).split()
  words = sorted({"".join(rng.choice(syllables, rng.integers(1, 5))) for _ in range(300_000)})
  p = 1.0 / np.arange(1, len(words) + 1)
  p /= p.sum()
  words = np.array(words)
  return [" ".join(words[rng.choice(len(words), rng.integers(4, 24), p=p)]) for _ in range(n)]


def bench_tokenizer(seconds: float, captions: int = 50_000, context_length: int = 77) -> list[dict]:
  """Captions/s on one core of the ``tokenize`` op's work (clean + BPE + pad), pure Python
  against the Rust encoder, measured in the same run, on two corpora: ``zipf_ascii`` (ASCII
  words drawn by Zipf's law from ~100k made-up words: a long tail, as in web alt-text) and
  ``sample_mixed`` (captions recombined from the words of the packaged sample: many scripts,
  so most need ftfy, and few distinct words, so a word cache always hits). CLIP's vocabulary
  when open_clip_torch is installed, else one learnt from the sample."""
  rng = np.random.default_rng(0)
  words = " ".join(tokenizer.sample_captions()).split()
  corpora = {
    "zipf_ascii": _zipf_captions(captions, rng),
    "sample_mixed": [" ".join(rng.choice(words, rng.integers(4, 24))) for _ in range(captions)],
  }
  path = tokenizer.packaged_clip_vocab()
  ref = (
    tokenizer.Tokenizer.from_file(path)
    if path
    else tokenizer.train(tokenizer.sample_captions() * 4, vocab_size=2048)
  )
  merges = sorted(ref.ranks, key=ref.ranks.get)
  rows = []
  for corpus, texts in corpora.items():
    rates = {}
    for backend in ("python", "rust"):
      try:
        tok = tokenizer.Tokenizer(merges, backend=backend)  # a cold word cache for each
      except ImportError:
        rows.append({"bench": "tokenizer", "backend": backend, "error": "tokenizers not installed"})
        continue
      n, t0 = 0, time.perf_counter()  # one pass at most: a caption never repeats
      while time.perf_counter() - t0 < seconds and n < len(texts):
        tok.tokenize(texts[n], context_length)
        n += 1
      rates[backend] = n / (time.perf_counter() - t0)
      rows.append(
        {
          "bench": "tokenizer",
          "corpus": corpus,
          "backend": backend,
          "captions_per_sec_per_core": round(rates[backend], 1),
          "needs_ftfy": round(float(np.mean([tokenizer._needs_ftfy(t) for t in texts[:2000]])), 3),
          "vocab": "clip" if path else "learnt(2048)",
          "context_length": context_length,
          "device": device_description(),
        }
      )
    if len(rates) == 2:
      rows[-1]["speedup_over_python"] = round(rates["rust"] / rates["python"], 2)
  return rows


# ----------------------------------------------------------------------------- model


class SyntheticSource:
  """``n`` random images at ``resolution`` (uint8 arrays, or JPEGs for the real decode chain),
  labels and captions: the training data of a benchmark."""

  def __init__(self, n: int, resolution: int, num_classes: int, jpeg: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    self.num_classes = num_classes
    self.class_names = [f"class {i}" for i in range(num_classes)]
    if jpeg:
      side = max(resolution * 3 // 2, 32)
      self.images = synthetic_jpegs(min(n, 64), side, side * 4 // 3, seed=seed)
    else:
      self.images = [
        rng.integers(0, 256, (resolution, resolution, 3), np.uint8) for _ in range(min(n, 64))
      ]
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    c = i % self.num_classes
    return {
      "image": self.images[i % len(self.images)],
      "label": c,
      "caption": f"a photo of a {self.class_names[c]}, number {i}",
    }


TIMM_REFERENCE = (
  (r"resnet(\d+)", lambda m: f"resnet{m[1]}"),
  (r"bit_r(\d+)x(\d+)", lambda m: f"resnetv2_{m[1]}x{m[2]}_bit"),
  (
    r"vit_(ti|s|b|l)(\d+)",
    lambda m: "vit_{}_patch{}_224".format(
      dict(ti="tiny", s="small", b="base", l="large")[m[1]], m[2]
    ),
  ),
)


def bench_config(
  model: str,
  method: str,
  batch_size: int,
  resolution: int,
  steps: int,
  dtype: str,
  data: str,
  model_kwargs: dict | None = None,
):
  c = config_lib.base_config()
  c.method, c.model, c.batch_size, c.dtype = method, model, batch_size, dtype
  c.model_kwargs.update(model_kwargs or {})
  c.total_steps = steps + 1  # the loop's first step compiles; its rate counts the rest
  if model.startswith(("vit_", "clip_")):
    c.model_kwargs.image_size = resolution
  c.num_classes = 1000
  c.eval_data = "none"
  c.log_every = steps + 1
  c.checkpoint_every = 10**9
  c.tensorboard = False
  c.data_threads = max(2, os.cpu_count() or 2)
  # The method says how one image chain becomes its batch and which optimiser it trains with.
  cls = methods.method_class(method)
  view = (
    f"inception_crop({resolution})|flip_lr|normalize('imagenet')"
    if data == "pipeline"
    else "value_range(-1, 1)"
  )  # ready-made arrays: the loop's own cost, not decoding
  c.pp_train = cls.training_pp("decode", view)
  c.optimizer.update(**cls.bench_optimizer)
  if cls.traits.text_tower:
    c.clip.embed_dim = 1024 if model.startswith("clip_rn") else 512
  return c


def _tokenizer(c, source):
  if not methods.has_text_tower(c.method):
    return None
  try:
    c.text.tokenizer = tokenizer.resolve("clip")
  except Exception:  # noqa: BLE001  (no open_clip_torch: a vocabulary learnt from the captions)
    path = os.path.join(tempfile.mkdtemp(prefix="bt_bench_"), "bpe.txt")
    tokenizer.train([source[i]["caption"] for i in range(200)], 1000).save(path)
    c.text.tokenizer = path
  return tokenizer.load(c.text.tokenizer)


def peak_matmul_flops(dtype: str) -> float:
  """The device's measured matmul rate (FLOP/s): a large square matmul, best of several."""
  on_cpu = jax.default_backend() == "cpu"
  n = 2048 if on_cpu else 8192
  dt = jnp.float32 if (dtype == "float32" or on_cpu) else jnp.bfloat16
  a = jnp.ones((n, n), dt)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(5 if on_cpu else 20):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best


def _sig(x: float, digits: int = 4) -> float:
  return float(f"{x:.{digits}g}")


def _cost_flops(program) -> float | None:
  """The "flops" of XLA's cost analysis of a lowered or compiled program (None: unavailable)."""
  try:
    cost = program.cost_analysis()
  except Exception:  # noqa: BLE001
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0)) or None


def _train_setup(
  model: str,
  batch_size: int,
  resolution: int,
  steps: int,
  method: str,
  dtype: str,
  data: str,
  model_kwargs: dict | None,
):
  """Everything bench_model times, built as train.run builds it (the loop's own step, with
  the chain's normalisation on the device): a namespace."""

  c = bench_config(model, method, batch_size, resolution, steps, dtype, data, model_kwargs)
  source = SyntheticSource(
    max(4096, batch_size * (steps + 8)), resolution, c.num_classes, jpeg=data == "pipeline"
  )
  tok = _tokenizer(c, source)
  bind = {"vocab": c.text.tokenizer, "max_len": c.text.context_length} if tok else None
  meth = methods.get(
    method, c, {"num_classes": c.num_classes, "class_names": source.class_names, "tokenizer": tok}
  )
  mesh = sharding.make_mesh(-1, 1)
  pp_host, affines = ops.split_device_affine(c.pp_train)
  trainer = trainer_lib.Trainer(
    meth,
    optimizer=optim.structure(c.optimizer),
    mesh=mesh,
    input_affine=affines,
    param_rules=c.param_sharding,
    param_min_size=c.param_sharding_min_size,
  )
  return types.SimpleNamespace(
    c=c,
    source=source,
    tok=tok,
    bind=bind,
    meth=meth,
    mesh=mesh,
    trainer=trainer,
    abstract=trainer.abstract,
    step_fn=trainer.step,
    values=trainer_lib.run_values(c.optimizer, c.total_steps, 0),
    pp_host=pp_host,
  )


def abstract_batch(t, batch_size: int) -> dict:
  """The global batch's shapes and shardings, from one example through the loop's chain."""
  n_dev = t.mesh.devices.size
  it = pipeline.train_dataset(
    t.source, pp=t.pp_host, batch_size=n_dev, seed=0, keys=t.meth.batch_keys, threads=1, bind=t.bind
  )
  one = next(it)
  it.close()
  sh = sharding.batch_sharding(t.mesh)
  return {
    k: jax.ShapeDtypeStruct((batch_size, *v.shape[1:]), v.dtype, sharding=sh)
    for k, v in one.items()
  }


def available_memory() -> tuple[float | None, str]:
  """(bytes one device can hold, where that number comes from): the accelerator's allocator
  limit, else (CPU) the host's available memory."""
  device = jax.local_devices()[0]
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001  some backends have none
    stats = None
  if stats and stats.get("bytes_limit"):
    return float(
      stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    ), f"{device.device_kind} memory limit"
  try:
    with open("/proc/meminfo") as f:
      info = dict(line.split(":", 1) for line in f)
    return float(info["MemAvailable"].split()[0]) * 1024, "host memory available (CPU)"
  except (OSError, KeyError, ValueError):
    return None, "unknown"


def step_memory(compiled) -> dict | None:
  """XLA's memory analysis of a compiled step (bytes per device): arguments, outputs,
  temporaries, the donated part, and what it needs in all."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001
    return None
  if m is None:
    return None
  get = lambda k: float(getattr(m, k, 0) or 0)
  args, out, temp, alias = (
    get("argument_size_in_bytes"),
    get("output_size_in_bytes"),
    get("temp_size_in_bytes"),
    get("alias_size_in_bytes"),
  )
  return {
    "arguments": args,
    "outputs": out,
    "temporaries": temp,
    "donated": alias,
    "needed": args + out + temp - alias,
  }


def check_fits(
  memory: dict | None, batch_size: int, model: str, resolution: int, headroom: float = 0.9
) -> None:
  """One UserError line when the step needs more memory than the device has."""
  have, where = available_memory()
  if memory is None or have is None or memory["needed"] <= headroom * have:
    return
  gb = lambda b: f"{b / 2**30:.1f} GB"
  fits = max(1, int(batch_size * headroom * have / memory["needed"]))
  raise UserError(
    f"bench: the {model} step at batch {batch_size}, {resolution}px needs {gb(memory['needed'])}"
    f" per device (XLA's memory analysis: {gb(memory['arguments'])} arguments, "
    f"{gb(memory['temporaries'])} temporaries) and the device has {gb(have)} ({where}); a "
    f"batch of about {fits} would fit — or run it on an accelerator (launch/gpu_bench.sh)"
  )


def lowered_flops(lowered) -> float | None:
  """FLOPs of a jitted program counted on its lowered (not yet optimised) form: the same count
  on every backend. XLA's cost analysis of the *compiled* program misses what a GPU backend
  hands to cuDNN / cuBLAS custom calls (convolutions, matmuls): 10-30x too low there."""
  return _cost_flops(lowered)


def train_step_flops(
  model: str,
  batch_size: int = 2,
  resolution: int = 224,
  method: str = "supervised",
  model_kwargs: dict | None = None,
) -> float:
  """FLOPs of one training step of ``model`` (multiply and add counted apart), from shapes
  only: nothing is allocated or compiled."""
  t = _train_setup(model, batch_size, resolution, 1, method, "float32", "synthetic", model_kwargs)
  example = pipeline._Builder(t.source, t.pp_host, 0, t.meth.batch_keys, t.bind, True, 1).example(0)
  batch = {
    k: jax.ShapeDtypeStruct((batch_size, *np.shape(v)), np.asarray(v).dtype)
    for k, v in example.items()
  }
  return lowered_flops(t.step_fn.lower(t.abstract, batch, t.values))


# Trace events that are the runtime's own bookkeeping, not the program's operations.
_RUNTIME_EVENT = re.compile(r"^\$|Thunk|PjRt|Pjit|ThreadPool|^end: |^Execute|^ProcessInput")


def _hlo_op_classes(hlo_text: str) -> dict[str, str]:
  """Compiled HLO instruction name -> what it computes: ``convolution`` / ``matmul`` (a fusion
  or custom call holding one), ``layout copy`` (transposes and copies: data moved, not
  computed), else ``elementwise/reduction``."""
  lines = hlo_text.splitlines()
  bodies: dict[str, list[str]] = {}
  body: list[str] | None = None
  for line in lines:
    m = re.match(r"^(?:ENTRY )?%(\S+) .*\{\s*$", line)
    if m:
      body = bodies[m.group(1)] = []
    elif body is not None:
      body.append(line)
  classes = {}
  for line in lines:
    m = re.match(r"\s*(?:ROOT )?%(\S+) = .*? (\w[\w-]*)\(", line)
    if not m:
      continue
    op_name, opcode = m.groups()
    called = re.search(r"calls=%([\w.-]+)", line)
    text = "\n".join([line, *(bodies.get(called.group(1), []) if called else [])])
    if " convolution(" in text or "conv" in opcode or "__cudnn$conv" in text:
      kind = "convolution"
    elif " dot(" in text or "gemm" in text or "matmul" in text:
      kind = "matmul"
    elif re.search(r" (transpose|copy)\(", text) and not re.search(
      r" (add|multiply|subtract|divide|maximum|exponential|rsqrt|select)\(", text
    ):
      kind = "layout copy"
    elif "transpose" in op_name or op_name.startswith("copy"):
      kind = "layout copy (fused with elementwise)"
    else:
      kind = "elementwise/reduction"
    classes[op_name] = kind
  return classes


def profile_step(compiled, state, batch, values, out_dir: str, steps: int = 2):
  """Runs ``steps`` steps under the JAX profiler (a trace TensorBoard's profile plugin and
  Perfetto read, under ``out_dir``) and sums its operation events: milliseconds per step by
  what they compute (convolution, matmul, layout copies, ...) and the slowest operations. On
  CPU several operations run at once on the thread pool, so the sums can exceed the step."""
  state, m = compiled(state, batch, values)  # the state is donated: always carry the new one
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  with jax.profiler.trace(out_dir):
    for _ in range(steps):
      state, m = compiled(state, batch, values)
    jax.block_until_ready(m)
  wall = (time.perf_counter() - t0) / steps
  traces = sorted(
    glob.glob(os.path.join(out_dir, "**", "*.trace.json.gz"), recursive=True), key=os.path.getmtime
  )
  if not traces:
    return state, {"bench": "profile", "error": f"no trace written under {out_dir}"}
  with gzip.open(traces[-1]) as f:
    events = json.load(f).get("traceEvents", [])
  classes = _hlo_op_classes(compiled.as_text())
  per_op: dict[str, float] = {}
  for e in events:
    if e.get("ph") == "X" and not _RUNTIME_EVENT.search(e.get("name", "")):
      per_op[e["name"]] = per_op.get(e["name"], 0.0) + e.get("dur", 0) / 1e3 / steps
  by_kind: dict[str, float] = {}
  for op, ms in per_op.items():
    kind = classes.get(op, "other")
    by_kind[kind] = by_kind.get(kind, 0.0) + ms
  total = sum(per_op.values()) or 1.0
  row = {
    "bench": "profile",
    "trace": traces[-1],
    "step_ms": round(wall * 1e3, 1),
    "op_ms_per_step": round(total, 1),
    "by_kind": {
      k: {"ms": round(v, 1), "share": round(v / total, 3)}
      for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])
    },
    "slowest_ops": [
      [op, round(ms, 2), classes.get(op, "other")]
      for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:12]
    ],
  }
  return state, row


def bench_model(
  model: str,
  batch_size: int,
  resolution: int,
  steps: int,
  method: str,
  dtype: str,
  data: str,
  torch_ref: bool = True,
  checkpoint: bool = True,
  model_kwargs: dict | None = None,
  loop: bool = True,
  data_workers: int = 0,
  profile_dir: str | None = None,
) -> list[dict]:

  t = _train_setup(model, batch_size, resolution, steps, method, dtype, data, model_kwargs)
  c, source, tok, bind, meth, mesh = t.c, t.source, t.tok, t.bind, t.meth, t.mesh
  trainer, step_fn = t.trainer, t.step_fn

  # Compiled from shapes first: XLA's memory analysis says what the step needs before anything
  # is allocated, and a step that cannot fit is one line instead of an allocation failure.
  t0 = time.perf_counter()
  values = jax.device_put(t.values, sharding.replicated(mesh))
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trainer.abstract))
  print(
    f"bench: compiling the {model} step at batch {batch_size}, {resolution}px from shapes "
    f"(state {state_bytes / 2**30:.2f} GiB) to read its memory needs before allocating "
    f"anything (a large step on a CPU takes minutes here)",
    file=sys.stderr,
    flush=True,
  )
  lowered = step_fn.lower(trainer.abstract_state(), abstract_batch(t, batch_size), values)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  memory = step_memory(compiled)
  check_fits(memory, batch_size, model, resolution)
  state = trainer.init()

  # The input pipeline alone (the loop's own, same threads): images/s it can deliver.
  it = pipeline.train_dataset(
    source,
    pp=t.pp_host,
    batch_size=batch_size,
    seed=0,
    keys=meth.batch_keys,
    threads=c.data_threads,
    bind=bind,
  )
  batch = sharding.to_global(next(it), mesh)
  n_pipe = max(4, min(steps, 50))
  t0 = time.perf_counter()
  for _ in range(n_pipe):
    next(it)
  pipeline_rate = n_pipe * batch_size / (time.perf_counter() - t0)
  it.close()
  del it

  # The bare jitted step (compiled above): `steps` dispatched back to back on one batch.
  flops = lowered_flops(lowered)
  xla_compiled_flops = _cost_flops(compiled)

  def bare():
    nonlocal state
    for _ in range(2):
      state, m = compiled(state, batch, values)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
      state, m = compiled(state, batch, values)
    jax.block_until_ready(m)
    return (time.perf_counter() - t) / steps

  bare_before = bare()
  profile_row = None
  if profile_dir:
    state, profile_row = profile_step(compiled, state, batch, values, profile_dir)

  # The training loop itself (train.fit, as pre-training runs it: data pipeline, sharded
  # batches, metrics, progress, checkpoints) on the same source.
  loop_step = None
  if loop:
    with tempfile.TemporaryDirectory(prefix="bt_bench_") as wd:
      c_loop = c.copy_and_resolve_references()
      c_loop.data_workers = data_workers
      data_info = {
        "train_source": source,
        "eval_source": None,
        "total_steps": c.total_steps,
        "warmup_steps": c.optimizer.warmup_steps,
        "num_classes": c.num_classes,
        "class_names": source.class_names,
        "num_examples": len(source),
        "vocab": c.text.tokenizer if tok else None,
      }
      train.fit(train.spec_of(c_loop, data_info, mesh, meth, tok), wd)
      rows = [r for r in log_lib.read_metrics(wd) if "train/steps_per_sec" in r]
      loop_step = 1.0 / rows[-1]["train/steps_per_sec"]
  # Either side of the loop: drift during the run shows as spread.
  bare_after = bare() if loop else bare_before
  bare_step = (bare_before + bare_after) / 2

  peak = peak_matmul_flops(dtype)
  device = jax.devices()[0]
  row = {
    "bench": "model",
    "model": model,
    "method": method,
    "batch_size": batch_size,
    "resolution": resolution,
    "dtype": dtype,
    "data": data,
    "steps": steps,
    "model_kwargs": dict(model_kwargs or {}),
    "images_per_sec": round(batch_size / (loop_step or bare_step), 2),
    "bare_images_per_sec": round(batch_size / bare_step, 2),
    "step_time_s": round(bare_step, 5),
    "loop_step_time_s": round(loop_step, 5) if loop_step else None,
    "bare_step_spread": round(abs(bare_after - bare_before) / bare_step, 4),
    "loop_overhead": round(loop_step / bare_step - 1, 4) if loop_step else None,
    "compile_time_s": round(compile_s, 2),
    "step_memory_gb": round(memory["needed"] / 2**30, 3) if memory else None,
    "flops_per_step": flops,
    "xla_compiled_flops_per_step": xla_compiled_flops,
    "peak_matmul_tflops": _sig(peak / 1e12),
    "mfu": _sig(flops / bare_step / peak) if flops else None,
    "pipeline_images_per_sec": round(pipeline_rate, 1),
    "data_workers": data_workers,
    "device": f"{device.device_kind} x{len(jax.devices())} ({device_description()})",
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  if torch_ref:
    ref = torch_reference(model, method, batch_size, resolution, steps, dtype)
    if ref is not None:
      row.update(ref)
      row["ratio_to_torch"] = round(row["bare_images_per_sec"] / ref["torch_images_per_sec"], 3)
  out = [row]
  if profile_row is not None:
    out.append(
      {
        **profile_row,
        "model": model,
        "batch_size": batch_size,
        "resolution": resolution,
        "device": row["device"],
      }
    )
  if checkpoint:
    out.append(bench_checkpoint(state, trainer, row))
  return out


# Pre-training methods with a PyTorch reference the bench times beside ours: timm's model with
# SGD + cross-entropy, and OpenCLIP's model, ClipLoss and AdamW.
TORCH_REFERENCES = {"supervised": "timm", "clip": "open_clip"}


def torch_reference(
  model: str, method: str, batch_size: int, resolution: int, steps: int, dtype: str
) -> dict | None:
  """The same architecture and batch as plain PyTorch on the same kind of device: timm's
  module with SGD + momentum and cross-entropy (supervised), OpenCLIP's model, ClipLoss and
  AdamW (clip). None when torch/timm/open_clip are not installed or the case has none."""
  try:
    import timm
    import torch
  except ImportError:
    return None
  reference = TORCH_REFERENCES.get(method)  # the methods a public PyTorch codebase trains
  if reference is None:
    return None
  if reference == "open_clip":
    return _openclip_reference(model, batch_size, resolution, steps, dtype)
  name = None
  for pattern, ref in TIMM_REFERENCE:
    m = re.fullmatch(pattern, model)
    if m:
      name = ref(m)
  if name is None:
    return None
  cuda = torch.cuda.is_available()
  dev = torch.device("cuda" if cuda else "cpu")
  kwargs = {"img_size": resolution} if name.startswith("vit") else {}
  net = timm.create_model(name, pretrained=False, num_classes=1000, **kwargs).to(dev).train()
  opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  x = torch.randn(batch_size, 3, resolution, resolution, device=dev)
  y = torch.randint(0, 1000, (batch_size,), device=dev)
  amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

  def step():
    opt.zero_grad(set_to_none=True)
    with amp:
      loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()

  dt = _time_torch(step, steps, cuda)
  return {
    "torch_model": name,
    "torch_images_per_sec": round(batch_size / dt, 2),
    "torch_step_time_s": round(dt, 5),
    "torch_version": torch.__version__,
    "torch_threads": torch.get_num_threads(),
  }


OPENCLIP_REFERENCE = {
  "clip_rn50": "RN50",
  "clip_rn101": "RN101",
  "vit_b32": "ViT-B-32",
  "vit_b16": "ViT-B-16",
}


def _time_torch(step, steps: int, cuda: bool) -> float:
  import torch

  for _ in range(2):
    step()
  if cuda:
    torch.cuda.synchronize()
  t0 = time.perf_counter()
  for _ in range(steps):
    step()
  if cuda:
    torch.cuda.synchronize()
  return (time.perf_counter() - t0) / steps


def _openclip_reference(
  model: str, batch_size: int, resolution: int, steps: int, dtype: str
) -> dict | None:
  """OpenCLIP's own training step for the same CLIP (its model, ClipLoss, AdamW): the
  reference for CLIP throughput."""
  try:
    import open_clip
    import torch
  except ImportError:
    return None
  name = OPENCLIP_REFERENCE.get(model)
  if name is None:
    return None
  cuda = torch.cuda.is_available()
  dev = torch.device("cuda" if cuda else "cpu")
  net = open_clip.create_model(name, pretrained=None, force_image_size=resolution).to(dev)
  net.train()
  loss_fn = open_clip.ClipLoss()
  opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.1)
  x = torch.randn(batch_size, 3, resolution, resolution, device=dev)
  tokens = open_clip.get_tokenizer(name)(
    [f"a photo of a class {i % 1000}, number {i}" for i in range(batch_size)]
  ).to(dev)
  amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

  def step():
    opt.zero_grad(set_to_none=True)
    with amp:
      img, txt, scale = net(x, tokens)[:3]
      loss = loss_fn(img, txt, scale)
    loss.backward()
    opt.step()

  dt = _time_torch(step, steps, cuda)
  return {
    "torch_model": f"open_clip {name}",
    "torch_images_per_sec": round(batch_size / dt, 2),
    "torch_step_time_s": round(dt, 5),
    "torch_version": torch.__version__,
    "torch_threads": torch.get_num_threads(),
  }


def bench_checkpoint(state, trainer, row) -> dict:
  """Save and restore of the benchmarked train state (params, optimiser state): GB/s."""

  nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
  with tempfile.TemporaryDirectory(prefix="bt_ckpt_") as wd:
    ck = ckpt_lib.Checkpointer(wd, keep=1, async_save=False)
    t0 = time.perf_counter()
    ck.save(1, state.to_dict())
    ck.wait()
    save_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    step, restored, _, _ = ck.restore_latest(trainer.abstract_state().to_dict())
    jax.block_until_ready(restored)
    restore_s = time.perf_counter() - t0
    ck.close()
  return {
    "bench": "checkpoint",
    "model": row["model"],
    "bytes": nbytes,
    "save_gb_per_sec": round(nbytes / save_s / 1e9, 3),
    "restore_gb_per_sec": round(nbytes / restore_s / 1e9, 3),
    "save_s": round(save_s, 3),
    "restore_s": round(restore_s, 3),
    "device": row["device"],
  }


def bench_variants(base_args: list[str], variants: list[str], rounds: int) -> list[dict]:
  """The bare step under each variant — ``xla:FLAGS`` (XLA_FLAGS, which need a process each)
  or ``args:--dtype=bfloat16 ...`` (bench arguments) — in fresh processes, round-robin over
  ``rounds`` rounds so that a noisy spell slows every variant alike; median images/s and the
  ratio to the first variant (the baseline)."""
  rates: dict[str, list[float]] = {v: [] for v in variants}
  last: dict[str, dict] = {}
  for r in range(rounds):
    for v in variants:
      kind, _, value = v.partition(":")
      env = dict(os.environ)
      args = list(base_args)
      if kind == "xla":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + value).strip()
      elif kind == "args":
        args += value.split()
      else:
        raise ValueError(f"variant {v!r}: 'xla:FLAGS' or 'args:ARGS'")
      out = subprocess.run(
        [sys.executable, "-m", "big_transfer.bench", *args, "--loop=off", "--torch=off"],
        env=env,
        capture_output=True,
        text=True,
      )
      rows = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
      if out.returncode or not rows:
        err = (out.stderr.strip().splitlines() or ["?"])[-1][:200]
        last[v] = {"error": err}
        print(f"variant {v!r} round {r + 1}: failed ({err})", file=sys.stderr, flush=True)
        continue
      rates[v].append(rows[0]["bare_images_per_sec"])
      last[v] = rows[0]
      print(f"variant {v!r} round {r + 1}: {rates[v][-1]} img/s", file=sys.stderr, flush=True)
  base = float(np.median(rates[variants[0]])) if rates[variants[0]] else None
  out_rows = []
  for v in variants:
    med = round(float(np.median(rates[v])), 3) if rates[v] else None
    row = {
      "bench": "variant",
      "variant": v or "baseline",
      "images_per_sec": med,
      "rounds": rates[v],
      "ratio_to_baseline": round(med / base, 3) if med and base else None,
    }
    row.update(
      {
        k: last[v].get(k)
        for k in (
          "model",
          "model_kwargs",
          "batch_size",
          "resolution",
          "dtype",
          "compile_time_s",
          "mfu",
          "device",
          "error",
        )
        if k in last.get(v, {})
      }
    )
    out_rows.append(row)
  return out_rows


def bench_fuse(
  model: str,
  batch_size: int,
  resolution: int,
  steps: int,
  points: int,
  dtype: str,
  data: str,
  model_kwargs: dict | None = None,
) -> list[dict]:
  """A fine-tuning grid of ``points`` learning rates on the same batches, trained one point
  after another (the unfused grid: a step per point per batch, and — in a real grid — a pass of
  the input pipeline per point) against one fused vmapped program (one step for every point,
  one pipeline pass): ms per step and per point, with and without the pipeline's own time per
  batch (measured in the same run), and the largest relative difference of the points' losses
  after ``steps`` steps."""
  t = _train_setup(model, batch_size, resolution, steps, "supervised", dtype, data, model_kwargs)
  mesh, c = t.mesh, t.c
  lrs = [float(c.optimizer.lr) * 3.0**i for i in range(points)]
  opts = []
  for lr in lrs:
    o = ml_collections.ConfigDict(c.optimizer.to_dict())
    o.lr = lr
    opts.append(o)
  structure = optim.structure(c.optimizer)
  one = t.trainer
  fused = trainer_lib.Trainer(
    t.meth,
    optimizer=structure,
    mesh=mesh,
    input_affine=ops.split_device_affine(c.pp_train)[1],
    param_rules=c.param_sharding,
    param_min_size=c.param_sharding_min_size,
    points=points,
  )
  repl = sharding.replicated(mesh)
  values = [jax.device_put(trainer_lib.run_values(o, steps, 0), repl) for o in opts]
  stacked = jax.device_put(
    trainer_lib.stack_values([trainer_lib.run_values(o, steps, 0) for o in opts]), repl
  )
  it = pipeline.train_dataset(
    t.source,
    pp=t.pp_host,
    batch_size=batch_size,
    seed=0,
    keys=t.meth.batch_keys,
    threads=c.data_threads,
    bind=t.bind,
  )
  batches = [sharding.to_global(next(it), mesh) for _ in range(min(steps, 8))]
  t0 = time.perf_counter()
  n_pipe = max(4, min(steps, 20))
  for _ in range(n_pipe):
    next(it)
  pipe_s = (time.perf_counter() - t0) / n_pipe
  it.close()

  def run_unfused():
    states = [one.init(0) for _ in lrs]
    for k in range(2):  # compiled and warm
      states = [one.step(s, batches[k % len(batches)], v)[0] for s, v in zip(states, values)]
    jax.block_until_ready(states)
    t0 = time.perf_counter()
    for k in range(steps):
      out = [one.step(s, batches[k % len(batches)], v) for s, v in zip(states, values)]
      states = [o[0] for o in out]
    jax.block_until_ready(states)
    return (time.perf_counter() - t0) / steps, [float(o[1]["loss"]) for o in out]

  def run_fused():
    state = fused.init(0)
    for k in range(2):
      state, _ = fused.step(state, batches[k % len(batches)], stacked)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for k in range(steps):
      state, m = fused.step(state, batches[k % len(batches)], stacked)
    jax.block_until_ready(state)
    return (time.perf_counter() - t0) / steps, [float(x) for x in np.asarray(m["loss"])]

  unfused_s, a = run_unfused()
  fused_s, b = run_fused()
  diff = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b))
  return [
    {
      "bench": "fuse",
      "model": model,
      "batch_size": batch_size,
      "resolution": resolution,
      "dtype": dtype,
      "data": data,
      "points": points,
      "steps": steps,
      "unfused_ms_per_point_step": round(1000 * unfused_s / points, 2),
      "fused_ms_per_point_step": round(1000 * fused_s / points, 2),
      "pipeline_ms_per_batch": round(1000 * pipe_s, 2),
      "speedup_steps": round(unfused_s / fused_s, 3),
      "speedup_with_input": round((unfused_s + points * pipe_s) / (fused_s + pipe_s), 3),
      "max_loss_rel_difference": float(f"{diff:.3g}"),
      "device": f"{jax.devices()[0].device_kind} ({device_description()})",
    }
  ]


_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(\d+)s")


def _seconds(text: str) -> float:
  m = _DURATION.fullmatch(text)
  return float(int(m[1] or 0) * 3600 + int(m[2] or 0) * 60 + int(m[3])) if m else 0.0


def parse_breakdown(log: str) -> dict[str, dict[str, float]]:
  """The study's "where the time went" lines as {kind: {phase: seconds, "wall": seconds}}."""
  out = {}
  for line in log[log.find("where the time went") :].splitlines()[1:]:
    m = re.match(r"\s+([\w -]+?): (?:\d+ run\(s\), )?(\S+)(?:: (.*))?$", line)
    if not m or m[1] == "compiled":
      continue
    row = {"wall": _seconds(m[2])}
    for part in (m[3] or "").split("), "):
      p = re.match(r"([\w -]+?) (\S+) \(", part.strip())
      if p:
        row[p[1]] = _seconds(p[2])
    out[m[1]] = row
  return out


def study_table(workdir: str) -> dict[tuple, dict]:
  """A study's result rows by (arm, downstream, protocol, shots, seed, alpha)."""
  from big_transfer import transfer

  return {
    (
      r["tags"]["arm"],
      r["tags"]["downstream"],
      r["protocol"],
      str(r["shots"]),
      r["seed"],
      r["hyperparameters"].get("alpha"),
    ): r
    for r in transfer.read_results(Workdir(workdir).results)
  }


def compare_tables(a: dict, b: dict, tolerance: float) -> dict[str, Any]:
  """Two studies' rows, cell by cell: per protocol, the cells that are number for number the
  same and those within ``tolerance`` (val and test accuracy), whether the same
  hyperparameters (learning rate, L2, alpha) were chosen, and every cell that differs."""
  hp = lambda r: {k: r["hyperparameters"].get(k) for k in ("lr", "l2", "alpha")}
  by: dict[str, dict[str, int]] = {}
  differ, worst = [], 0.0
  for key in sorted(set(a) & set(b), key=str):
    x, y = a[key], b[key]
    d = max(
      abs(x["val_accuracy"] - y["val_accuracy"]), abs(x["test_accuracy"] - y["test_accuracy"])
    )
    worst = max(worst, d)
    row = by.setdefault(key[2], {"cells": 0, "same": 0, "within": 0, "same_hyperparameters": 0})
    row["cells"] += 1
    row["same"] += d == 0
    row["within"] += d <= tolerance
    row["same_hyperparameters"] += hp(x) == hp(y)
    if d:
      differ.append(
        {
          "cell": "/".join(str(k) for k in key if k is not None),
          "before": [round(x["val_accuracy"], 4), round(x["test_accuracy"], 4), hp(x)],
          "after": [round(y["val_accuracy"], 4), round(y["test_accuracy"], 4), hp(y)],
        }
      )
  return {
    "cells": len(set(a) | set(b)),
    "cells_in_both": len(set(a) & set(b)),
    "by_protocol": by,
    "tolerance": tolerance,
    "worst_difference": round(worst, 4),
    "different_cells": differ,
  }


def _study_cmd(config: str, workdir: str, *extra) -> list[str]:
  return [
    sys.executable,
    "-m",
    "big_transfer.study",
    f"--config={config}",
    f"--workdir={workdir}",
    "--report=false",
    *extra,
  ]


def _timed_study(cmd, env, cwd=None) -> tuple[float, str]:
  """Runs a study command with JAX logging every compilation; (wall seconds, its output)."""
  t0 = time.perf_counter()
  out = subprocess.run(
    cmd, env={**env, "JAX_LOG_COMPILES": "1"}, cwd=cwd, capture_output=True, text=True
  )
  wall = time.perf_counter() - t0
  if out.returncode:
    raise UserError(f"{' '.join(cmd[2:4])} failed: {out.stderr.strip()[-400:]}")
  return wall, out.stdout + out.stderr


def _stage_row(name: str, wall: float, log: str) -> dict[str, Any]:
  """What one run of the transfer stage measured: wall time, compilations (JAX's own log
  lines), and the share of the stage that is start-up, data opening and compile."""
  kinds = {k: v for k, v in parse_breakdown(log).items() if k.startswith("transfer")}
  total = sum(v["wall"] for v in kinds.values()) or wall
  overhead = sum(v.get("start-up and other", 0.0) + v.get("compile", 0.0) for v in kinds.values())
  return {
    f"{name}_s": round(wall, 1),
    f"{name}_compilations": len(re.findall(r"Finished XLA compilation of", log)),
    f"{name}_startup_and_compile_share": round(overhead / total, 3) if total else None,
    f"{name}_breakdown": {k: {p: round(s, 1) for p, s in v.items()} for k, v in kinds.items()},
  }


def bench_study(config: str, workers: int, baseline: str = "", tolerance: float = 0.02) -> list:
  """A study's transfer stage run from the same pre-trained arms (pre-trained once by this
  code): sequentially by this code; sequentially by a ``baseline`` checkout's code (a git
  worktree of an earlier commit, its own configs) when given, compared cell by cell (number for
  number, or within ``tolerance`` and the same chosen hyperparameters); and as ``workers``
  worker processes at once (``--worker=i/N --stage=transfer``, then ``--collect``) and as SLURM
  job arrays where sbatch is, when ``workers`` > 1. Wall times, ratios, compilations (JAX's log
  of each), the start-up and compile share, and the study's own breakdown."""
  import shutil

  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
  row: dict[str, Any] = {"bench": "study", "config": config}
  with tempfile.TemporaryDirectory(prefix="bt_bench_study_") as tmp:
    base = os.path.join(tmp, "base")
    t0 = time.perf_counter()
    _timed_study(_study_cmd(config, base, "--worker=0/1", "--stage=pretrain"), env)
    row["pretrain_s"] = round(time.perf_counter() - t0, 1)

    def fresh(name):
      d = os.path.join(tmp, name)
      shutil.copytree(base, d, ignore=shutil.ignore_patterns(".jax_cache", "manifest.json"))
      return d

    seq = fresh("sequential")
    if baseline:
      before = fresh("baseline")
      cmd = _study_cmd(os.path.join(baseline, config), before)
      wall, log = _timed_study(cmd, {**env, "PYTHONPATH": baseline}, cwd=baseline)
      row.update({"baseline": baseline, **_stage_row("baseline", wall, log)})
    wall, log = _timed_study(_study_cmd(config, seq), env)
    row.update(_stage_row("sequential", wall, log))
    ours = study_table(seq)
    row["transfer_rows"] = len(ours)
    if baseline:
      row["speedup_vs_baseline"] = round(row["baseline_s"] / row["sequential_s"], 3)
      row["vs_baseline"] = compare_tables(study_table(before), ours, tolerance)
    if workers > 1:
      row.update(_bench_workers(config, fresh("workers"), workers, env, ours))
      if shutil.which("sbatch") and shutil.which("squeue"):
        row.update(_bench_slurm(config, fresh("slurm"), workers, env, ours))
  row.update({"workers": workers, "device": device_description(), "cpus": os.cpu_count()})
  return [row]


def _bench_workers(config, workdir, workers, env, ours) -> dict[str, Any]:
  """The transfer stage as ``workers`` worker processes at once, then --collect."""
  t0 = time.perf_counter()
  procs = [
    subprocess.Popen(
      _study_cmd(config, workdir, f"--worker={i}/{workers}", "--stage=transfer"),
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
    for i in range(workers)
  ]
  codes = [p.wait() for p in procs]
  collect = subprocess.run(_study_cmd(config, workdir, "--collect"), env=env, capture_output=True)
  wall = time.perf_counter() - t0
  if any(codes) or collect.returncode:
    raise UserError(f"the workers failed (exits {codes}, collect {collect.returncode})")
  return {"workers_s": round(wall, 1), "workers_same_rows": study_table(workdir) == ours}


def _bench_slurm(config, workdir, workers, env, ours) -> dict[str, Any]:
  """The transfer stage as SLURM job arrays (study --submit=slurm), until its report job ends."""
  t0 = time.perf_counter()
  out = subprocess.run(
    [
      *_study_cmd(config, workdir),
      "--submit=slurm",
      f"--runs_per_task={max(1, len(ours) // (2 * workers))}",
    ],
    env=env,
    capture_output=True,
    text=True,
  )
  ids = re.findall(r"submitted \S+: job (\d+)", out.stdout + out.stderr)
  while (
    ids
    and subprocess.run(
      ["squeue", "-h", "-j", ",".join(ids)], capture_output=True, text=True
    ).stdout.strip()
  ):
    time.sleep(1)
  return {
    "slurm_s": round(time.perf_counter() - t0, 1),
    "slurm_same_rows": study_table(workdir) == ours if ids else False,
  }


def command() -> cli.Command:
  c = cli.Command("big_transfer.bench", __doc__)
  c.enum(
    "what",
    None,
    ("model", "pipeline", "loader", "tokenizer", "study", "fuse"),
    "what to measure (default: model when --model is given, else pipeline)",
  )
  c.string("model", None, "e.g. resnet50, vit_s16, vit_b16, clip_rn50")
  c.enum(
    "method", "supervised", ("supervised", "clip", "simclr", "slip"), "model: the step's method"
  )
  c.integer("batch_size", 16, "global batch")
  c.integer("resolution", 224, "model: image side")
  c.integer("steps", 10, "model: timed steps")
  c.enum("dtype", "float32", ("float32", "bfloat16"), "model: compute dtype")
  c.enum(
    "data",
    "synthetic",
    ("synthetic", "pipeline"),
    "model: the loop's data (pipeline: JPEGs through the study chain)",
  )
  c.enum("loop", "on", ("on", "off"), "off: the bare step only (quick comparisons of XLA flags)")
  c.enum(
    "torch", "auto", ("auto", "off"), "the PyTorch side-by-side when torch and timm are installed"
  )
  c.integer("images", 200, "pipeline/loader: JPEGs made")
  c.integer("height", 375, "pipeline/loader: JPEG height")
  c.integer("width", 500, "pipeline/loader: JPEG width")
  c.number("seconds", 3.0, "about this much time per case")
  c.string(
    "variants",
    None,
    "';'-separated 'xla:FLAGS' / 'args:ARGS' variants of the bare step, each "
    "in its own process, baseline first (e.g. 'xla:;xla:--xla_cpu_use_xnnpack"
    "=true;args:--dtype=bfloat16')",
  )
  c.integer("rounds", 2, "variants: rounds of each")
  c.string(
    "workers",
    "0,1,2",
    "loader: comma-separated worker counts to measure; study: the worker count",
    metavar="N[,N...]",
  )
  c.string(
    "study_config",
    "configs/mini/study.py",
    "study: the study whose transfer stage is timed sequentially and as workers",
    metavar="FILE",
  )
  c.integer("points", 2, "fuse: grid points (learning rates)")
  c.string(
    "baseline",
    "",
    "study: a checkout of earlier code (git worktree add DIR REV) whose transfer stage "
    "runs on the same pre-trained arms, compared cell by cell",
    metavar="DIR",
  )
  c.number(
    "tolerance",
    0.02,
    "study: the largest accuracy difference a cell may have against the baseline's",
  )
  c.integer("data_workers", 0, "model: the training loop's data worker processes")
  c.repeated(
    "model_kwargs",
    'JSON, e.g. \'{"width": 0.5}\'; repeated ones are merged, later keys '
    "winning (so a variant's kwargs add to the base run's)",
    metavar="JSON",
  )
  c.string(
    "profile",
    None,
    "model: also trace two bare steps into DIR (TensorBoard / Perfetto) and "
    "print a 'profile' row: ms per step by what the operations compute "
    "(convolution, matmul, layout copies, ...) and the slowest operations",
    metavar="DIR",
  )
  return c


def main(argv=None):
  p = command()
  args = p.parse(argv)
  model_kwargs = {}
  for text in args.model_kwargs:
    try:
      model_kwargs.update(json.loads(text))
    except (json.JSONDecodeError, TypeError, ValueError):
      p.error(f"--model_kwargs={text!r} is not a JSON object")
  what = args.what or ("model" if args.model else "pipeline")
  if what == "model" and args.variants is not None:
    base = [
      f"--model={args.model}",
      f"--method={args.method}",
      f"--batch_size={args.batch_size}",
      f"--resolution={args.resolution}",
      f"--steps={args.steps}",
      f"--dtype={args.dtype}",
      f"--data={args.data}",
      f"--model_kwargs={json.dumps(model_kwargs)}",
    ]
    rows = bench_variants(base, args.variants.split(";"), args.rounds)
  elif what == "model":
    if not args.model:
      p.error("--what=model needs --model")
    absl_logging.set_verbosity(absl_logging.WARNING)
    rows = bench_model(
      args.model,
      args.batch_size,
      args.resolution,
      args.steps,
      args.method,
      args.dtype,
      args.data,
      torch_ref=args.torch == "auto",
      checkpoint=args.loop == "on",
      loop=args.loop == "on",
      model_kwargs=model_kwargs,
      data_workers=args.data_workers,
      profile_dir=args.profile,
    )
  elif what == "tokenizer":
    rows = bench_tokenizer(args.seconds)
  elif what == "fuse":
    absl_logging.set_verbosity(absl_logging.WARNING)
    rows = bench_fuse(
      args.model or "resnet18",
      args.batch_size,
      args.resolution,
      args.steps,
      args.points,
      args.dtype,
      args.data,
      model_kwargs or ({"width": 0.25} if not args.model else None),
    )
  elif what == "study":
    rows = bench_study(
      args.study_config, int(args.workers.split(",")[-1]), args.baseline, args.tolerance
    )
  elif what == "loader":
    rows = bench_loader(
      [int(w) for w in args.workers.split(",")],
      args.batch_size,
      args.seconds,
      min(args.images, 64),
      args.height,
      args.width,
    )
  else:
    rows = bench_pipeline(args.images, args.height, args.width, args.seconds)
  for row in rows:
    print(json.dumps(row), flush=True)
  return rows


def entry(argv=None):
  try:
    return main(argv)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  entry()
