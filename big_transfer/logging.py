"""Metrics writers (JSON lines + TensorBoard, process 0 only) and progress with rate and ETA."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from typing import Any

import jax
import numpy as np


def _scalar(v):
  v = np.asarray(v)
  return v.item() if v.size == 1 else v.tolist()


class MetricWriter:
  """Writes ``WORKDIR/metrics.jsonl`` (one object per logged step) and TensorBoard events."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = None
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._file = open(self.path, "a")
      if tensorboard:
        try:
          from tensorboardX import SummaryWriter
          self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:
          self._tb = None

  def write(self, step: int, metrics: dict[str, Any]):
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def close(self):
    if self._file:
      self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def format_duration(s: float) -> str:
  if not math.isfinite(s):
    return "?"
  s = int(round(s))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class Progress:
  """Rate (steps/s, examples/s) and ETA over the steps since the last report."""

  def __init__(self, total_steps: int, first_step: int, batch_size: int):
    self.total, self.batch = total_steps, batch_size
    self.t0 = self.t_last = time.perf_counter()
    self.first = self.step_last = first_step

  def update(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    dt, ds = now - self.t_last, step - self.step_last
    rate = ds / dt if dt > 0 and ds > 0 else float("nan")
    overall = (step - self.first) / (now - self.t0) if now > self.t0 else float("nan")
    self.t_last, self.step_last = now, step
    eta = (self.total - step) / overall if overall and overall > 0 else float("nan")
    return {"steps_per_sec": rate, "examples_per_sec": rate * self.batch, "eta_s": eta}


def info(msg: str):
  """Progress output: process 0 only, flushed (visible under log collectors)."""
  if jax.process_index() == 0:
    print(msg, file=sys.stdout, flush=True)


@contextlib.contextmanager
def quiet_absl():
  """absl logs at ERROR only inside the block: TFDS warns about every folder it probes, Orbax
  about optional metadata files."""
  from absl import logging as absl_logging
  level = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(level)
