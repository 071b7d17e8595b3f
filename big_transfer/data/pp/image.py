"""Image ops: decode (JPEG at a reduced DCT scale when fused with the crop after it), colour
conversion, resizes, crops and flips. uint8 in, uint8 out."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from big_transfer.data.pp.registry import _keyed, _size2, register


def _is_jpeg(data: bytes) -> bool:
  return data[:3] == b"\xff\xd8\xff"


def decode_image(
  data: bytes, channels: int = 3, min_height: int = 0, min_width: int = 0, fast: bool = False
) -> np.ndarray:
  """JPEG through libjpeg-turbo (simplejpeg) at the smallest DCT scale (1/8 .. 1) that keeps
  at least ``min_height`` x ``min_width``; other formats through PIL. ``fast`` uses the
  faster, slightly less exact integer DCT and chroma upsampling (for augmented training)."""
  if _is_jpeg(data) and _simplejpeg is not None:
    try:
      if min_height or min_width:  # never ask for more than the full size (an error there)
        h, w, _, _ = _simplejpeg.decode_jpeg_header(data)
        min_height, min_width = min(min_height, h), min(min_width, w)
      out = _simplejpeg.decode_jpeg(
        data,
        colorspace="GRAY" if channels == 1 else "RGB",
        min_height=min_height,
        min_width=min_width,
        fastdct=fast,
        fastupsample=fast,
      )
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


@register("decode", deterministic=True)
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


@register("to_rgb", deterministic=True)
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

_CV2_METHODS = {
  "bilinear": "INTER_LINEAR",
  "bicubic": "INTER_CUBIC",
  "nearest": "INTER_NEAREST",
  "area": "INTER_AREA",
}


def _resize_image(
  img: np.ndarray, h: int, w: int, method: str, antialias: bool = True
) -> np.ndarray:
  """Resizes HxWxC to h x w. ``antialias`` (the default) resamples as PIL does — the filter
  widened by the reduction when downscaling, so fine detail is averaged rather than aliased,
  and PIL's bicubic kernel (a = -0.5, torchvision's on PIL images) both ways: bicubic always
  and bilinear downscales go through PIL; bilinear upscales (the same filter in both
  libraries) and nearest/area go through OpenCV. ``antialias=False``: OpenCV throughout
  (~3-8x faster on large reductions, aliasing on fine detail; a strong bilinear reduction
  averages by area)."""
  img = np.asarray(img)
  fast = _cv2 is not None and img.dtype in (np.uint8, np.float32) and img.shape[-1] <= 4
  if antialias and method in ("bilinear", "bicubic"):
    reduces = h < img.shape[0] or w < img.shape[1]
    if method == "bicubic" or reduces or not fast:
      return _resize_pil(img, h, w, method)
  if fast:
    interp = getattr(_cv2, _CV2_METHODS[method])
    if method == "bilinear" and (h < img.shape[0] / 2 and w < img.shape[1] / 2):
      interp = _cv2.INTER_AREA  # strong downscaling: average, do not alias
    out = _cv2.resize(img, (w, h), interpolation=interp)
    return out[..., None] if out.ndim == 2 else out
  return _resize_pil(img, h, w, method)


def _resize_pil(img: np.ndarray, h: int, w: int, method: str) -> np.ndarray:
  resample = {
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "nearest": Image.NEAREST,
    "area": Image.BOX,
  }[method]
  img = np.asarray(img)
  if img.dtype != np.uint8:
    # Float images: resize each channel in float mode.
    chans = [
      np.asarray(Image.fromarray(img[..., c].astype(np.float32), mode="F").resize((w, h), resample))
      for c in range(img.shape[-1])
    ]
    return np.stack(chans, axis=-1)
  squeeze = img.shape[-1] == 1
  im = Image.fromarray(img[..., 0] if squeeze else img)
  out = np.asarray(im.resize((w, h), resample))
  return out[..., None] if squeeze else out


_METHODS = ("bilinear", "bicubic", "nearest", "area")


def _check_method(method):
  if method not in _METHODS:
    raise ValueError(f"method must be one of {_METHODS}, got {method!r}")


@register("resize", deterministic=True)
def _resize(size, method: str = "bilinear", antialias: bool = True, key: str = "image"):
  h, w = _size2(size)
  _check_method(method)
  return _keyed(lambda img, rng: _resize_image(img, h, w, method, antialias), key)


@register("resize_small", deterministic=True)
def _resize_small(size: int, method: str = "bilinear", antialias: bool = True, key: str = "image"):
  """Resizes so that the shorter side is ``size``, keeping the aspect ratio."""
  _size2(size)
  _check_method(method)

  def fn(img, rng):
    h, w = img.shape[:2]
    s = size / min(h, w)
    return _resize_image(img, max(1, round(h * s)), max(1, round(w * s)), method, antialias)

  return _keyed(fn, key)


@register("central_crop", deterministic=True)
def _central_crop(size, key: str = "image"):
  ch, cw = _size2(size)

  def fn(img, rng):
    h, w = img.shape[:2]
    if h < ch or w < cw:
      raise ValueError(f"central_crop({size}) of a {h}x{w} image")
    t, l = (h - ch) // 2, (w - cw) // 2
    return img[t : t + ch, l : l + cw]

  return _keyed(fn, key)


@register("random_crop")
def _random_crop(size, key: str = "image"):
  ch, cw = _size2(size)

  def fn(img, rng):
    h, w = img.shape[:2]
    if h < ch or w < cw:
      raise ValueError(f"random_crop({size}) of a {h}x{w} image")
    t, l = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return img[t : t + ch, l : l + cw]

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
def _inception_crop(
  size,
  area_min: float = 0.08,
  area_max: float = 1.0,
  method: str = "bilinear",
  antialias: bool = True,
  key: str = "image",
):
  """Random resized crop: random area fraction and aspect ratio, resized to ``size``."""
  oh, ow = _size2(size)
  _check_method(method)
  if not 0 < area_min <= area_max <= 1:
    raise ValueError(f"need 0 < area_min <= area_max <= 1, got {area_min}, {area_max}")

  def fn(img, rng):
    h, w = img.shape[:2]
    t, l, ch, cw = _inception_box(h, w, rng, area_min, area_max)
    return _resize_image(img[t : t + ch, l : l + cw], oh, ow, method, antialias)

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
    out = np.asarray(
      Image.fromarray(img[..., 0] if squeeze else img).transpose(Image.FLIP_LEFT_RIGHT)
    )
    return out[..., None] if squeeze else out
  return np.ascontiguousarray(img[:, ::-1])


@register("flip_lr")
def _flip_lr(p: float = 0.5, key: str = "image"):
  return _keyed(lambda img, rng: _flip(img) if rng.random() < p else img, key)


def _pow2_divisor(scale: float) -> int:
  """The largest of 8, 4, 2, 1 whose 1/d still covers ``scale``. libjpeg-turbo decodes at
  1/2, 1/4, 1/8 with SIMD; its other n/8 scales are slower than a full-size decode."""
  for d in (8, 4, 2):
    if scale <= 1 / d:
      return d
  return 1


@register("_decode_inception_crop")
def _decode_inception_crop(
  size,
  area_min: float = 0.08,
  area_max: float = 1.0,
  method: str = "bilinear",
  antialias: bool = True,
  key: str = "image",
):
  plain = _inception_crop(size, area_min, area_max, method, antialias, key)
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
    example[key] = _resize_image(img[t2 : t2 + ch2, l2 : l2 + cw2], oh, ow, method, antialias)
    return example

  return op


@register("_decode_resize_small", deterministic=True)
def _decode_resize_small(
  size: int, method: str = "bilinear", antialias: bool = True, key: str = "image"
):
  plain = _resize_small(size, method, antialias, key)

  def op(example, rng):
    data = example[key]
    hw = jpeg_size(data) if isinstance(data, (bytes, bytearray)) else None
    if hw is None:
      example[key] = _decode(key=key)({key: data}, rng)[key]
      return plain(example, rng)
    h, w = hw
    # Antialiased: the full decode, so the chain is PIL's to the pixel (a reduced DCT scale is
    # an approximation of the average: up to ~3/255 mean on fine detail). Not: the reduced
    # scale, as fast as decoding gets.
    d = 1 if antialias else _pow2_divisor(size / min(h, w))
    example[key] = decode_image(bytes(data), 3, min_height=-(-h // d), min_width=-(-w // d))
    return plain(example, rng)

  return op
