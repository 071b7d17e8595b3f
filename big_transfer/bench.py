r"""Benchmarks, one JSON object per line.

  python -m big_transfer.bench --what=pipeline [--images=300 --height=375 --width=500]

``pipeline``: single-core images/s of the input chain against the raw JPEG decode rate of
libjpeg-turbo (simplejpeg) on the same images in the same run: raw decode, PIL decode, the
study's training chain ``decode|inception_crop(224)|flip_lr|normalize('imagenet')`` as written
(fused: reduced-DCT decode of the crop) and with fusion off (full decode, then crop), and the
eval chain ``decode|resize_small(256)|central_crop(224)|normalize('imagenet')``. Ratios are
against the raw decode measured in the same process.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time

import numpy as np


def synthetic_jpegs(n: int, height: int, width: int, seed: int = 0,
                    quality: int = 90) -> list[bytes]:
  """Photo-like JPEGs (smooth gradients, shapes, mild noise): realistic entropy per pixel."""
  from PIL import Image, ImageDraw, ImageFilter
  rng = np.random.default_rng(seed)
  out = []
  yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
  for _ in range(n):
    base = np.stack([np.sin(xx * rng.uniform(2, 9) + rng.uniform(0, 6)) *
                     np.cos(yy * rng.uniform(2, 9)) for _ in range(3)], -1)
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
  import simplejpeg
  from PIL import Image

  from big_transfer.data import ops
  data = synthetic_jpegs(images, height, width)
  rng = np.random.default_rng(0)
  train_pp = "decode|inception_crop(224)|flip_lr|normalize('imagenet')"
  eval_pp = "decode|resize_small(256)|central_crop(224)|normalize('imagenet')"
  fused, unfused = ops.parse(train_pp), ops.parse(train_pp, fuse=False)
  eval_fused = ops.parse(eval_pp)
  cases = {
      "raw_decode_simplejpeg": lambda d: simplejpeg.decode_jpeg(d),
      "raw_decode_pil": lambda d: np.asarray(Image.open(io.BytesIO(d)).convert("RGB")),
      "train_chain_fused": lambda d: fused({"image": d}, rng),
      "train_chain_unfused": lambda d: unfused({"image": d}, rng),
      "eval_chain_fused": lambda d: eval_fused({"image": d}, rng),
  }
  rates = _rates(cases, data, seconds)
  raw = rates["raw_decode_simplejpeg"]
  rows = []
  for name, r in rates.items():
    rows.append({"bench": "pipeline", "case": name, "images_per_sec_per_core": round(r, 1),
                 "ratio_to_raw_decode": round(r / raw, 3), "image_size": f"{width}x{height}",
                 "images": images, "device": device_description()})
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m big_transfer.bench")
  p.add_argument("--what", choices=("pipeline",), default="pipeline")
  p.add_argument("--images", type=int, default=200)
  p.add_argument("--height", type=int, default=375)
  p.add_argument("--width", type=int, default=500)
  p.add_argument("--seconds", type=float, default=3.0, help="about this much time per case")
  args = p.parse_args(argv)
  rows = bench_pipeline(args.images, args.height, args.width, args.seconds)
  for row in rows:
    print(json.dumps(row), flush=True)
  return rows


if __name__ == "__main__":
  main()
