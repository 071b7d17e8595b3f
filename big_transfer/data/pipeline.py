"""Grain input pipelines: deterministic, sharded across processes, checkpointable.

Training: source -> seeded shuffle (a new permutation each epoch) -> repeat -> tag each example
with its position in the global stream -> this process's strided share -> preprocess (rng seeded
by (seed, position)) -> batch -> iterator. Global batch ``b`` is positions ``[b*B, (b+1)*B)`` on any
number of processes, so a run's data does not depend on how many hosts read it, and the
iterator's state (saved with every checkpoint) resumes it exactly.

Evaluation: every example exactly once across processes; the last batch is padded and carries a
``_mask`` of zeros for the padding, so metrics summed with the mask are exact.
"""

from __future__ import annotations

import logging
from typing import Sequence

import grain
import numpy as np

from big_transfer.data import ops

MASK = "_mask"
SKIPPED = "_skipped"


class _Tag:
  """(position, example) -> example with the global stream position attached."""

  def __call__(self, index, example):
    return index, example


class _Preprocess:
  """Applies the op string with an rng from (seed, position); bad records become a
  ``{SKIPPED: reason}`` marker that the pipeline filters out and counts."""

  def __init__(self, pp: str, seed: int, keys: Sequence[str], bind: dict | None = None):
    self.pp, self.seed, self.keys, self.bind = pp, seed, tuple(keys), dict(bind or {})
    self._fn = None

  def __call__(self, tagged):
    if self._fn is None:  # built lazily: picklable for multiprocess workers
      self._fn = ops.parse(self.pp, bind=self.bind)
    index, example = tagged
    rng = np.random.default_rng([self.seed, int(index)])
    try:
      out = self._fn(example, rng)
    except Exception as e:  # a corrupt record must not kill a long run
      logging.warning("skipping record at stream position %d: %s: %s", index,
                      type(e).__name__, e)
      # A marker, not None: grain drops Nones silently before anything could count them.
      return {SKIPPED: f"{type(e).__name__}: {e}"}
    return {k: np.asarray(out[k]) for k in self.keys}


class SkipCounter:
  """Drops the records preprocessing rejected and counts them. It runs in the main process
  (after any workers), so ``count`` is this process's total since it started."""

  def __init__(self):
    self.count = 0

  def __call__(self, x) -> bool:
    if SKIPPED in x:
      self.count += 1
      return False
    return True


def _good(x) -> bool:
  return SKIPPED not in x


def _read_options(threads: int):
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2 * threads, 16))


def train_dataset(source, *, pp: str, batch_size: int, seed: int, keys: Sequence[str],
                  process_index: int = 0, process_count: int = 1, threads: int = 8,
                  workers: int = 0, skipped: SkipCounter | None = None,
                  bind: dict | None = None) -> grain.IterDataset:
  """The per-process training stream of batches of ``batch_size // process_count`` examples.
  ``bind``: run-level op arguments (see ``ops.parse``)."""
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} is not divisible by {process_count} processes")
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  ds = ds.map_with_index(_Tag())
  ds = ds[process_index::process_count]
  ds = ds.map(_Preprocess(pp, seed, keys, bind))
  it = ds.to_iter_dataset(_read_options(threads))
  if workers > 0:
    # Workers preprocess interleaved single examples; batching happens after them, in this
    # process, so batches do not depend on the number of workers.
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  it = it.filter(skipped if skipped is not None else _good)
  return it.batch(batch_size // process_count, drop_remainder=True)


class _Padded:
  """Random access over ``n_padded`` positions; positions past the source repeat item 0."""

  def __init__(self, source, n_padded: int):
    self.source, self.n, self.n_padded = source, len(source), n_padded

  def __len__(self):
    return self.n_padded

  def __getitem__(self, i):
    ex = dict(self.source[i if i < self.n else 0])
    ex[MASK] = np.float32(i < self.n)
    return ex


def eval_dataset(source, *, pp: str, batch_size: int, keys: Sequence[str],
                 process_index: int = 0, process_count: int = 1, threads: int = 8,
                 bind: dict | None = None) -> grain.IterDataset:
  """Every example once across processes; batches padded to ``batch_size`` with ``_mask``."""
  n_padded = -(-len(source) // batch_size) * batch_size
  ds = grain.MapDataset.source(_Padded(source, n_padded)).map_with_index(_Tag())
  ds = ds[process_index::process_count]
  ds = ds.map(_Preprocess(pp, 0, tuple(keys) + (MASK,), bind))
  it = ds.to_iter_dataset(_read_options(threads))
  return it.filter(_good).batch(batch_size // process_count, drop_remainder=False)
