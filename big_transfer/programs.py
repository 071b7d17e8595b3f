"""Compiled programs kept per process, so each is compiled once per model and shape.

A fine-tuning grid, the runs of a study and the evaluations inside them share a handful of
programs: a training step, an init, an evaluator's sums, a feature program — per model, mesh and
batch shape. What varies between runs (learning rate, warm-up, length, weight decay, seed) is a
runtime argument of those programs (``trainer.run_values``), never a constant compiled into them,
so a program built once under a key of everything it is compiled from serves them all; ``jit``
then compiles it once per input shape. The compilations themselves are counted where JAX does
them (``logging.COMPILES``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_PROGRAMS: dict[tuple, Any] = {}


def program(key: tuple | None, build: Callable[[], Any]):
  """``build()``, kept per process under ``key`` (None: built each time, not kept). The key
  must name everything the built program computes with: two builds under one key are assumed
  to compute the same function."""
  if key is None:
    return build()
  if key not in _PROGRAMS:
    _PROGRAMS[key] = build()
  return _PROGRAMS[key]


def mesh_key(mesh) -> tuple:
  """A mesh as part of a key: its devices, axis names and shape."""
  return (tuple(d.id for d in mesh.devices.flat), tuple(mesh.axis_names), mesh.devices.shape)


def clear() -> None:
  """Forgets every kept program (tests that count compilations start from none)."""
  _PROGRAMS.clear()
