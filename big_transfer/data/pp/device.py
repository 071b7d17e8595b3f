"""Normalisation ops (``value_range``, ``normalize``) and their device half: the trailing ones of
a chain run inside the jitted step (``split_device_affine`` / ``apply_affine``), so uint8 images
cross to the accelerator."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from big_transfer.data.pp.registry import PreprocessError, _keyed, _parse_call, _split_ops, register


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


def _value_range_affine(
  vmin: float = -1.0,
  vmax: float = 1.0,
  in_min: float = 0.0,
  in_max: float = 255.0,
  key: str = "image",
):
  scale = np.float32((vmax - vmin) / (in_max - in_min))
  shift = np.float32(vmin - in_min * (vmax - vmin) / (in_max - in_min))
  return key, scale, shift


@register("value_range", deterministic=True)
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


@register("normalize", deterministic=True)
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
      raise PreprocessError(f"preprocessing op {parts[-1].strip()!r}: bad argument ({e})") from None
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
