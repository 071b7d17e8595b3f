"""Ops on an example's keys: keep, copy, rename."""

from __future__ import annotations

from big_transfer.data.pp.registry import register


@register("keep", deterministic=True)
def _keep(*keys):
  if not keys:
    raise ValueError("keep needs at least one key")

  def op(example, rng):
    missing = [k for k in keys if k not in example]
    if missing:
      raise KeyError(f"keep: example has no key {missing[0]!r} (has {sorted(example)})")
    return {k: example[k] for k in keys}

  return op


@register("copy", deterministic=True)
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


@register("rename", deterministic=True)
def _rename(**mapping):
  def op(example, rng):
    example = dict(example)
    for new, old in mapping.items():
      example[new] = example.pop(old)
    return example

  return op
