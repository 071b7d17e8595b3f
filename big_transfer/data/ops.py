"""Preprocessing as a small op language: ``decode|inception_crop(32)|flip_lr|value_range(-1,1)``.

Each op is a registered numpy/PIL function factory: ``name(args) -> fn(example, rng) -> example``.
``parse`` validates the whole string (unknown op, bad argument) at config load, before any data is
read, and the error lists the known ops. Randomness comes from the ``rng`` passed in, which the
pipeline seeds from (seed, global example index): the same example gets the same augmentation on
any number of hosts and after a resume.
"""

from __future__ import annotations

import ast
import inspect
import io
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from big_transfer.data import tokenizer

Example = dict[str, Any]
Op = Callable[[Example, np.random.Generator], Example]

REGISTRY: dict[str, Callable[..., Op]] = {}


class PreprocessError(ValueError):
  pass


def register(name: str):
  def deco(factory):
    REGISTRY[name] = factory
    return factory
  return deco


def _parse_call(text: str) -> tuple[str, tuple, dict]:
  try:
    node = ast.parse(text.strip(), mode="eval").body
  except SyntaxError:
    raise PreprocessError(f"preprocessing op {text!r} is not NAME or NAME(args)") from None
  if isinstance(node, ast.Name):
    return node.id, (), {}
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
    try:
      args = tuple(ast.literal_eval(a) for a in node.args)
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except ValueError:
      raise PreprocessError(f"preprocessing op {text!r}: arguments must be literals") from None
    return node.func.id, args, kwargs
  raise PreprocessError(f"preprocessing op {text!r} is not NAME or NAME(args)")


def _split_ops(spec: str) -> list[str]:
  """Splits on '|' outside quotes and parentheses (two_views takes op strings)."""
  parts, cur, depth, quote = [], [], 0, None
  for ch in spec:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch == "(":
      depth += 1
    elif ch == ")":
      depth -= 1
    elif ch == "|" and depth == 0:
      parts.append("".join(cur))
      cur = []
      continue
    cur.append(ch)
  parts.append("".join(cur))
  return parts


def _bind(name: str, args: tuple, kwargs: dict, bind: dict) -> dict:
  """Fills the op's arguments named in ``bind`` that the op string left out (the trainer
  binds run-level values such as the tokenizer's vocabulary file)."""
  params = list(inspect.signature(REGISTRY[name]).parameters)
  kwargs = dict(kwargs)
  for k, v in bind.items():
    if k in params and k not in kwargs and params.index(k) >= len(args):
      kwargs[k] = v
  return kwargs


def parse(spec: str, fuse: bool = True, bind: dict | None = None) -> Op:
  """Builds one function from an op string; raises PreprocessError naming the bad op.

  ``fuse`` lets ``decode`` merge into a following crop (see ``_fuse``); ``bind`` supplies
  arguments the string leaves out (see ``_bind``)."""
  fns = []
  calls = [(*_parse_call(t), t.strip()) for t in _split_ops(spec) if t.strip()]
  for name, _, _, _ in calls:
    if name not in REGISTRY or name.startswith("_"):
      raise PreprocessError(f"unknown preprocessing op {name!r} in {spec!r}; known ops: "
                            f"{', '.join(known_ops())}")
  if bind:
    calls = [(n, a, _bind(n, a, k, bind), t) for n, a, k, t in calls]
  for name, args, kwargs, text in (_fuse(calls) if fuse else calls):
    try:
      fns.append(REGISTRY[name](*args, **kwargs))
    except PreprocessError:
      raise
    except (TypeError, ValueError) as e:
      raise PreprocessError(f"preprocessing op {text.strip()!r}: bad argument ({e})") from None

  # Encoded images are decoded wherever they are read: a chain without ``decode`` (an eval
  # string written for built-in arrays, used on converted JPEGs) decodes 'image' first.
  auto_decode = (None if any("decode" in name for name, *_ in calls)
                 else REGISTRY["decode"]())

  def apply(example: Example, rng: np.random.Generator) -> Example:
    example = dict(example)
    if auto_decode is not None and isinstance(example.get("image"), (bytes, bytearray)):
      example = auto_decode(example, rng)
    for fn in fns:
      example = fn(example, rng)
    return example
  return apply


def _fuse(calls: list[tuple[str, tuple, dict, str]]) -> list[tuple[str, tuple, dict, str]]:
  """``decode`` followed by ``inception_crop`` or ``resize_small`` on the same key becomes one
  op that reads the JPEG header, decodes at a reduced DCT scale and crops: the same boxes from
  the same rng, far fewer pixels decoded."""
  out = []
  i = 0
  while i < len(calls):
    name, args, kwargs, text = calls[i]
    if (name == "decode" and i + 1 < len(calls)
        and calls[i + 1][0] in ("inception_crop", "resize_small")
        and kwargs.get("key", "image") == calls[i + 1][2].get("key", "image")
        and not args and set(kwargs) <= {"key"}):
      nxt = calls[i + 1]
      out.append(("_decode_" + nxt[0], nxt[1], nxt[2], f"{text}|{nxt[3]}"))
      i += 2
      continue
    out.append(calls[i])
    i += 1
  return out


def _size2(size) -> tuple[int, int]:
  if isinstance(size, int):
    if size <= 0:
      raise ValueError(f"size must be positive, got {size}")
    return size, size
  h, w = size
  return int(h), int(w)


def _keyed(fn, key):
  def op(example, rng):
    example[key] = fn(example[key], rng)
    return example
  return op


def _is_jpeg(data: bytes) -> bool:
  return data[:3] == b"\xff\xd8\xff"


def decode_image(data: bytes, channels: int = 3, min_height: int = 0,
                 min_width: int = 0, fast: bool = False) -> np.ndarray:
  """JPEG through libjpeg-turbo (simplejpeg) at the smallest DCT scale (1/8 .. 1) that keeps
  at least ``min_height`` x ``min_width``; other formats through PIL. ``fast`` uses the
  faster, slightly less exact integer DCT and chroma upsampling (for augmented training)."""
  if _is_jpeg(data) and _simplejpeg is not None:
    try:
      if min_height or min_width:  # never ask for more than the full size (an error there)
        h, w, _, _ = _simplejpeg.decode_jpeg_header(data)
        min_height, min_width = min(min_height, h), min(min_width, w)
      out = _simplejpeg.decode_jpeg(data, colorspace="GRAY" if channels == 1 else "RGB",
                                    min_height=min_height, min_width=min_width,
                                    fastdct=fast, fastupsample=fast)
      return out if out.ndim == 3 else out[..., None]
    except ValueError:
      pass  # unusual JPEGs (CMYK, ...): PIL below
  with Image.open(io.BytesIO(data)) as im:
    if min_height or min_width:
      im.draft("L" if channels == 1 else "RGB", (min_width, min_height))
    return np.asarray(im.convert("L" if channels == 1 else "RGB"))


def jpeg_size(data: bytes) -> tuple[int, int] | None:
  """(height, width) from a JPEG header without decoding, or None."""
  if not (_is_jpeg(data) and _simplejpeg is not None):
    return None
  try:
    h, w, _, _ = _simplejpeg.decode_jpeg_header(data)
    return h, w
  except ValueError:
    return None


try:
  import simplejpeg as _simplejpeg
except ImportError:  # optional: PIL decodes everything, more slowly
  _simplejpeg = None


@register("decode")
def _decode(channels: int = 3, key: str = "image"):
  """Encoded bytes -> HxWxC uint8; arrays pass through (built-in and TFDS images)."""
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}")
  def fn(img, rng):
    if isinstance(img, (bytes, bytearray)):
      img = decode_image(bytes(img), channels)
    img = np.asarray(img)
    if img.ndim == 2:
      img = img[..., None]
    if channels == 3 and img.shape[-1] == 1:
      img = np.repeat(img, 3, axis=-1)
    return img
  return _keyed(fn, key)


@register("to_rgb")
def _to_rgb(key: str = "image"):
  def fn(img, rng):
    img = np.asarray(img)
    if img.ndim == 2:
      img = img[..., None]
    return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3]
  return _keyed(fn, key)


try:  # OpenCV's resize is ~8x faster than PIL's; PIL is the fallback
  import cv2 as _cv2
  _cv2.setNumThreads(1)  # parallelism comes from the pipeline's threads, one image each
except ImportError:
  _cv2 = None

_CV2_METHODS = {"bilinear": "INTER_LINEAR", "bicubic": "INTER_CUBIC", "nearest": "INTER_NEAREST",
                "area": "INTER_AREA"}


def _resize_image(img: np.ndarray, h: int, w: int, method: str) -> np.ndarray:
  """Resizes HxWxC to h x w: OpenCV when installed (the fast path), else PIL."""
  img = np.asarray(img)
  if _cv2 is not None and img.dtype in (np.uint8, np.float32) and img.shape[-1] <= 4:
    interp = getattr(_cv2, _CV2_METHODS[method])
    if method == "bilinear" and (h < img.shape[0] / 2 and w < img.shape[1] / 2):
      interp = _cv2.INTER_AREA  # strong downscaling: average, do not alias
    out = _cv2.resize(img, (w, h), interpolation=interp)
    return out[..., None] if out.ndim == 2 else out
  return _resize_pil(img, h, w, method)


def _resize_pil(img: np.ndarray, h: int, w: int, method: str) -> np.ndarray:
  resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
              "area": Image.BOX}[method]
  img = np.asarray(img)
  if img.dtype != np.uint8:
    # Float images: resize each channel in float mode.
    chans = [np.asarray(Image.fromarray(img[..., c].astype(np.float32), mode="F").resize(
        (w, h), resample)) for c in range(img.shape[-1])]
    return np.stack(chans, axis=-1)
  squeeze = img.shape[-1] == 1
  im = Image.fromarray(img[..., 0] if squeeze else img)
  out = np.asarray(im.resize((w, h), resample))
  return out[..., None] if squeeze else out


_METHODS = ("bilinear", "bicubic", "nearest", "area")


def _check_method(method):
  if method not in _METHODS:
    raise ValueError(f"method must be one of {_METHODS}, got {method!r}")


@register("resize")
def _resize(size, method: str = "bilinear", key: str = "image"):
  h, w = _size2(size)
  _check_method(method)
  return _keyed(lambda img, rng: _resize_image(img, h, w, method), key)


@register("resize_small")
def _resize_small(size: int, method: str = "bilinear", key: str = "image"):
  """Resizes so that the shorter side is ``size``, keeping the aspect ratio."""
  _size2(size)
  _check_method(method)
  def fn(img, rng):
    h, w = img.shape[:2]
    s = size / min(h, w)
    return _resize_image(img, max(1, round(h * s)), max(1, round(w * s)), method)
  return _keyed(fn, key)


@register("central_crop")
def _central_crop(size, key: str = "image"):
  ch, cw = _size2(size)
  def fn(img, rng):
    h, w = img.shape[:2]
    if h < ch or w < cw:
      raise ValueError(f"central_crop({size}) of a {h}x{w} image")
    t, l = (h - ch) // 2, (w - cw) // 2
    return img[t:t + ch, l:l + cw]
  return _keyed(fn, key)


@register("random_crop")
def _random_crop(size, key: str = "image"):
  ch, cw = _size2(size)
  def fn(img, rng):
    h, w = img.shape[:2]
    if h < ch or w < cw:
      raise ValueError(f"random_crop({size}) of a {h}x{w} image")
    t, l = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return img[t:t + ch, l:l + cw]
  return _keyed(fn, key)


def _inception_box(h, w, rng, area_min, area_max, ratio=(3 / 4, 4 / 3), tries=10):
  area = h * w
  for _ in range(tries):
    target = area * rng.uniform(area_min, area_max)
    log_r = rng.uniform(np.log(ratio[0]), np.log(ratio[1]))
    r = np.exp(log_r)
    cw, ch = int(round(np.sqrt(target * r))), int(round(np.sqrt(target / r)))
    if 0 < cw <= w and 0 < ch <= h:
      return rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1), ch, cw
  # Fall back to a central crop at the clamped aspect ratio (as torchvision does).
  r = w / h
  if r < ratio[0]:
    cw, ch = w, int(round(w / ratio[0]))
  elif r > ratio[1]:
    ch, cw = h, int(round(h * ratio[1]))
  else:
    ch, cw = h, w
  return (h - ch) // 2, (w - cw) // 2, ch, cw


@register("inception_crop")
def _inception_crop(size, area_min: float = 0.08, area_max: float = 1.0,
                    method: str = "bilinear", key: str = "image"):
  """Random resized crop: random area fraction and aspect ratio, resized to ``size``."""
  oh, ow = _size2(size)
  _check_method(method)
  if not 0 < area_min <= area_max <= 1:
    raise ValueError(f"need 0 < area_min <= area_max <= 1, got {area_min}, {area_max}")
  def fn(img, rng):
    h, w = img.shape[:2]
    t, l, ch, cw = _inception_box(h, w, rng, area_min, area_max)
    return _resize_image(img[t:t + ch, l:l + cw], oh, ow, method)
  return _keyed(fn, key)


def _flip(img):
  img = np.asarray(img)
  if _cv2 is not None and img.dtype in (np.uint8, np.float32) and img.shape[-1] <= 4:
    out = _cv2.flip(img, 1)
    return out[..., None] if out.ndim == 2 else out
  if img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] in (1, 3):
    # PIL's transpose is ~4x faster than numpy's copy of a negative-stride view, and the
    # result is contiguous, so later float conversions stay fast too.
    squeeze = img.shape[-1] == 1
    out = np.asarray(Image.fromarray(img[..., 0] if squeeze else img).transpose(
        Image.FLIP_LEFT_RIGHT))
    return out[..., None] if squeeze else out
  return np.ascontiguousarray(img[:, ::-1])


@register("flip_lr")
def _flip_lr(p: float = 0.5, key: str = "image"):
  return _keyed(lambda img, rng: _flip(img) if rng.random() < p else img, key)


def _affine_channels(img, scale, shift) -> np.ndarray:
  """float32(img) * scale + shift per channel. Broadcasting over a last axis of 3 runs numpy's
  inner loop 3 elements at a time; on rows of W*C elements it is ~10x faster."""
  out = np.asarray(img).astype(np.float32)
  scale, shift = np.broadcast_to(scale, out.shape[-1:]), np.broadcast_to(shift, out.shape[-1:])
  if out.ndim == 3:
    rows = out.reshape(out.shape[0], -1)
    rows *= np.tile(scale, out.shape[1])
    rows += np.tile(shift, out.shape[1])
    return out
  out *= scale
  out += shift
  return out


def _value_range_affine(vmin: float = -1.0, vmax: float = 1.0, in_min: float = 0.0,
                        in_max: float = 255.0, key: str = "image"):
  scale = np.float32((vmax - vmin) / (in_max - in_min))
  shift = np.float32(vmin - in_min * (vmax - vmin) / (in_max - in_min))
  return key, scale, shift


@register("value_range")
def _value_range(*args, **kwargs):
  key, scale, shift = _value_range_affine(*args, **kwargs)
  return _keyed(lambda img, rng: _affine_channels(img, scale, shift), key)


MEAN_STD = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}


def _normalize_affine(mean="imagenet", std=None, key: str = "image"):
  if isinstance(mean, str):
    if mean not in MEAN_STD:
      raise ValueError(f"unknown preset {mean!r} (known: {', '.join(MEAN_STD)})")
    mean, std = MEAN_STD[mean]
  if std is None:
    raise ValueError("normalize needs std with an explicit mean")
  # (x - m) / s as one multiply-add on a float32 copy: x * (1/s) + (-m/s).
  scale = (1.0 / (np.asarray(std, np.float32) * 255.0)).astype(np.float32)
  shift = (-np.asarray(mean, np.float32) * 255.0 * scale).astype(np.float32)
  return key, scale, shift


@register("normalize")
def _normalize(*args, **kwargs):
  """(x/255 - mean) / std, with named presets ('imagenet', 'clip') or explicit tuples."""
  key, scale, shift = _normalize_affine(*args, **kwargs)
  return _keyed(lambda img, rng: _affine_channels(img, scale, shift), key)


_AFFINE_OPS = {"value_range": _value_range_affine, "normalize": _normalize_affine}


def split_device_affine(spec: str) -> tuple[str, tuple]:
  """(host op string, device affines): the trailing ``value_range`` / ``normalize`` ops of an op
  string, as (key, scale, shift) per-channel multiply-adds to run on the accelerator inside
  the jitted step (``apply_affine``). The host then ships uint8 images — a quarter of the
  bytes — and skips a float pass over every pixel. Ops after them stay where they are (e.g.
  ``random_erasing`` after ``normalize``: then nothing moves)."""
  parts = [t for t in _split_ops(spec) if t.strip()]
  tail = []
  while parts:
    name, args, kwargs = _parse_call(parts[-1])
    if name not in _AFFINE_OPS:
      break
    try:
      tail.insert(0, _AFFINE_OPS[name](*args, **kwargs))
    except (TypeError, ValueError) as e:
      raise PreprocessError(f"preprocessing op {parts[-1].strip()!r}: bad argument ({e})"
                            ) from None
    parts.pop()
  return "|".join(p.strip() for p in parts), tuple(tail)


def apply_affine(batch: dict, affines) -> dict:
  """The device half of ``split_device_affine``: float32(x) * scale + shift per channel, rounded
  after the multiply and after the add as on the host (the barrier keeps XLA from fusing them
  into one FMA, which it does differently on different meshes)."""
  if not affines:
    return batch
  batch = dict(batch)
  for key, scale, shift in affines:
    scaled = jax.lax.optimization_barrier(batch[key].astype(jnp.float32) * jnp.asarray(scale))
    batch[key] = scaled + jnp.asarray(shift)
  return batch


@register("keep")
def _keep(*keys):
  if not keys:
    raise ValueError("keep needs at least one key")
  def op(example, rng):
    missing = [k for k in keys if k not in example]
    if missing:
      raise KeyError(f"keep: example has no key {missing[0]!r} (has {sorted(example)})")
    return {k: example[k] for k in keys}
  return op


@register("copy")
def _copy(**mapping):
  """copy(new='old'): the value of ``old`` also under ``new`` (e.g. to augment an image for
  two purposes, as SLIP does)."""
  if not mapping:
    raise ValueError("copy needs new='old' pairs")
  def op(example, rng):
    example = dict(example)
    for new, old in mapping.items():
      example[new] = example[old]
    return example
  return op


@register("rename")
def _rename(**mapping):
  def op(example, rng):
    example = dict(example)
    for new, old in mapping.items():
      example[new] = example.pop(old)
    return example
  return op


# ----------------------------------------------------------------------------- colour and
# geometry augmentations (uint8 in, uint8 out; SimCLR / RandAugment building blocks)

def _check_p(p):
  if not 0 <= p <= 1:
    raise ValueError(f"probability p={p} is not in [0, 1]")


def _as_uint8_rgb(img):
  img = np.asarray(img)
  if img.dtype != np.uint8:
    raise ValueError("colour ops expect uint8 images: put them before value_range/normalize")
  return img


def _gray(img):
  f = img.astype(np.float32)
  g = f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114 if img.shape[-1] == 3 else f[..., 0]
  return g[..., None]


def _blend(a, b, factor):
  """factor * a + (1 - factor) * b, as PIL's ImageEnhance: factor 1 keeps a."""
  return np.clip(b + factor * (a.astype(np.float32) - b), 0, 255)


def _adjust_hue(img, delta):
  hsv = np.asarray(Image.fromarray(img).convert("HSV")).copy()
  hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(delta * 255))) % 256
  return np.asarray(Image.fromarray(hsv, mode="HSV").convert("RGB"))


@register("color_jitter")
def _color_jitter(brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                  hue: float = 0.1, p: float = 1.0, key: str = "image"):
  """SimCLR's colour distortion: brightness, contrast, saturation, hue in a random order."""
  _check_p(p)
  if not 0 <= hue <= 0.5:
    raise ValueError(f"hue={hue} is not in [0, 0.5]")
  def fn(img, rng):
    img = _as_uint8_rgb(img)
    if rng.random() >= p:
      return img
    out = img.astype(np.float32)
    for t in rng.permutation(4):
      if t == 0 and brightness:
        out = _blend(out, 0.0, rng.uniform(1 - brightness, 1 + brightness))
      elif t == 1 and contrast:
        out = _blend(out, _gray(out.astype(np.uint8)).mean(),
                     rng.uniform(1 - contrast, 1 + contrast))
      elif t == 2 and saturation and out.shape[-1] == 3:
        out = _blend(out, _gray(out.astype(np.uint8)), rng.uniform(1 - saturation,
                                                                   1 + saturation))
      elif t == 3 and hue and out.shape[-1] == 3:
        out = _adjust_hue(out.astype(np.uint8), rng.uniform(-hue, hue)).astype(np.float32)
    return out.astype(np.uint8)
  return _keyed(fn, key)


@register("grayscale")
def _grayscale(p: float = 1.0, key: str = "image"):
  """Random grayscale (3 channels kept)."""
  _check_p(p)
  def fn(img, rng):
    img = _as_uint8_rgb(img)
    if rng.random() >= p:
      return img
    return np.repeat(np.round(_gray(img)), img.shape[-1], axis=-1).astype(np.uint8)
  return _keyed(fn, key)


@register("gaussian_blur")
def _gaussian_blur(sigma_min: float = 0.1, sigma_max: float = 2.0, p: float = 0.5,
                   key: str = "image"):
  """Blur with sigma drawn uniformly from [sigma_min, sigma_max] (SimCLR: 10% of the side)."""
  _check_p(p)
  if not 0 < sigma_min <= sigma_max:
    raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
  def fn(img, rng):
    img = _as_uint8_rgb(img)
    if rng.random() >= p:
      return img
    squeeze = img.shape[-1] == 1
    im = Image.fromarray(img[..., 0] if squeeze else img)
    out = np.asarray(im.filter(ImageFilter.GaussianBlur(rng.uniform(sigma_min, sigma_max))))
    return out[..., None] if squeeze else out
  return _keyed(fn, key)


@register("solarize")
def _solarize(threshold: int = 128, p: float = 0.2, key: str = "image"):
  _check_p(p)
  def fn(img, rng):
    img = _as_uint8_rgb(img)
    if rng.random() >= p:
      return img
    return np.where(img >= threshold, 255 - img, img).astype(np.uint8)
  return _keyed(fn, key)


# RandAugment as timm 0.4.12 builds 'rand-m{M}-mstd{S}-inc1' (what the authors' fine-tuning
# used): its 15 ops in its order, each with its level -> argument rule. ``level`` is the
# magnitude in [0, 10]; ``sign`` is the op's random direction (timm's _randomly_negate);
# ``fill`` the colour of uncovered pixels (timm: the normalisation mean x 255) and ``resample``
# the interpolation of geometric ops (timm: the crop's, bicubic here).
def _solarize_add(im, add, thresh=128):
  lut = [min(255, i + add) if i < thresh else i for i in range(256)]
  return im.point(lut * len(im.getbands()))


def _affine(coeffs):
  return lambda im, level, sign, fill, resample: im.transform(
      im.size, Image.AFFINE, coeffs(im, sign * level), resample=resample, fillcolor=fill)


def _enhance(cls):
  return lambda im, level, sign, fill, resample: cls(im).enhance(1.0 + sign * level / 10 * 0.9)


def _posterize_increasing(im, level, sign, fill, resample):
  bits = 4 - int(level / 10 * 4)
  if bits <= 0:  # level 10 keeps no bit: black, as the Pillow timm 0.4.12 ran on gave
    return im.point(lambda v: 0)
  return im if bits >= 8 else ImageOps.posterize(im, bits)


TIMM_RA_OPS = {
    "AutoContrast": lambda im, level, sign, fill, resample: ImageOps.autocontrast(im),
    "Equalize": lambda im, level, sign, fill, resample: ImageOps.equalize(im),
    "Invert": lambda im, level, sign, fill, resample: ImageOps.invert(im),
    "Rotate": lambda im, level, sign, fill, resample: im.rotate(
        sign * level / 10 * 30.0, resample=resample, fillcolor=fill),
    "PosterizeIncreasing": _posterize_increasing,
    "SolarizeIncreasing": lambda im, level, sign, fill, resample: ImageOps.solarize(
        im, 256 - int(level / 10 * 256)),
    "SolarizeAdd": lambda im, level, sign, fill, resample: _solarize_add(
        im, int(level / 10 * 110)),
    "ColorIncreasing": _enhance(ImageEnhance.Color),
    "ContrastIncreasing": _enhance(ImageEnhance.Contrast),
    "BrightnessIncreasing": _enhance(ImageEnhance.Brightness),
    "SharpnessIncreasing": _enhance(ImageEnhance.Sharpness),
    "ShearX": _affine(lambda im, v: (1, v / 10 * 0.3, 0, 0, 1, 0)),
    "ShearY": _affine(lambda im, v: (1, 0, 0, v / 10 * 0.3, 1, 0)),
    "TranslateXRel": _affine(lambda im, v: (1, 0, v / 10 * 0.45 * im.size[0], 0, 1, 0)),
    "TranslateYRel": _affine(lambda im, v: (1, 0, 0, 0, 1, v / 10 * 0.45 * im.size[1])),
}
_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
# timm's fill: the ImageNet mean x 255, rounded (its aa_params img_mean).
IMAGENET_FILL = (124, 116, 104)


@register("randaugment")
def _randaugment(num_layers: int = 2, magnitude: float = 9, magnitude_std: float = 0.5,
                 p: float = 0.5, fill: tuple = IMAGENET_FILL, resample: str = "bicubic",
                 key: str = "image"):
  """RandAugment as timm 0.4.12's ``rand-m9-mstd0.5-inc1`` (the authors' fine-tuning):
  ``num_layers`` ops drawn uniformly with replacement from its 15 (AutoContrast, Equalize,
  Invert, Rotate, PosterizeIncreasing, SolarizeIncreasing, SolarizeAdd, Color/Contrast/
  Brightness/SharpnessIncreasing, ShearX/Y, TranslateX/YRel; no Identity), each applied with
  probability ``p`` at a magnitude ~ N(magnitude, magnitude_std) clipped to [0, 10]."""
  if not 0 <= magnitude <= 10 or num_layers < 1:
    raise ValueError(f"need num_layers >= 1 and magnitude in [0, 10], got {num_layers}, "
                     f"{magnitude}")
  _check_p(p)
  if resample not in _RESAMPLE:
    raise ValueError(f"resample={resample!r}: one of {', '.join(_RESAMPLE)}")
  names = list(TIMM_RA_OPS)
  method = _RESAMPLE[resample]
  def fn(img, rng):
    img = _as_uint8_rgb(img)
    squeeze = img.shape[-1] == 1
    im = Image.fromarray(img[..., 0] if squeeze else img)
    colour = int(fill[0]) if squeeze else tuple(int(v) for v in fill)
    for i in rng.integers(len(names), size=num_layers):
      if rng.random() >= p:
        continue
      level = float(np.clip(rng.normal(magnitude, magnitude_std) if magnitude_std
                            else magnitude, 0, 10))
      sign = -1.0 if rng.random() > 0.5 else 1.0
      im = TIMM_RA_OPS[names[i]](im, level, sign, colour, method)
    out = np.asarray(im)
    return out[..., None] if squeeze else out
  return _keyed(fn, key)


@register("random_erasing")
def _random_erasing(p: float = 0.25, area_min: float = 0.02, area_max: float = 1 / 3,
                    key: str = "image"):
  """Erases a random rectangle with per-pixel normal noise (timm's mode 'pixel'); use after
  normalisation, on float images."""
  _check_p(p)
  def fn(img, rng):
    img = np.array(img, np.float32)
    if rng.random() >= p:
      return img
    h, w = img.shape[:2]
    for _ in range(10):
      area = h * w * rng.uniform(area_min, area_max)
      r = np.exp(rng.uniform(np.log(0.3), np.log(1 / 0.3)))
      eh, ew = int(round(np.sqrt(area * r))), int(round(np.sqrt(area / r)))
      if 0 < eh < h and 0 < ew < w:
        t, l = rng.integers(0, h - eh + 1), rng.integers(0, w - ew + 1)
        img[t:t + eh, l:l + ew] = rng.normal(size=(eh, ew, img.shape[-1]))
        break
    return img
  return _keyed(fn, key)


@register("two_views")
def _two_views(pp: str, pp2: str | None = None, key: str = "image",
               out: tuple = ("image1", "image2")):
  """Two independently augmented views of ``key`` (SimCLR): ``pp`` for the first, ``pp2``
  (default: ``pp``) for the second, each with its own randomness."""
  first = parse(pp)
  second = parse(pp2) if pp2 else first
  def op(example, rng):
    example = dict(example)
    src = example.pop(key)
    # The view op strings are written for an image under 'image', whatever ``key`` is.
    v1 = first({"image": src}, np.random.default_rng(rng.integers(2**63)))["image"]
    v2 = second({"image": src}, np.random.default_rng(rng.integers(2**63)))["image"]
    example[out[0]], example[out[1]] = v1, v2
    return example
  return op


@register("tokenize")
def _tokenize(max_len: int | None = None, vocab: str | None = None, key: str = "caption",
              out: str = "text"):
  """Caption text -> ``max_len`` int32 BPE ids ([SOT] ids [EOT], truncated with EOT kept,
  0-padded). ``vocab``: a merges file; the trainer binds ``vocab`` and ``max_len`` from
  ``config.text`` when the op string leaves them out."""
  if max_len is not None and max_len < 2:
    raise ValueError(f"max_len={max_len} leaves no room for the start and end tokens")
  if vocab is not None and not isinstance(vocab, str):
    raise ValueError(f"vocab must be a path, got {vocab!r}")

  def op(example, rng):
    if vocab is None or max_len is None:
      raise PreprocessError("tokenize: no vocabulary or length (set config.text.tokenizer "
                            "and config.text.context_length, or tokenize(77, vocab='PATH'))")
    text = example.pop(key) if key != out else example[key]
    if isinstance(text, (bytes, np.bytes_)):
      text = bytes(text).decode("utf-8", "replace")
    text = str(text)
    if not text.strip():
      raise ValueError(f"empty {key!r}")
    example[out] = tokenizer.load(vocab).tokenize(text, max_len)[0]
    return example
  return op


def known_ops() -> list[str]:
  return sorted(k for k in REGISTRY if not k.startswith("_"))


def _pow2_divisor(scale: float) -> int:
  """The largest of 8, 4, 2, 1 whose 1/d still covers ``scale``. libjpeg-turbo decodes at
  1/2, 1/4, 1/8 with SIMD; its other n/8 scales are slower than a full-size decode."""
  for d in (8, 4, 2):
    if scale <= 1 / d:
      return d
  return 1


@register("_decode_inception_crop")
def _decode_inception_crop(size, area_min: float = 0.08, area_max: float = 1.0,
                           method: str = "bilinear", key: str = "image"):
  plain = _inception_crop(size, area_min, area_max, method, key)
  oh, ow = _size2(size)

  def op(example, rng):
    data = example[key]
    hw = jpeg_size(data) if isinstance(data, (bytes, bytearray)) else None
    if hw is None:  # arrays or non-JPEG: decode fully, then the ordinary crop
      example[key] = _decode(key=key)({key: data}, rng)[key]
      return plain(example, rng)
    h, w = hw
    t, l, ch, cw = _inception_box(h, w, rng, area_min, area_max)
    s = max(oh / ch, ow / cw)  # the least scale that keeps the crop >= the output size
    d = _pow2_divisor(s)
    img = decode_image(bytes(data), 3, min_height=-(-h // d), min_width=-(-w // d), fast=True)
    sh, sw = img.shape[0] / h, img.shape[1] / w
    t2, l2 = int(t * sh), int(l * sw)
    ch2, cw2 = max(1, int(round(ch * sh))), max(1, int(round(cw * sw)))
    example[key] = _resize_image(img[t2:t2 + ch2, l2:l2 + cw2], oh, ow, method)
    return example
  return op


@register("_decode_resize_small")
def _decode_resize_small(size: int, method: str = "bilinear", key: str = "image"):
  plain = _resize_small(size, method, key)

  def op(example, rng):
    data = example[key]
    hw = jpeg_size(data) if isinstance(data, (bytes, bytearray)) else None
    if hw is None:
      example[key] = _decode(key=key)({key: data}, rng)[key]
      return plain(example, rng)
    h, w = hw
    d = _pow2_divisor(size / min(h, w))
    example[key] = decode_image(bytes(data), 3, min_height=-(-h // d), min_width=-(-w // d))
    return plain(example, rng)
  return op
