"""Built-in offline datasets: usable with no download, deterministic."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DIGITS_CLASSES = tuple(str(i) for i in range(10))


@functools.cache
def _digits_arrays():
  # Lazy: +0.8 s at start-up, for builtin:digits only. It ships the 1,797 real 8x8 UCI images.
  from sklearn.datasets import load_digits

  d = load_digits()
  # 0..16 grey levels -> 0..255, one channel.
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = d.target.astype(np.int64)
  # A fixed permutation, then 80% train / 20% test: stable across machines and versions.
  perm = np.random.default_rng(20230227).permutation(len(labels))
  return images[perm], labels[perm]


class DigitsSource:
  """scikit-learn's bundled handwritten digits: 1,437 train and 360 test images, 8x8 grey."""

  SPLITS = {"train": (0, 1437), "test": (1437, 1797)}
  OPTIONS: dict = {}

  def __init__(self, split: str = "train"):
    if split not in self.SPLITS:
      raise KeyError(split)
    images, labels = _digits_arrays()
    lo, hi = self.SPLITS[split]
    self.images, self.labels = images[lo:hi], labels[lo:hi]
    self.class_names = DIGITS_CLASSES

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {"image": self.images[i], "label": self.labels[i]}

  def labels_array(self) -> np.ndarray:
    return self.labels


BUILTINS = {"digits": DigitsSource}


def register(name: str, cls) -> None:
  """Adds ``builtin:NAME``: ``cls(split, **options)`` with ``SPLITS`` and ``OPTIONS`` (name ->
  type of the spec's ``?key=value`` options it takes), ``__len__``, ``__getitem__`` -> example
  dict, and optionally ``class_names``. A name registered twice is an error."""
  if name in BUILTINS:
    raise ValueError(f"builtin source {name!r} is registered twice")
  BUILTINS[name] = cls


# ------------------------------------------------------------------ procedurally generated

GLYPH_SETS = {
  "digits": tuple("0123456789"),
  "letters": tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
  "all": tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
}
GLYPH_CAPTIONS = (
  "a handwritten {}",
  "the character {} written by hand",
  "a scan of a {}",
  "a small drawing of {}",
  "{} on a white form",
)
NOISE_WORDS = (
  "vintage",
  "beautiful",
  "stock",
  "photo",
  "free",
  "download",
  "wallpaper",
  "hd",
  "my",
  "new",
  "best",
  "day",
  "summer",
  "image",
  "view",
  "background",
)


@functools.cache
def _font(size: int):
  return ImageFont.load_default(size=size)


def _noisy_caption(rng, true_caption: str, names, templates, noise: float) -> str:
  """With probability ``noise`` the caption is web-like filler or names another class."""
  if rng.random() >= noise:
    return true_caption
  if rng.random() < 0.5:
    return " ".join(rng.choice(NOISE_WORDS, size=rng.integers(2, 6)))
  return templates[rng.integers(len(templates))].format(names[rng.integers(len(names))])


class _Generated:
  """A generated source: ``n`` examples per split, each a pure function of
  (seed, stream + split, index)."""

  SPLITS = {"train": 0, "test": 1}
  STREAM = 0  # keeps the randomness of different generators apart

  def __init__(self, split, n, seed, caption_noise):
    if n <= 0:
      raise ValueError(f"n={n} must be positive")
    if not 0 <= caption_noise <= 1:
      raise ValueError(f"caption_noise={caption_noise} not in [0, 1]")
    self.n, self.seed, self.noise = n, seed, caption_noise
    self.split_id = self.SPLITS[split]

  def __len__(self):
    return self.n

  def labels_array(self) -> np.ndarray:
    """Every example's label without rendering it (the label is each rng's first draw)."""
    k = len(self.class_names)
    return np.asarray([self._rng(i).integers(k) for i in range(self.n)], np.int64)

  def _rng(self, i) -> np.random.Generator:
    if not 0 <= i < self.n:
      raise IndexError(i)
    return np.random.default_rng([self.seed, self.STREAM + self.split_id, int(i)])


class GlyphsSource(_Generated):
  """Rendered characters, binarised at 32x32 and reduced to 8x8 by counting pixels in 4x4
  blocks, as the UCI digits were made: a source related to ``digits`` by construction.

  Options: ``classes`` (digits, letters, all), ``n`` (examples per split), ``seed``, ``res``
  (8 or 32), ``caption_noise`` (probability that a caption is web filler or names another
  class). Every example is a pure function of (seed, split, index).
  """

  OPTIONS = {"classes": str, "n": int, "seed": int, "res": int, "caption_noise": float}

  def __init__(self, split="train", classes="digits", n=10000, seed=0, res=8, caption_noise=0.0):
    if classes not in GLYPH_SETS:
      raise ValueError(f"classes={classes!r} not in {sorted(GLYPH_SETS)}")
    if res not in (8, 32):
      raise ValueError(f"res={res} not in (8, 32)")
    super().__init__(split, n, seed, caption_noise)
    self.class_names = GLYPH_SETS[classes]
    self.res = res

  def __getitem__(self, i):
    rng = self._rng(i)
    label = int(rng.integers(len(self.class_names)))
    ch = self.class_names[label]
    im = Image.new("L", (64, 64))
    d = ImageDraw.Draw(im)
    d.text(
      (32, 32),
      ch,
      fill=255,
      font=_font(int(rng.integers(26, 40))),
      anchor="mm",
      stroke_width=int(rng.integers(0, 3)),
      stroke_fill=255,
    )
    im = im.rotate(rng.normal(0, 8), resample=Image.BILINEAR)
    im = im.transform(
      (64, 64), Image.AFFINE, (1, rng.normal(0, 0.2), 0, 0, 1, 0), resample=Image.BILINEAR
    )
    # Like the UCI forms: the ink's bounding box scaled to fill the 32x32 frame (aspect kept,
    # a little jitter in size and position).
    box = im.getbbox() or (0, 0, 64, 64)
    im = im.crop(box)
    w, h = im.size
    scale = rng.uniform(0.8, 1.0) * 32 / max(w, h)
    nw, nh = max(1, min(32, round(w * scale * rng.uniform(0.85, 1.15)))), max(1, round(h * scale))
    im = im.resize((nw, nh), Image.BILINEAR)
    frame = Image.new("L", (32, 32))
    frame.paste(im, (int(rng.integers(0, 32 - nw + 1)), int(rng.integers(0, 32 - nh + 1))))
    im = frame
    bits = (np.asarray(im) > 100).astype(np.uint8)
    if self.res == 8:
      counts = bits.reshape(8, 4, 8, 4).sum(axis=(1, 3))  # 0..16
      img = np.round(counts * (255.0 / 16.0)).astype(np.uint8)
    else:
      img = bits * 255
    caption = GLYPH_CAPTIONS[int(rng.integers(len(GLYPH_CAPTIONS)))].format(ch)
    caption = _noisy_caption(rng, caption, self.class_names, GLYPH_CAPTIONS, self.noise)
    return {"image": img[..., None], "label": label, "caption": caption}


SHAPES = (
  "circle",
  "square",
  "triangle",
  "diamond",
  "cross",
  "ring",
  "bar",
  "star",
  "hexagon",
  "arrow",
)
COLOURS = {
  "red": (220, 40, 40),
  "green": (40, 180, 60),
  "blue": (40, 80, 220),
  "yellow": (230, 210, 40),
  "purple": (150, 60, 190),
  "orange": (240, 140, 30),
  "white": (240, 240, 240),
  "black": (20, 20, 20),
}
SHAPE_CAPTIONS = (
  "a {c} {s}",
  "a picture of a {c} {s}",
  "{s}, {c}, on a textured background",
  "a {s} in {c}",
)


def _shape_polygon(kind, cx, cy, r, angle):
  def ring(k, rad, phase=0.0):
    t = phase + angle + np.arange(k) * 2 * np.pi / k
    return list(zip(cx + rad * np.cos(t), cy + rad * np.sin(t)))

  if kind == "triangle":
    return ring(3, r)
  if kind == "square":
    return ring(4, r, np.pi / 4)
  if kind == "diamond":
    return ring(4, r)
  if kind == "hexagon":
    return ring(6, r)
  if kind == "star":
    outer, inner = ring(5, r), ring(5, r * 0.45, np.pi / 5)
    return [p for pair in zip(outer, inner) for p in pair]
  if kind == "bar":
    return ring(4, r, 0.35)
  if kind == "arrow":
    pts = (
      np.array([(-1, -0.3), (0.2, -0.3), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.3), (-1, 0.3)])
      * r
    )
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
  if kind == "cross":
    pts = (
      np.array(
        [
          (-1, -0.3),
          (-0.3, -0.3),
          (-0.3, -1),
          (0.3, -1),
          (0.3, -0.3),
          (1, -0.3),
          (1, 0.3),
          (0.3, 0.3),
          (0.3, 1),
          (-0.3, 1),
          (-0.3, 0.3),
          (-1, 0.3),
        ]
      )
      * r
    )
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
  raise ValueError(kind)


class ShapesSource(_Generated):
  """Coloured geometric shapes on textured backgrounds, 32x32 RGB, 10 classes: a source
  unrelated to digits. Captions name the colour and shape; ``caption_noise`` as for glyphs.

  Options: ``n``, ``seed``, ``caption_noise``, ``texture`` (background noise level 0..1).
  """

  OPTIONS = {"n": int, "seed": int, "caption_noise": float, "texture": float}
  STREAM = 100

  def __init__(self, split="train", n=10000, seed=0, caption_noise=0.0, texture=0.5):
    if not 0 <= texture <= 1:
      raise ValueError(f"texture={texture} not in [0, 1]")
    super().__init__(split, n, seed, caption_noise)
    self.class_names = SHAPES
    self.texture = texture

  def __getitem__(self, i):
    rng = self._rng(i)
    label = int(rng.integers(len(SHAPES)))
    kind = SHAPES[label]
    names = list(COLOURS)
    colour = names[int(rng.integers(len(names)))]
    base = rng.integers(0, 256, 3)
    noise = rng.normal(0, 255 * self.texture * 0.3, (32, 32, 1))
    bg = np.clip(base + noise + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(bg)
    d = ImageDraw.Draw(im)
    cx, cy = rng.uniform(10, 22, 2)
    r = rng.uniform(6, 11)
    fill = tuple(int(v) for v in np.clip(np.array(COLOURS[colour]) + rng.normal(0, 15, 3), 0, 255))
    if kind == "circle":
      d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif kind == "ring":
      d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=3)
    else:
      d.polygon(_shape_polygon(kind, cx, cy, r, rng.uniform(0, 2 * np.pi)), fill=fill)
    caption = SHAPE_CAPTIONS[int(rng.integers(len(SHAPE_CAPTIONS)))].format(c=colour, s=kind)
    if rng.random() < self.noise:
      caption = _noisy_caption(rng, caption, SHAPES, ("a {}",), 1.0)
    return {"image": np.asarray(im), "label": label, "caption": caption}


BUILTINS.update({"glyphs": GlyphsSource, "shapes": ShapesSource})
