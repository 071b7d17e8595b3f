"""A run directory's contract: every file and marker a run keeps in its workdir, in one place.

  WORKDIR/run.json          what the run is, frozen at its first start (identity.py)
  WORKDIR/config.json       the resolved config of the latest start, and what it resolved
  WORKDIR/parameters.txt    every parameter's name, shape and size
  WORKDIR/metrics.jsonl     one JSON object per logged step (logging.MetricWriter)
  WORKDIR/checkpoints/      Orbax checkpoints (checkpoint.py); checkpoints_corrupt/ set aside
  WORKDIR/done.json         the run finished: {step} (pre-training, its last checkpoint saved)
                            or {rows} (a transfer run's result rows)
  WORKDIR/results.jsonl     a transfer run's rows (and a study's table)
  WORKDIR/.lock, .claim     the run's lock, a study worker's claim (runlock.WorkdirLock)
  WORKDIR/manifest.json     a study's frozen list of runs

The same on local paths and buckets (paths.py). Train, finetune, study, report and transfer
ask a :class:`Workdir` for these instead of joining names themselves.
"""

from __future__ import annotations

import os
import time

from big_transfer import paths, runlock

RUN = "run.json"
CONFIG = "config.json"
PARAMETERS = "parameters.txt"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
CHECKPOINTS_CORRUPT = "checkpoints_corrupt"
DONE = "done.json"
RESULTS = "results.jsonl"
LOCK = ".lock"
CLAIM = ".claim"
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer_bpe.txt"


class Workdir:
  """The files of one run directory (``path``: local or a bucket URL)."""

  def __init__(self, path: str):
    self.path = path

  def __repr__(self) -> str:
    return f"Workdir({self.path!r})"

  def join(self, *parts: str) -> str:
    return os.path.join(self.path, *parts)

  def sub(self, name: str) -> Workdir:
    """A run directory inside this one (a fine-tuning grid point, a study's run)."""
    return Workdir(self.join(name))

  run = property(lambda self: self.join(RUN))
  config = property(lambda self: self.join(CONFIG))
  parameters = property(lambda self: self.join(PARAMETERS))
  metrics = property(lambda self: self.join(METRICS))
  checkpoints = property(lambda self: self.join(CHECKPOINTS))
  checkpoints_corrupt = property(lambda self: self.join(CHECKPOINTS_CORRUPT))
  done = property(lambda self: self.join(DONE))
  results = property(lambda self: self.join(RESULTS))
  manifest = property(lambda self: self.join(MANIFEST))
  tokenizer = property(lambda self: self.join(TOKENIZER))

  # --------------------------------------------------------------- markers
  def read_done(self) -> dict | None:
    """done.json's content; None when there is none or it does not read."""
    if not paths.exists(self.done):
      return None
    try:
      out = paths.read_json(self.done)
    except (OSError, ValueError):
      return None
    return out if isinstance(out, dict) else None

  def transfer_rows(self) -> list[dict] | None:
    """The rows a finished transfer run recorded in its done.json (None: not finished, or a
    done.json that does not read)."""
    done = self.read_done()
    try:
      return None if done is None else list(done["rows"])
    except (KeyError, TypeError):
      return None

  def write_transfer_rows(self, rows: list[dict]) -> None:
    """A transfer run's done marker, holding its rows (written by process 0)."""
    paths.makedirs(self.path)
    paths.write_json(self.done, {"rows": rows}, indent=1, default=paths.json_default)

  def write_done_step(self, step: int) -> None:
    """A pre-training run's done marker: it finished at ``step``, its last checkpoint saved."""
    paths.write_json(
      self.done, {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    )

  def pretrain_finished(self) -> bool:
    """The run wrote its done marker for the resolved total step count (config.json): its last
    checkpoint is saved and complete (a workdir that merely exists is not a finished run)."""
    if not (paths.exists(self.config) and paths.exists(self.done)):
      return False
    total = paths.read_json(self.config)["resolved"]["total_steps"]
    return (self.read_done() or {}).get("step") == total

  def has_checkpoint(self, step: int) -> bool:
    return paths.isdir(self.join(CHECKPOINTS, str(step), "state"))

  # --------------------------------------------------------------- locks
  def lock(self, log=print) -> runlock.WorkdirLock:
    """The run's lock (one run per workdir)."""
    return runlock.WorkdirLock(self.path, log, name=LOCK)

  def claim(self, log=print) -> runlock.WorkdirLock:
    """A study worker's claim of the run (one worker per run)."""
    return runlock.WorkdirLock(self.path, log, name=CLAIM)
