r"""The study runner: expands a study config into pre-training and transfer runs and runs them.

  python -m big_transfer.study --config=configs/mini/study.py --workdir=runs/mini_study
  python -m big_transfer.study --config=configs/study/paper.py --workdir=/shared/paper --dry_run
  python -m big_transfer.study --config=configs/study/paper.py --workdir=DIR --print_commands

A study config (its keys declared in study_plan.py) lists pre-training arms (a pre-training
config with its variant args, and labels such as source, size and method), downstream
datasets, shots, seeds, protocols and the transfer config. Every transfer run depends on its
arm's pre-training run. Locally the runs go one after another in this process, group by group:
the transfer runs of one (arm, downstream set) share the restored checkpoint, the opened data,
the frozen features and the compiled programs (session.Group); compiled programs are also
cached on disk under ``WORKDIR/.jax_cache``. ``--print_commands`` prints each run's command
instead, in dependency order, for a cluster's scheduler (see launch/); ``--worker`` runs one
share of whole groups; ``--submit=slurm`` submits the study as jobs. Finished runs are skipped
(a pre-training run is finished when its ``done.json`` records the run's last step, written once
its last checkpoint is saved; a transfer run when its ``done.json`` exists), so a stopped study
picks up where it was, run by run; a failed run is reported and its dependants are skipped, the
others go on. Transfer rows accumulate in ``WORKDIR/results.jsonl``, which
``python -m big_transfer.report`` reads; the runner ends by writing the report.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time
from typing import Any

import jax
from absl import app as absl_app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from big_transfer import (
  app,
  checkpoint,
  config_lib,
  convert_checkpoint,
  finetune,
  paths,
  report,
  runlock,
  session,
  train,
  transfer,
)
from big_transfer import logging as log_lib
from big_transfer.data import sources
from big_transfer.study_plan import (  # noqa: F401  (the study's plan, as study.X)
  SECTIONS,
  ManifestError,
  Run,
  StudyConfigError,
  apply_overrides,
  estimate_problems,
  expand,
  freeze_manifest,
  group_runs,
  load_run_config,
  load_study,
  manifest_of,
  parse_worker,
  resolve_config_path,
  select,
  shares,
)
from big_transfer.study_slurm import slurm_jobs, submit_slurm
from big_transfer.workdir import Workdir

FLAGS = flags.FLAGS
_load_run_config = load_run_config  # the name tests and scripts used


def define_flags():
  config_flags.DEFINE_config_file(
    "config", None, "Study config (configs/study/...py[:args]).", lock_config=False
  )
  flags.DEFINE_string("workdir", None, "The study's directory: runs, results.jsonl, report/.")
  flags.DEFINE_bool("dry_run", False, "List every run and the compute estimate; run nothing.")
  flags.DEFINE_bool("print_commands", False, "Print each run's command (dependency order).")
  flags.DEFINE_string(
    "worker",
    "",
    "Run one share of the study in this process: 'I/N' (worker I of N), 'slurm' (a SLURM "
    "array task: SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT) or 'k8s:N' (a Kubernetes "
    "Indexed Job: JOB_COMPLETION_INDEX of N). Shares are whole groups (an arm's runs on one "
    "downstream set) balanced by estimated cost over the frozen manifest "
    "(WORKDIR/manifest.json); each run is claimed with its workdir lock, so extra or "
    "requeued workers never run one twice. No report: run the study without --worker "
    "afterwards to collect the table and write it.",
  )
  flags.DEFINE_string(
    "stage",
    "all",
    "With --worker: the kinds of run to take: pretrain (pre-training and conversions), "
    "transfer, or all (a transfer run whose pre-training is not finished is left for later).",
  )
  flags.DEFINE_string(
    "only",
    "",
    "Run only runs whose name contains this string (and their pre-training dependencies).",
  )
  flags.DEFINE_string(
    "arm", "", "With --worker: only this arm's runs (what each SLURM array of --submit runs)."
  )
  flags.DEFINE_bool("report", True, "Write the report when the runs are done.")
  flags.DEFINE_bool(
    "collect",
    False,
    "Run nothing: collect the results table from the runs' own files (done.json) and write "
    "the report (what the report job of --submit runs after the workers).",
  )
  flags.DEFINE_string(
    "submit",
    "",
    "'slurm': submit the study to SLURM and return — each pre-training arm (and conversion) "
    "a job of its own, each arm's transfer runs a job array of workers (--worker=slurm) "
    "that starts after that arm's job succeeded (afterok), the report a job after every "
    "array ended; jobs are requeued on preemption and signalled before their time limit. "
    "With --dry_run: print the sbatch commands instead.",
  )
  flags.DEFINE_string(
    "slurm",
    "",
    "sbatch options for every job, ';'-separated (e.g. '--partition=gpu;--time=24:00:00;"
    "--account=me'); pre-training jobs also take the study config's slurm_pretrain options "
    "(nodes, GPUs).",
  )
  flags.DEFINE_integer(
    "runs_per_task",
    16,
    "--submit: transfer runs per array task (more when an array would exceed --max_array).",
  )
  flags.DEFINE_integer("max_array", 1000, "--submit: the largest job array submitted.")
  flags.DEFINE_string(
    "accept_changes",
    "",
    "Passed to every run: resume runs whose config "
    "changed in these keys (comma-separated, or 'all'; recorded in each "
    "run's run.json). Without it such runs are refused (and listed).",
  )
  flags.DEFINE_bool(
    "check",
    False,
    "Resolve and validate every run's config and open its data "
    "(no training; where a downstream set is absent, from its declared sizes); list every "
    "problem once; exit 1 if there is any.",
  )


# ----------------------------------------------------------------------------- results


def finished_rows(workdir: str) -> list[dict] | None:
  """The rows a finished transfer run recorded in its done.json (None: not finished)."""
  return Workdir(workdir).transfer_rows()


def pretrain_finished(workdir: str) -> bool:
  return Workdir(workdir).pretrain_finished()


def heal_results(runs: list[Run], results_path: str) -> tuple[int, int, set]:
  """Finished transfer runs whose rows never reached the study table (an append that failed,
  a kill between done.json and the append) get them appended from their own done.json.
  Returns (rows appended, runs healed, the table's row ids now)."""
  have = {r.get("row_id") for r in transfer.read_results(results_path) if isinstance(r, dict)}
  n_rows = n_runs = 0
  for r in runs:
    if r.kind != "transfer":
      continue
    missing = [x for x in finished_rows(r.workdir) or [] if x.get("row_id") not in have]
    if missing:
      transfer.append_results(missing, results_path)
      have |= {x.get("row_id") for x in missing}
      n_rows, n_runs = n_rows + len(missing), n_runs + 1
  return n_rows, n_runs, have


# ----------------------------------------------------------------------------- progress


class Eta:
  """The remaining time of a study from the runs that finished, per run shape: a run is
  estimated by the mean duration of finished runs of its own shape (kind, protocol, downstream
  set, few-shot or full), else of its kind and protocol, else from its estimated examples at the
  rate finished runs processed theirs (the study's declared throughput before any did). Runs
  none of this covers yet (a first probe) count as 0, and the estimate says it is a lower bound
  ('>= 3m'). (A 2-second probe and a 2-minute fine-tune are not averaged.)"""

  def __init__(self, throughput: float = 0.0):
    self.seconds: dict[tuple, list[float]] = {}
    self.images = self.images_seconds = 0.0
    self.throughput = float(throughput)

  @staticmethod
  def _keys(r: Run) -> list[tuple]:
    f = r.fields
    shots = "full" if str(f.get("shots")) == "full" else "few"
    return [(r.kind, f.get("protocol"), f.get("downstream"), shots), (r.kind, f.get("protocol"))]

  def add(self, r: Run, seconds: float) -> None:
    for k in self._keys(r):
      self.seconds.setdefault(k, []).append(seconds)
    if r.images:
      self.images, self.images_seconds = self.images + r.images, self.images_seconds + seconds

  def remaining(self, rest: list[Run]) -> tuple[float, bool]:
    """(seconds, whether every run was covered)."""
    rate = self.images / self.images_seconds if self.images_seconds else self.throughput
    total, complete = 0.0, True
    for r in rest:
      known = next((self.seconds[k] for k in self._keys(r) if k in self.seconds), None)
      if known is not None:
        total += sum(known) / len(known)
      elif r.images and rate:
        total += r.images / rate
      else:
        complete = False
    return total, complete

  def describe(self, rest: list[Run]) -> str:
    seconds, complete = self.remaining(rest)
    return ("" if complete else ">= ") + log_lib.format_duration(seconds)


def _time_kind(run: Run) -> str:
  """How the study's closing time summary groups a run: pre-training, conversion, or transfer
  by protocol."""
  if run.kind == "transfer":
    return f"transfer {run.fields.get('protocol', '')}".strip()
  return {"pretrain": "pre-training", "convert": "conversion"}.get(run.kind, run.kind)


# ----------------------------------------------------------------------------- running runs


class Runner:
  """Runs a list of runs in this process, in order: every transfer run of a group on the
  group's shared session.Group (one at a time is kept), each run's failure reported and its
  dependants skipped, each finished run's rows added to ``results`` (the sequential study's
  table; a worker leaves them in the runs' done.json). ``claim``: take each run with its
  workdir's claim first (workers: one per run, whatever the over-subscription)."""

  def __init__(self, all_runs: list[Run], *, accept: str, claim: bool, results: str = ""):
    self.by_name = {r.name: r for r in all_runs}
    self.accept, self.claim, self.results = accept, claim, results
    self.status: dict[str, str] = {}
    self.times = log_lib.TimeBreakdown()
    self.eta = Eta(0.0)
    self._group: session.Group | None = None

  def group(self, pretrained: str) -> session.Group:
    """The group of a pre-trained checkpoint: kept while consecutive runs share it."""
    if self._group is None or self._group.pretrained != pretrained:
      self._group = session.Group(pretrained)
    return self._group

  def run_one(self, run: Run) -> None:
    if run.kind == "convert":
      rc = convert_checkpoint.main([*run.convert_args, f"--out={run.workdir}"])
      if rc:
        raise RuntimeError(f"convert_checkpoint exited with {rc} (its error is above)")
      return
    config = load_run_config(run)
    config.lock()
    if run.kind == "pretrain":
      train.run(config, run.workdir, accept_changes=self.accept)
    else:
      group = self.group(config.pretrained)
      finetune.run(config, run.workdir, accept_changes=self.accept, group=group)

  def blocked(self, run: Run) -> str | None:
    """Why ``run`` cannot start now: 'skipped' (a dependency failed) or 'waiting' (one is not
    finished: another worker's); None when it can."""
    if any(self.status.get(d) in ("failed", "skipped") for d in run.deps):
      return "skipped"
    if any(d in self.by_name and not self.by_name[d].done() for d in run.deps):
      return "waiting"
    return None

  def run_all(self, todo: list[Run], label: str = "") -> dict[str, str]:
    """Runs ``todo``; returns {name: done | failed | skipped | waiting | claimed}. A
    preemption (SIGTERM/SIGINT) stops after the run in progress saved: runlock.Preempted."""
    t0 = time.time()
    for i, r in enumerate(todo, 1):
      where = f"[{label}{i}/{len(todo)}] {r.name}"
      if r.done():
        self.status[r.name] = "done"
        log_lib.info(f"{where}: already finished")
        continue
      why = self.blocked(r)
      if why:
        self.status[r.name] = why
        dep = next(d for d in r.deps if self.status.get(d) != "done")
        log_lib.info(f"{where}: {why} ({dep} {'failed' if why == 'skipped' else 'not finished'})")
        continue
      t = time.time()
      outcome = self._attempt(r, where)
      self.status[r.name] = outcome
      if outcome != "done":
        continue
      self.eta.add(r, time.time() - t)
      done_n = sum(1 for v in self.status.values() if v == "done")
      log_lib.info(
        f"{where}: ok in {log_lib.format_duration(time.time() - t)} | {done_n} done, elapsed "
        f"{log_lib.format_duration(time.time() - t0)}, eta {self.eta.describe(todo[i:])}"
      )
    return self.status

  def _attempt(self, r: Run, where: str) -> str:
    claim = Workdir(r.workdir).claim(log_lib.info) if self.claim else None
    if claim is not None:
      try:
        claim.acquire()
      except runlock.LockError as e:
        log_lib.info(f"{where}: claimed by another worker ({str(e).split(' (')[0]})")
        return "claimed"
    try:
      if claim is not None and r.done():  # finished by another worker since the check
        log_lib.info(f"{where}: already finished")
        return "done"
      log_lib.info(f"{where} ...")
      with self.times.run(_time_kind(r)):
        self.run_one(r)
        if r.kind == "transfer" and self.results:  # the table derives from the run's done.json
          heal_results([r], self.results)
      return "done"
    except runlock.Preempted:
      raise
    except Exception as e:  # noqa: BLE001 - one run's failure must not stop the others
      log_lib.info(f"{where}: {_failed(e)}")
      return "failed"
    finally:
      if claim is not None:
        claim.release()


def _failed(e: BaseException) -> str:
  """A run's failure on one line (the study goes on with the next run)."""
  return f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


STAGES = {
  "pretrain": ("pretrain", "convert"),
  "transfer": ("transfer",),
  "all": ("pretrain", "convert", "transfer"),
}


def run_worker(runs: list[Run], all_runs: list[Run], workdir: str, spec: str, stage: str) -> int:
  """One worker's share of whole groups in this process (JAX start-up, opened data and compiled
  programs paid once per group). Returns the exit code: 0 when every run of the share is
  finished (here or by another worker), 1 when one failed or waits for a pre-training that is
  not finished, PREEMPTED_EXIT on SIGTERM/SIGINT (after the run in progress saved)."""
  index, count = parse_worker(spec)
  if stage not in STAGES:
    raise ValueError(f"--stage={stage}: one of {', '.join(STAGES)}")
  mine = shares([r for r in runs if r.kind in STAGES[stage]], count)[index]
  log_lib.info(
    f"worker {index}/{count} ({stage}): {len(mine)} of {len(runs)} runs in "
    f"{len(group_runs(mine))} group(s)"
  )
  runner = Runner(all_runs, accept=FLAGS.accept_changes, claim=True)
  signals = runlock.OutsideLoopSignals(workdir)
  try:
    outcome = runner.run_all(mine, label=f"worker {index} ")
  except runlock.Preempted as e:
    print(f"stopped: worker {index}: {e} (exit {runlock.PREEMPTED_EXIT})", file=sys.stderr)
    return runlock.PREEMPTED_EXIT
  finally:
    signals.restore()
  counts = {k: sum(1 for v in outcome.values() if v == k) for k in sorted(set(outcome.values()))}
  log_lib.info(
    f"worker {index}/{count} finished: " + ", ".join(f"{v} {k}" for k, v in counts.items())
  )
  bad = [k for k, v in outcome.items() if v in ("failed", "waiting", "skipped")]
  if bad:
    print(
      f"error: worker {index}: {len(bad)} run(s) failed or wait for pre-training: "
      f"{', '.join(bad[:5])}",
      file=sys.stderr,
    )
    return 1
  return 0


# ----------------------------------------------------------------------------- --check


class _Sized:
  """A stand-in training source of a set that is absent: its declared size, no records."""

  def __init__(self, n: int):
    self.n = n

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i):
    return {}


CHECK_ERRORS = (
  config_lib.ConfigError,
  sources.DataError,
  finetune.TransferError,
  app.UserError,
  checkpoint.CheckpointError,
  StudyConfigError,
  ValueError,
  KeyError,
)


def check(runs: list[Run], study=None) -> list[tuple[str, list[str]]]:
  """Every run's config resolved and validated and its data opened, as the run itself would
  before compiling — nothing trained, nothing written; a downstream set that is absent is
  reported and its runs resolved from its declared sizes all the same (a grid that cannot
  run is found without the data). Returns [(problem, run or entry names)], one entry per
  distinct problem."""
  problems: dict[str, list[str]] = {}
  arm_of: dict[str, tuple] = {}  # pre-training run name -> (method, model)
  opened: dict[tuple, Any] = {}  # downstream data, opened once for all its runs (or the error)
  declared = {d["name"]: d for d in (study.downstream if study is not None else [])}

  def note(name, e):
    msg = f"{type(e).__name__}: {e}" if isinstance(e, KeyError) else str(e)
    problems.setdefault(msg.splitlines()[0] if msg else type(e).__name__, []).append(name)

  if study is not None:
    for entry, msg in estimate_problems(study):
      problems.setdefault(msg, []).append(entry)
  for run in runs:
    try:
      if run.kind != "transfer":
        arm_of[run.name] = _check_arm(run)
        continue
      if run.deps and run.deps[0] not in arm_of:
        raise ValueError("depends on a pre-training run with a problem (listed above)")
      pre_method, pre_model = arm_of[run.deps[0]] if run.deps else (None, None)
      config = load_run_config(run)
      session.check_protocol(config)  # config problems first: they hold with or without data
      session.with_model(config, pre_model)
      data = _check_data(config, opened, declared.get(run.fields.get("downstream")), note, run)
      session.resolve(config, pre_method, pre_model, data)
    except CHECK_ERRORS as e:
      note(run.name, e)
  return sorted(problems.items(), key=lambda kv: kv[1][0])


def _check_arm(run: Run) -> tuple:
  """(method, model) of a pre-training or conversion run, checked as it would start."""
  if run.kind == "convert":
    src = next((a for a in run.convert_args if not a.startswith("-")), "")
    if not run.done() and not os.path.isfile(src):
      raise checkpoint.CheckpointError(
        f"public checkpoint {src!r} not found (download it first: docs/DATA.md, "
        f"'Reference checkpoints')"
      )
    return run.fields["method"], run.fields["model"]
  config = load_run_config(run)
  train.prepare(config, None)
  return config.method, config.model


def _check_data(config, opened, declared, note, run) -> dict:
  """What ``session.resolve`` needs of a run's data: opened (once per set), or — where it
  cannot be opened — the problem noted and the declared sizes in its place."""
  key = session.data_key(config)
  if key not in opened:
    try:
      opened[key] = session.transfer_sources(config)
    except sources.DataError as e:
      opened[key] = e
  got = opened[key]
  if not isinstance(got, Exception):
    names = got["class_names"]
    n = config.num_classes or (len(names) if names else 2)
    return {"train": got["pool"], "class_names": names, "num_classes": n}
  note(run.name, got)
  if not declared or not declared.get("num_classes"):
    raise ValueError("absent, and the study declares no num_train / num_classes for it")
  k = declared["num_classes"]
  shots = session.parse_shots(config.shots)
  n = declared["num_train"] if shots is None else shots * k
  return {"train": _Sized(n), "class_names": [f"class {i}" for i in range(k)], "num_classes": k}


# ----------------------------------------------------------------------------- listings


def _table(runs: list[Run]) -> str:
  cols = ("kind", "method", "data", "size", "model", "downstream", "protocol", "shots", "seed")
  rows = [[r.kind] + [str(r.fields.get(c, "")) or "-" for c in cols[1:]] for r in runs]
  widths = [
    max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)
  ]
  line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
  return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows])


def summary(runs: list[Run], throughput: float) -> str:
  pre = [r for r in runs if r.kind == "pretrain"]
  conv = [r for r in runs if r.kind == "convert"]
  tr = [r for r in runs if r.kind == "transfer"]
  images = sum(r.images for r in runs)
  by: dict[str, int] = {}
  for r in tr:
    by[r.fields["downstream"]] = by.get(r.fields["downstream"], 0) + 1
  kinds = sorted({r.fields["method"] for r in runs if r.fields.get("method")})
  return (
    f"{len(runs)} runs: {len(pre)} pre-training, "
    + (f"{len(conv)} public checkpoints converted, " if conv else "")
    + f"{len(tr)} transfer over {len(by)} downstream sets "
    f"({', '.join(f'{k} {v}' for k, v in by.items())}) in {len(group_runs(tr))} groups; "
    f"methods: {', '.join(kinds)}\ncompute estimate: {images:.3g} images processed "
    f"(~{images / throughput / 3600:.3g} accelerator-hours at {throughput:g} images/s)"
  )


def _config_args() -> list[str]:
  """The study's --config and --config.KEY=VALUE arguments as given (a job runs the same study)."""
  out, argv = [], sys.argv[1:]
  for i, a in enumerate(argv):
    if a.startswith("--config"):
      out.append(a if "=" in a or i + 1 >= len(argv) else f"{a}={argv[i + 1]}")
  return out


# ----------------------------------------------------------------------------- main


def _fail(msg: str, code: int = 2):
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(code)


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  if FLAGS.config is None or FLAGS.workdir is None:
    _fail("--config and --workdir are required")
  workdir = FLAGS.workdir
  try:
    paths.check_location(workdir, "--workdir")
  except paths.URLPathError as e:
    _fail(str(e))
  try:
    study = load_study(FLAGS.config)
    all_runs = expand(study, workdir)
  except (ValueError, KeyError) as e:
    _fail(str(e) if isinstance(e, StudyConfigError) else f"study config: {e}")
  runs = select(all_runs, FLAGS.only) if FLAGS.only else all_runs
  if FLAGS.arm:
    runs = [r for r in runs if r.name.split("/")[1] == FLAGS.arm]
  if FLAGS.check:
    sys.exit(_main_check(runs, study))
  if FLAGS.arm and not runs:
    _fail(f"--arm={FLAGS.arm}: no run of the study belongs to it")
  if FLAGS.submit:
    return _main_submit(runs, all_runs, study, workdir)
  if FLAGS.dry_run:
    print(_table(runs))
    print(summary(runs, float(study.throughput)))
    return
  if FLAGS.print_commands:
    for r in runs:
      if not r.done():
        print(shlex.join(r.command()))
    return
  _compilation_cache(workdir)
  if FLAGS.worker:
    try:
      freeze_manifest(workdir, all_runs, log=log_lib.info)
      sys.exit(run_worker(runs, all_runs, workdir, FLAGS.worker, FLAGS.stage))
    except (ValueError, ManifestError) as e:
      _fail(str(e))
  freeze_manifest(workdir, all_runs, update=True, log=log_lib.info)
  _main_sequential(runs, all_runs, study, workdir)


def _main_check(runs: list[Run], study) -> int:
  problems = check(runs, study)
  for msg, names in problems:
    more = f" and {len(names) - 1} more run(s)" if len(names) > 1 else ""
    print(f"error: {names[0]}{more}: {msg}", file=sys.stderr)
  names = {r.name for r in runs}
  bad = len({n for _, ns in problems for n in ns if n in names})
  print(
    f"checked {len(runs)} runs: {len(runs) - bad} ok, {bad} with "
    f"{len(problems)} distinct problem(s)"
  )
  return 1 if problems else 0


def _main_submit(runs: list[Run], all_runs: list[Run], study, workdir: str) -> None:
  if FLAGS.submit != "slurm":
    _fail(f"--submit={FLAGS.submit}: only slurm (Kubernetes: launch/k8s_study.yaml)")
  study_args = [sys.executable, "-m", "big_transfer.study", *_config_args(), f"--workdir={workdir}"]
  if FLAGS.accept_changes:
    study_args.append(f"--accept_changes={FLAGS.accept_changes}")
  if FLAGS.only:  # each array's workers run the user's selection of their arm's runs
    study_args.append(f"--only={FLAGS.only}")
  jobs = slurm_jobs(
    [r for r in runs if not r.done()],
    study_args,
    study,
    [o for o in FLAGS.slurm.split(";") if o.strip()],
    FLAGS.runs_per_task,
    FLAGS.max_array,
  )
  if not FLAGS.dry_run:
    freeze_manifest(workdir, all_runs, update=True, log=log_lib.info)
  # SLURM writes its logs to a file system: the workdir's slurm/, or for a workdir in a bucket
  # ./slurm_logs/<study> on the submitting host's (shared) disk
  name = study.get("name", "") or paths.basename(workdir)
  logs = workdir if not paths.is_url(workdir) else os.path.abspath(os.path.join("slurm_logs", name))
  try:
    submit_slurm(jobs, logs, dry_run=FLAGS.dry_run)
  except (RuntimeError, FileNotFoundError) as e:
    _fail(str(e), 1)


def _compilation_cache(workdir: str) -> None:
  """Compiled programs persist across runs and restarts: in WORKDIR/.jax_cache, or a node-local
  directory (a launcher's JAX_COMPILATION_CACHE_DIR: launch/pack.sh; a temporary directory for a
  study in a bucket)."""
  paths.makedirs(workdir)
  local = os.path.join(tempfile.gettempdir(), "big_transfer_jax_cache")
  default = local if paths.is_url(workdir) else os.path.join(workdir, ".jax_cache")
  jax.config.update(
    "jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR") or default
  )
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _main_sequential(runs: list[Run], all_runs: list[Run], study, workdir: str) -> None:
  """The study in this process: every run not finished, group by group, then the report."""
  t0 = time.time()
  results = Workdir(workdir).results
  healed, healed_runs, table_ids = heal_results(runs, results)
  if healed:
    log_lib.info(
      f"{results}: {healed} row(s) of {healed_runs} finished run(s) were "
      f"missing; appended from the runs' own done.json"
    )
  finished = {r.name for r in runs if r.done(table_ids)}
  todo = [] if FLAGS.collect else [r for r in runs if r.name not in finished]
  runner = Runner(all_runs, accept=FLAGS.accept_changes, claim=False, results=results)
  runner.eta.throughput = float(study.throughput)
  runner.status.update({r.name: "done" for r in runs if r.name in finished})
  if FLAGS.collect:
    runner.status.update({r.name: "not finished" for r in runs if r.name not in finished})
  log_lib.info(
    f"study {study.get('name', '')}: {len(runs)} runs, {len(finished)} already finished, "
    f"{len(todo)} to run"
  )
  try:
    runner.run_all(todo)
  except runlock.Preempted as e:  # stop the study too; run it again to go on
    print(f"stopped: {e} (exit {runlock.PREEMPTED_EXIT})", file=sys.stderr)
    sys.exit(runlock.PREEMPTED_EXIT)
  failed = [k for k, v in runner.status.items() if v not in ("done",)]
  if FLAGS.report and paths.exists(results):
    _report(workdir, study, runner.times)
  if runner.times.by_kind:
    log_lib.info(runner.times.summary(time.time() - t0))
  if failed:
    _fail(f"{len(failed)} runs failed or were skipped: {', '.join(failed[:5])}", 1)
  log_lib.info(f"study done: {len(runs)} runs in {log_lib.format_duration(time.time() - t0)}")


def _report(workdir: str, study, times) -> None:
  t_report = time.time()
  out = report.write_report(workdir, study)
  times.add("report", time.time() - t_report)
  read = transfer.read_results(Workdir(workdir).results)
  print(report.summary(report.aggregate(read)), flush=True)
  for note in report.console_notes(read):
    print(note, flush=True)
  log_lib.info(f"report: {out} (figures and every table beside it)")


def entry():
  define_flags()
  absl_app.run(main, flags_parser=config_lib.flags_parser)


if __name__ == "__main__":
  entry()
