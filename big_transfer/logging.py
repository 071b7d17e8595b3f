"""Metrics writers (JSON lines, TensorBoard, Weights & Biases; process 0 only) and progress with
rate and ETA."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging as py_logging
import math
import os
import secrets
import sys
import time
from typing import Any

import jax
import numpy as np
from absl import logging as absl_logging

from big_transfer import paths, schema
from big_transfer.workdir import METRICS

WANDB_MODES = ("online", "offline", "disabled")


def _check(config) -> None:
  w = config.wandb
  if not w.project:
    return
  if w.mode not in WANDB_MODES:
    raise schema.SectionError(f"config.wandb.mode={w.mode!r}: not online, offline or disabled")
  if importlib.util.find_spec("wandb") is None:
    raise schema.SectionError(
      f"config.wandb.project={w.project!r}: wandb is not installed (pip install -e '.[wandb]')"
    )


SECTION = schema.Section(
  "",
  __name__,
  keys=(schema.Key("tensorboard", True, "also write TensorBoard event files in the workdir"),),
  check=_check,
)
WANDB_SECTION = schema.Section(
  "wandb",
  __name__,
  help="Weights & Biases, on when project is set (optional: pip install "
  "-e '.[wandb]'): metrics as logged, the config, one W&B run per workdir (its id kept in "
  "WORKDIR/wandb_run_id, so a resumed run continues it)",
  keys=(
    schema.Key("project", "", "the W&B project ('' = off)"),
    schema.Key("entity", "", "the W&B entity (team or user)"),
    schema.Key("name", "", "the run's name ('' = the workdir's last two path parts)"),
    schema.Key("group", "", "the W&B group"),
    schema.Key("tags", "", "'a,b'"),
    schema.Key(
      "mode",
      "online",
      "'offline' writes WORKDIR/wandb/ for `wandb sync` later (hosts without network); 'disabled'",
    ),
  ),
)


def _scalar(v):
  v = np.asarray(v)
  return v.item() if v.size == 1 else v.tolist()


def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
  """{'optimizer.lr': 0.1, ...}: scalars as they are, anything else as its text."""
  out = {}
  for k, v in config.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten_config(v, key + "."))
    elif isinstance(v, (bool, int, float, str)):
      out[key] = v
    else:
      out[key] = str(v)
  return out


class MetricWriter:
  """Writes ``WORKDIR/metrics.jsonl`` (one object per logged step) and TensorBoard events.

  ``resume_step``: the step the run (re)starts from. Rows of later steps — written after that
  checkpoint by a run that was then killed — are dropped, so every step appears once.

  A workdir in a bucket (no append): both are written in a local staging directory and
  uploaded whole (:class:`paths.Mirror`) at most every ``SYNC_EVERY_S`` seconds, at every
  :meth:`flush` (the loop calls it before each checkpoint, so the rows up to a checkpoint are in
  the bucket before it is) and at the end. A kill loses at most rows past the last checkpoint,
  which the resumed run logs again."""

  SYNC_EVERY_S = 30.0

  def __init__(
    self, workdir: str, tensorboard: bool = True, resume_step: int = 0, config: dict | None = None
  ):
    self.enabled = jax.process_index() == 0
    self._mirror = None
    self._synced = time.monotonic()
    self.path = os.path.join(workdir, METRICS)
    self._file = None
    self._tb = None
    self._wandb = None
    wandb_cfg = (config or {}).get("wandb") or {}
    if self.enabled:
      paths.makedirs(workdir)
      self._mirror = paths.Mirror(workdir)
      self.path = self._mirror.fetch(METRICS)
      if wandb_cfg.get("project"):
        self._wandb = _wandb_run(workdir, wandb_cfg, config, self._mirror.local)
      self._drop_after(resume_step)
      self._file = open(self.path, "a")
      if tensorboard:
        try:
          from tensorboardX import SummaryWriter  # lazy: optional, +0.2 s

          self._tb = SummaryWriter(
            os.path.join(self._mirror.local, "tensorboard"),
            purge_step=resume_step + 1 if resume_step else None,
          )
        except ImportError:
          self._tb = None
      if self._tb is not None and config is not None and not resume_step:
        # The config in TensorBoard: as hparams (to compare runs) and as text (to read).
        from tensorboardX.summary import hparams

        flat = flatten_config(config)
        # Into this writer's own file (add_hparams would open a second writer on the same
        # directory, whose file can take the same name and replace this one's).
        for summary in hparams(flat, {}):
          self._tb._get_file_writer().add_summary(summary)  # noqa: SLF001
        self._tb.add_text("config", "\n".join(f"    {k} = {v}" for k, v in sorted(flat.items())), 0)
        self._tb.flush()
      self.flush()

  def _drop_after(self, step: int):
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    keep = []
    for line in lines:
      try:
        if json.loads(line).get("step", 0) <= step:
          keep.append(line)
      except ValueError:  # a line cut by a kill: dropped with the rest of that attempt
        pass
    if len(keep) != len(lines):
      with open(self.path + ".tmp", "w") as f:
        f.writelines(keep)
      os.replace(self.path + ".tmp", self.path)

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
    if self._wandb is not None:
      self._wandb.log(
        {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))},
        step=int(step),
      )
    if time.monotonic() - self._synced >= self.SYNC_EVERY_S:
      try:
        self.flush()
      except Exception as e:  # noqa: BLE001  the rows stay staged: the next sync uploads them
        self._synced = time.monotonic()
        info(
          f"warning: metrics of {self.path} could not be uploaded ({type(e).__name__}: "
          f"{str(e)[:200]}); kept locally, uploaded at the next sync or checkpoint"
        )

  def flush(self):
    """Uploads what was written (a workdir in a bucket; else nothing to do)."""
    if self._mirror is not None:
      self._mirror.sync()
      self._synced = time.monotonic()

  def close(self):
    if self._file:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
    if self._mirror is not None:
      self._mirror.close()
      self._mirror = None
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None


def _wandb_run(workdir: str, cfg: dict, config: dict, local_dir: str):
  """A W&B run for this workdir: the same run id on every (re)start of it, so a resumed run
  continues its W&B run (steps a killed attempt logged past the checkpoint it resumes from are
  not logged twice: W&B keeps the first)."""
  import wandb  # lazy: optional dependency (config validation says so when it is missing)

  id_path = os.path.join(workdir, "wandb_run_id")
  if paths.exists(id_path):
    run_id = paths.read_text(id_path).strip()
  else:
    run_id = secrets.token_hex(4)  # W&B ids: lower-case letters and digits
    paths.write_text(id_path, run_id + "\n")
  parts = paths.resolve(workdir).rstrip("/").split("/")
  return wandb.init(
    project=cfg["project"],
    entity=cfg.get("entity") or None,
    name=cfg.get("name") or "/".join(parts[-2:]),
    group=cfg.get("group") or None,
    tags=[t.strip() for t in cfg.get("tags", "").split(",") if t.strip()] or None,
    mode=cfg.get("mode", "online"),
    dir=local_dir,  # W&B's own files: a local directory (the workdir may be a bucket)
    id=run_id,
    resume="allow",
    config=flatten_config(config),
    settings=wandb.Settings(silent=True),
  )


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, METRICS)
  with paths.open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


# Where a process's time goes, by phase (compile, steps, evaluation, checkpoints, probes):
# seconds accumulated by the loops; the study reads it before and after each run.
PHASE_SECONDS: dict[str, float] = {}
PHASES = ("compile", "steps", "evaluation", "checkpoints", "features and probes")

# Compilations, counted where JAX does them (jax.monitoring): every program traced, lowered and
# compiled in this process — a training step, an evaluator, a feature program, an init — with
# its time counted in the "compile" phase (and taken out of the phase it happened in). Programs
# read back from the persistent compilation cache count apart.
COMPILE_EVENTS = {
  "/jax/core/compile/jaxpr_trace_duration": "trace",
  "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
  "/jax/core/compile/backend_compile_duration": "compile",
}
COMPILES: dict[str, Any] = {
  "programs": 0,
  "from_disk_cache": 0,
  "seconds": 0.0,
  "by_name": {},  # jit(train_step): how many times compiled
  "seconds_by_name": {},  # and the seconds traced, lowered and compiled
}


def _on_duration(event: str, seconds: float, **kwargs) -> None:
  kind = COMPILE_EVENTS.get(event)
  if kind is None:
    return
  COMPILES["seconds"] += seconds
  add_time("compile", seconds)
  name = str(kwargs.get("fun_name", "?"))
  COMPILES["seconds_by_name"][name] = COMPILES["seconds_by_name"].get(name, 0.0) + seconds
  if kind == "compile":
    COMPILES["programs"] += 1
    COMPILES["by_name"][name] = COMPILES["by_name"].get(name, 0) + 1


def _on_event(event: str, **kwargs) -> None:
  if event == "/jax/compilation_cache/cache_hits":
    COMPILES["from_disk_cache"] += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)
jax.monitoring.register_event_listener(_on_event)


def compile_seconds() -> float:
  return COMPILES["seconds"]


def add_time(phase: str, seconds: float) -> None:
  PHASE_SECONDS[phase] = PHASE_SECONDS.get(phase, 0.0) + max(0.0, seconds)


@contextlib.contextmanager
def timed(phase: str):
  """Counts the block's time in ``phase``, less what compiling took inside it (counted in
  "compile")."""
  t0, c0 = time.perf_counter(), compile_seconds()
  try:
    yield
  finally:
    add_time(phase, time.perf_counter() - t0 - (compile_seconds() - c0))


class TimeBreakdown:
  """Wall time per kind of run split by phase; what is not a measured phase is start-up
  (imports, data opening, restores, model building, writing results)."""

  def __init__(self):
    self.by_kind: dict[str, dict[str, float]] = {}
    self.count: dict[str, int] = {}
    self.runs_of: set[str] = set()  # kinds timed as runs (the rest: single steps, e.g. report)
    self.programs: dict[str, int] = {}  # programs compiled during the runs of each kind

  def run(self, kind: str):
    """A context manager around one run of ``kind``."""
    breakdown = self

    class _Run:
      def __enter__(self):
        self.t0, self.before = time.perf_counter(), dict(PHASE_SECONDS)
        self.programs = COMPILES["programs"]
        return self

      def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        row = breakdown.by_kind.setdefault(kind, {})
        measured = 0.0
        for k, v in PHASE_SECONDS.items():
          d = v - self.before.get(k, 0.0)
          if d > 0:
            row[k] = row.get(k, 0.0) + d
            measured += d
        row["start-up and other"] = row.get("start-up and other", 0.0) + max(0.0, wall - measured)
        row["wall"] = row.get("wall", 0.0) + wall
        breakdown.count[kind] = breakdown.count.get(kind, 0) + 1
        breakdown.runs_of.add(kind)
        compiled = COMPILES["programs"] - self.programs
        breakdown.programs[kind] = breakdown.programs.get(kind, 0) + compiled
        return False

    return _Run()

  def add(self, kind: str, seconds: float) -> None:
    row = self.by_kind.setdefault(kind, {})
    row["wall"] = row.get("wall", 0.0) + seconds
    self.count[kind] = self.count.get(kind, 0) + 1

  def summary(self, total: float) -> str:
    lines = [f"where the time went ({format_duration(total)} wall):"]
    for kind, row in self.by_kind.items():
      programs = self.programs.get(kind, 0)
      parts = [
        f"{k} {format_duration(v)} ({100 * v / row['wall']:.0f}%"
        + (f", {programs} programs)" if k == "compile" else ")")
        for k, v in sorted(row.items(), key=lambda kv: -kv[1])
        if k != "wall" and row["wall"] > 0 and v >= 0.5
      ]
      n = self.count.get(kind, 0)
      runs = f"{n} run(s), " if kind in self.runs_of else ""
      lines.append(
        f"  {kind}: {runs}{format_duration(row['wall'])}"
        + (": " + ", ".join(parts) if parts else "")
      )
    if COMPILES["programs"]:
      names = sorted(COMPILES["by_name"].items(), key=lambda kv: -kv[1])
      lines.append(
        f"  compiled: {COMPILES['programs']} programs in {format_duration(COMPILES['seconds'])} "
        f"({COMPILES['from_disk_cache']} read from the disk cache): "
        + ", ".join(
          f"{n} x{c} {COMPILES['seconds_by_name'].get(n, 0.0):.1f}s" for n, c in names[:10]
        )
      )
    return "\n".join(lines)


def cleanup(*steps, budget_s: float = 10.0) -> None:
  """Runs each cleanup step (closing writers, loaders, locks) — every one, whatever the others
  do. While an exception is already on its way out (a ``finally`` after a failure), a step's
  own failure is one warning line and a short retry budget applies: the first error stays the
  one reported, with no chain of others on top. Otherwise the first failure is raised after
  the rest have run."""
  failing = sys.exc_info()[1] is not None
  first = None
  for step in steps:
    try:
      if failing:
        with paths.retry_budget(budget_s):
          step()
      else:
        step()
    except Exception as e:  # noqa: BLE001  reported below, never lost
      if failing:
        what = getattr(step, "__qualname__", repr(step))
        info(f"warning: while stopping, {what} failed too ({type(e).__name__}: {e})")
      elif first is None:
        first = e
  if first is not None:
    raise first


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
  level = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(level)


class _DropOrbaxSaveFailure:
  """Drops the log records Orbax writes (with whole tracebacks) when a background save fails:
  the save's caller reports the failure as one line naming its cause."""

  NEEDLES = (
    "_SignalingThread.run() raised",
    "Handler Commit operations",
    "Save Finalize thread",
    "exception was never retrieved",
  )

  def filter(self, record) -> bool:
    try:
      text = record.getMessage()
    except Exception:  # noqa: BLE001
      return True
    if not any(n in text for n in self.NEEDLES):
      return True
    return "orbax" not in text + str(record.pathname) + str(record.exc_info)


def quiet_library_noise():
  """Known-benign console noise silenced at its source (``--verbosity`` keeps it): Orbax logs
  a failed background save several times with whole tracebacks before the save's caller
  reports it (as one line); after such a failure, tensorstore callbacks into the save's closed
  event loop raise "Event loop is closed", one unraisable traceback each."""
  for handler in py_logging.getLogger().handlers:
    handler.addFilter(_DropOrbaxSaveFailure())
  default = sys.unraisablehook

  def on_unraisable(u):
    if not (isinstance(u.exc_value, RuntimeError) and "Event loop is closed" in str(u.exc_value)):
      default(u)

  sys.unraisablehook = on_unraisable
