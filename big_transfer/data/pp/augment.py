"""Augmentations: colour jitter, grayscale, blur, solarize (SimCLR), timm's RandAugment and
random erasing (the authors' fine-tuning), and SimCLR's two views."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from big_transfer.data.pp.registry import _keyed, parse, register

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
def _color_jitter(
  brightness: float = 0.4,
  contrast: float = 0.4,
  saturation: float = 0.4,
  hue: float = 0.1,
  p: float = 1.0,
  key: str = "image",
):
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
        out = _blend(
          out, _gray(out.astype(np.uint8)).mean(), rng.uniform(1 - contrast, 1 + contrast)
        )
      elif t == 2 and saturation and out.shape[-1] == 3:
        out = _blend(out, _gray(out.astype(np.uint8)), rng.uniform(1 - saturation, 1 + saturation))
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
def _gaussian_blur(
  sigma_min: float = 0.1, sigma_max: float = 2.0, p: float = 0.5, key: str = "image"
):
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
    im.size, Image.AFFINE, coeffs(im, sign * level), resample=resample, fillcolor=fill
  )


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
    sign * level / 10 * 30.0, resample=resample, fillcolor=fill
  ),
  "PosterizeIncreasing": _posterize_increasing,
  "SolarizeIncreasing": lambda im, level, sign, fill, resample: ImageOps.solarize(
    im, 256 - int(level / 10 * 256)
  ),
  "SolarizeAdd": lambda im, level, sign, fill, resample: _solarize_add(im, int(level / 10 * 110)),
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
def _randaugment(
  num_layers: int = 2,
  magnitude: float = 9,
  magnitude_std: float = 0.5,
  p: float = 0.5,
  fill: tuple = IMAGENET_FILL,
  resample: str = "bicubic",
  key: str = "image",
):
  """RandAugment as timm 0.4.12's ``rand-m9-mstd0.5-inc1`` (the authors' fine-tuning):
  ``num_layers`` ops drawn uniformly with replacement from its 15 (AutoContrast, Equalize,
  Invert, Rotate, PosterizeIncreasing, SolarizeIncreasing, SolarizeAdd, Color/Contrast/
  Brightness/SharpnessIncreasing, ShearX/Y, TranslateX/YRel; no Identity), each applied with
  probability ``p`` at a magnitude ~ N(magnitude, magnitude_std) clipped to [0, 10]."""
  if not 0 <= magnitude <= 10 or num_layers < 1:
    raise ValueError(
      f"need num_layers >= 1 and magnitude in [0, 10], got {num_layers}, {magnitude}"
    )
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
      level = float(
        np.clip(rng.normal(magnitude, magnitude_std) if magnitude_std else magnitude, 0, 10)
      )
      sign = -1.0 if rng.random() > 0.5 else 1.0
      im = TIMM_RA_OPS[names[i]](im, level, sign, colour, method)
    out = np.asarray(im)
    return out[..., None] if squeeze else out

  return _keyed(fn, key)


@register("random_erasing")
def _random_erasing(
  p: float = 0.25, area_min: float = 0.02, area_max: float = 1 / 3, key: str = "image"
):
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
        img[t : t + eh, l : l + ew] = rng.normal(size=(eh, ew, img.shape[-1]))
        break
    return img

  return _keyed(fn, key)


@register("two_views")
def _two_views(
  pp: str, pp2: str | None = None, key: str = "image", out: tuple = ("image1", "image2")
):
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
