r"""The study runner: expands a study config into pre-training and transfer runs and runs them.

  python -m big_transfer.study --config=configs/mini/study.py --workdir=runs/mini_study
  python -m big_transfer.study --config=configs/study/paper.py --workdir=/shared/paper --dry_run
  python -m big_transfer.study --config=configs/study/paper.py --workdir=DIR --print_commands

A study config lists pre-training arms (a pre-training config with its variant args, and labels
such as source, size and method), downstream datasets, shots, seeds, protocols and the transfer
config. Every transfer run depends on its arm's pre-training run. Locally the runs go one after
another in this process (one JAX runtime, compiled programs cached on disk under
``WORKDIR/.jax_cache``); ``--print_commands`` prints each run's command instead, in dependency
order, for a cluster's scheduler (see launch/). Finished runs are skipped (a pre-training run is
finished when its ``done.json`` records the run's last step, written once its last checkpoint
is saved; a transfer run when its ``done.json`` exists), so a
stopped study picks up where it was; a failed run is reported and its dependants are skipped,
the others go on. Transfer rows accumulate in ``WORKDIR/results.jsonl``, which
``python -m big_transfer.report`` reads; the runner ends by writing the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import subprocess
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
  methods,
  paths,
  report,
  runlock,
  train,
  transfer,
)
from big_transfer import logging as log_lib
from big_transfer.data import sources

FLAGS = flags.FLAGS


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
    "Indexed Job: JOB_COMPLETION_INDEX of N). Shares are balanced by estimated cost over the "
    "frozen manifest (WORKDIR/manifest.json); each run is claimed with its workdir lock, so "
    "extra or requeued workers never run one twice. No report: run the study without "
    "--worker afterwards to collect the table and write it.",
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
    "(no training); list every problem once; exit 1 if there is any.",
  )


@dataclasses.dataclass
class Run:
  kind: str  # 'pretrain', 'convert' (a public checkpoint into a workdir) or 'transfer'
  name: str
  workdir: str
  config: str  # path[:arg]; for 'convert': '' (see convert_args)
  overrides: dict[str, Any]
  deps: list[str]
  fields: dict[str, Any]
  images: float = 0.0  # examples processed (compute estimate)
  convert_args: tuple = ()  # convert_checkpoint's arguments, --out excluded
  index: int = -1  # its place in the study's manifest (expand order)

  def identity(self, root: str = "") -> str:
    """A hash of what the run is (its kind, config and overrides): the manifest's check that
    an index means the same run everywhere. Paths under the study's ``root`` count relative to
    it (a study moved or copied elsewhere is the same study)."""
    text = json.dumps(
      [self.kind, self.config, self.overrides, list(self.convert_args), self.deps],
      sort_keys=True,
      default=str,
    )
    for prefix in sorted({root, paths.resolve(root)} - {""}, key=len, reverse=True):
      text = text.replace(prefix, "$STUDY")
    return hashlib.sha1(text.encode()).hexdigest()[:16]

  def command(self) -> list[str]:
    if self.kind == "convert":
      return [
        "python",
        "-m",
        "big_transfer.convert_checkpoint",
        *self.convert_args,
        f"--out={self.workdir}",
      ]
    module = "big_transfer.train" if self.kind == "pretrain" else "big_transfer.finetune"
    return ["python", "-m", module, f"--config={self.config}", f"--workdir={self.workdir}"] + [
      f"--config.{k}={_flag_value(v)}" for k, v in self.overrides.items()
    ]

  def done(self, table_ids: set | None = None) -> bool:
    """Finished: pre-training wrote its done marker for its step count; a transfer run wrote
    done.json and (given the study table's row ids) every one of its rows is in the table."""
    if self.kind == "transfer":
      rows = finished_rows(self.workdir)
      if rows is None:
        return False
      return table_ids is None or all(r.get("row_id") in table_ids for r in rows)
    if self.kind == "convert":
      return paths.isdir(os.path.join(self.workdir, "checkpoints", "0", "state"))
    return pretrain_finished(self.workdir)


def finished_rows(workdir: str) -> list[dict] | None:
  """The rows a finished transfer run recorded in its done.json (None: not finished, or a
  done.json that does not read)."""
  path = os.path.join(workdir, "done.json")
  if not paths.exists(path):
    return None
  try:
    return list(paths.read_json(path)["rows"])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def heal_results(runs: list[Run], results_path: str) -> tuple[int, int, set]:
  """Finished transfer runs whose rows never reached the study table (an append that failed,
  a kill between done.json and the append) get them appended from their own done.json.
  Returns (rows appended, runs healed, the table's row ids now)."""
  have = {r.get("row_id") for r in transfer.read_results(results_path) if isinstance(r, dict)}
  n_rows = n_runs = 0
  for r in runs:
    if r.kind != "transfer":
      continue
    rows = finished_rows(r.workdir)
    missing = [x for x in rows or [] if x.get("row_id") not in have]
    if missing:
      transfer.append_results(missing, results_path)
      have |= {x.get("row_id") for x in missing}
      n_rows, n_runs = n_rows + len(missing), n_runs + 1
  return n_rows, n_runs, have


class Eta:
  """The remaining time of a study from the runs that finished, per run shape: a run is
  estimated by the mean duration of finished runs of its own shape (kind, protocol, downstream
  set, few-shot or full), else of its kind and protocol, else of its kind; unknown ('?') until
  one of those has finished. (A 2-second probe and a 2-minute fine-tune are not averaged.)"""

  def __init__(self):
    self.seconds: dict[tuple, list[float]] = {}

  @staticmethod
  def _keys(r: Run) -> list[tuple]:
    f = r.fields
    shots = "full" if str(f.get("shots")) == "full" else "few"
    return [
      (r.kind, f.get("protocol"), f.get("downstream"), shots),
      (r.kind, f.get("protocol")),
      (r.kind,),
    ]

  def add(self, r: Run, seconds: float) -> None:
    for k in self._keys(r):
      self.seconds.setdefault(k, []).append(seconds)

  def remaining(self, rest: list[Run]) -> float:
    total = 0.0
    for r in rest:
      known = next((self.seconds[k] for k in self._keys(r) if k in self.seconds), None)
      if known is None:
        return float("nan")
      total += sum(known) / len(known)
    return total


def _flag_value(v) -> str:
  if isinstance(v, bool):
    return "true" if v else "false"
  if isinstance(v, (tuple, list)):
    return "(" + ",".join(_flag_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
  return str(v)


def pretrain_finished(workdir: str) -> bool:
  """The run wrote its done marker for the resolved total step count (config.json): its last
  checkpoint is saved and complete (a workdir that merely exists is not a finished run)."""
  config_json, done_json = (os.path.join(workdir, n) for n in ("config.json", "done.json"))
  if not (paths.exists(config_json) and paths.exists(done_json)):
    return False
  total = paths.read_json(config_json)["resolved"]["total_steps"]
  return paths.read_json(done_json).get("step") == total


def apply_overrides(config, overrides: dict[str, Any]):
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    if isinstance(node[leaf], tuple) and isinstance(value, list):
      value = tuple(value)
    node[leaf] = value
  return config


def _slug(v) -> str:
  return (
    str(v)
    .replace("/", "_")
    .replace(":", "_")
    .replace("?", "_")
    .replace("=", "-")
    .replace("&", "_")
    .replace(" ", "")
  )


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_config_path(spec: str) -> str:
  """configs/... relative to the working directory, else to the repository."""
  path, sep, arg = spec.partition(":")
  if path and not os.path.exists(path) and os.path.exists(os.path.join(REPO, path)):
    path = os.path.join(REPO, path)
  return path + sep + arg


def expand(study, workdir: str) -> list[Run]:
  """Every run of the study, pre-training first; transfer runs name their dependency."""
  runs = []
  arms = {}
  for arm in study.pretrain:
    arm = dict(arm)
    name = arm["name"]
    if name in arms:
      raise ValueError(f"study: two pre-training arms named {name!r}")
    arms[name] = arm
    if arm.get("convert"):  # a public checkpoint, converted (transfer-only reference arm)
      wd = arm.get("workdir") or os.path.join(workdir, "pretrain", name)
      runs.append(
        Run(
          "convert",
          f"pretrain/{name}",
          wd,
          "",
          {},
          [],
          {
            "method": arm.get("method", ""),
            "data": arm.get("source", ""),
            "size": arm.get("size", ""),
            "model": arm.get("model", ""),
          },
          convert_args=tuple(arm["convert"]),
        )
      )
      arm["workdir"] = wd
    elif arm.get("config"):
      wd = arm.get("workdir") or os.path.join(workdir, "pretrain", name)
      overrides = dict(arm.get("overrides", {}))
      images = 0.0
      try:  # the compute estimate: steps x batch from the resolved config
        c = apply_overrides(config_lib.load(resolve_config_path(arm["config"])), overrides)
        steps = c.total_steps or 0
        if not steps and c.total_epochs:
          size = arm.get("num_examples") or 0
          steps = c.total_epochs * size / c.batch_size
        images = float(steps) * c.batch_size
        arm.setdefault("model", c.model)
      except Exception:  # noqa: BLE001 - an estimate only; the run validates itself
        pass
      runs.append(
        Run(
          "pretrain",
          f"pretrain/{name}",
          wd,
          resolve_config_path(arm["config"]),
          overrides,
          [],
          {
            "method": arm.get("method", ""),
            "data": arm.get("source", ""),
            "size": arm.get("size", ""),
            "model": arm.get("model", ""),
          },
          images,
        )
      )
      arm["workdir"] = wd
    else:  # from scratch
      arm["workdir"] = ""
  # Per-protocol limits (e.g. full fine-tuning on fewer shots, seeds or downstream sets than
  # the cheap linear probes): {protocol: {shots, seeds, downstream}}.
  limits = {k: dict(v) for k, v in dict(study.get("protocol_settings", {})).items()}
  try:  # the transfer runs' defaults, for their compute estimates
    transfer_base = config_lib.load(resolve_config_path(study.transfer_config)).to_dict()
  except Exception:  # noqa: BLE001 - an estimate only; --check and the runs report the error
    transfer_base = {}
  for arm in arms.values():
    protocols = tuple(arm.get("protocols") or study.protocols)
    for ds in study.downstream:
      ds = dict(ds)
      for protocol in protocols:
        limit = limits.get(protocol, {})
        if limit.get("downstream") and ds["name"] not in limit["downstream"]:
          continue
        shots_list = tuple(arm.get("shots") or limit.get("shots") or ds.get("shots") or study.shots)
        seeds = tuple(limit.get("seeds") or study.seeds)
        if protocol == "zeroshot":
          if not methods.has_text_tower(arm.get("method")):
            continue  # zero-shot needs a text tower
          shots_list, seeds = ("full",), seeds[:1]  # no training images, nothing random
        for shots in shots_list:
          for seed in seeds:
            what = (
              protocol
              if protocol == "zeroshot"
              else (f"{protocol}_full" if str(shots) == "full" else f"{protocol}_{shots}shot")
            )
            name = f"transfer/{arm['name']}/{ds['name']}/{what}_s{seed}"
            tags = {
              "arm": arm["name"],
              "downstream": ds["name"],
              **{
                k: arm[k]
                for k in ("source", "size", "method", "group", "published", "pretrain_note")
                if arm.get(k) not in (None, "")
              },
            }
            bad = [k for k, v in tags.items() if ";" in str(v) or "=" in str(v)]
            if bad:
              raise ValueError(
                f"study: arm {arm['name']!r}: {bad[0]}={tags[bad[0]]!r} holds "
                f"';' or '=' (row tags are 'k=v;k2=v2')"
              )
            # Config args choose how the config is built; values reach the run as structured
            # overrides (a data spec may hold commas, which an args string splits on).
            args = [
              f"pretrained={arm['workdir']}",
              f"protocol={protocol}",
              f"shots={shots}",
              f"seed={seed}",
            ]
            if not arm["workdir"] and arm.get("model"):  # from scratch: its architecture
              args.append(f"model={arm['model']}")
            overrides = {
              "data": ds["data"],
              **dict(study.get("transfer_overrides", {})),
              **dict(limit.get("overrides", {})),
              **dict(ds.get("overrides", {})),
              **dict(arm.get("transfer_overrides", {})),
              "feature_cache": os.path.join(workdir, "features"),
              "tags": ";".join(f"{k}={v}" for k, v in tags.items()),
            }
            deps = [f"pretrain/{arm['name']}"] if arm["workdir"] else []
            runs.append(
              Run(
                "transfer",
                name,
                os.path.join(workdir, name),
                resolve_config_path(f"{study.transfer_config}:{','.join(args)}"),
                overrides,
                deps,
                {
                  "method": arm.get("method", "scratch"),
                  "data": arm.get("source", ""),
                  "size": arm.get("size", ""),
                  "model": arm.get("model", ""),
                  "downstream": ds["name"],
                  "protocol": protocol,
                  "shots": shots,
                  "seed": seed,
                },
                _transfer_images(transfer_base, ds, shots, protocol, overrides),
              )
            )
  for i, r in enumerate(runs):
    r.index = i
  return runs


# ----------------------------------------------------------------------------- workers

MANIFEST = "manifest.json"


class ManifestError(ValueError):
  """A study whose runs no longer match its frozen manifest; one line."""


def manifest_of(runs: list[Run], root: str = "") -> dict[str, Any]:
  return {
    "version": 1,
    "runs": [
      {
        "index": r.index,
        "name": r.name,
        "kind": r.kind,
        "deps": list(r.deps),
        "cost": float(r.images or 0.0),
        "identity": r.identity(root),
      }
      for r in runs
    ],
  }


def freeze_manifest(workdir: str, runs: list[Run], update: bool = False) -> dict[str, Any]:
  """WORKDIR/manifest.json: the study's runs by index, written at the first start and compared
  at every later one, so that an index means the same run on every worker. A study whose runs
  changed (another config, another arm) is refused in one line naming the first difference —
  unless ``update`` (the study run without --worker, the one process running it, rewrites it
  and says so)."""
  path = os.path.join(workdir, MANIFEST)
  now = manifest_of(runs, workdir)
  if paths.exists(path) and update:
    frozen = paths.read_json(path)
    if frozen.get("runs") != now["runs"]:
      log_lib.info(
        f"{path}: the study changed since it was written ({len(frozen.get('runs', []))} -> "
        f"{len(now['runs'])} runs); rewritten (workers of the old study must not be running)"
      )
    else:
      return frozen
  elif paths.exists(path):
    frozen = paths.read_json(path)
    old = {m["index"]: m for m in frozen.get("runs", [])}
    for m in now["runs"]:
      o = old.get(m["index"])
      if o is None or (o["name"], o["identity"]) != (m["name"], m["identity"]):
        was = f"{o['name']} ({o['identity']})" if o else "absent"
        raise ManifestError(
          f"{path}: run {m['index']} is {m['name']} ({m['identity']}) now, {was} when the "
          f"study started; workers would disagree on what an index means: use another "
          f"--workdir, or remove {MANIFEST} once no worker of the old study runs"
        )
    if len(old) != len(now["runs"]):
      raise ManifestError(
        f"{path}: the study had {len(old)} runs when it started and has {len(now['runs'])} now; "
        f"use another --workdir, or remove {MANIFEST} once no worker of the old study runs"
      )
    return frozen
  paths.makedirs(workdir)
  paths.write_json(path, now, indent=1)  # several workers may write it at once: the same content
  return now


def parse_worker(spec: str, env=None) -> tuple[int, int]:
  """(index, count) of ``--worker``: 'I/N', 'slurm' (SLURM_ARRAY_TASK_ID counted from
  SLURM_ARRAY_TASK_MIN, of SLURM_ARRAY_TASK_COUNT; with several srun tasks per array task —
  one per GPU — each task is a worker of its own: SLURM_PROCID of SLURM_NTASKS within it) or
  'k8s:N' (JOB_COMPLETION_INDEX of N). Several workers packed on one host by
  launch/pack.sh add BT_PACK_INDEX of BT_PACK_COUNT the same way."""
  env = os.environ if env is None else env
  try:
    if spec == "slurm":
      if "SLURM_ARRAY_TASK_ID" not in env:
        raise ValueError("SLURM_ARRAY_TASK_ID is not set (not a SLURM array task)")
      lo = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
      index, count = int(env["SLURM_ARRAY_TASK_ID"]) - lo, int(env["SLURM_ARRAY_TASK_COUNT"])
      tasks, proc = int(env.get("SLURM_NTASKS", "1")), int(env.get("SLURM_PROCID", "0"))
      index, count = index * tasks + proc, count * tasks
    elif spec.startswith("k8s:"):
      if "JOB_COMPLETION_INDEX" not in env:
        raise ValueError("JOB_COMPLETION_INDEX is not set (not a Kubernetes Indexed Job)")
      index, count = int(env["JOB_COMPLETION_INDEX"]), int(spec[4:])
    else:
      i, slash, n = spec.partition("/")
      if not slash:
        raise ValueError("expected I/N, slurm or k8s:N")
      index, count = int(i), int(n)
    if "BT_PACK_COUNT" in env:  # launch/pack.sh: several workers in this task, one per device
      k, m = int(env.get("BT_PACK_INDEX", "0")), int(env["BT_PACK_COUNT"])
      index, count = index * m + k, count * m
  except (KeyError, ValueError) as e:
    raise ValueError(f"--worker={spec}: {e}") from None
  if not 0 <= index < count:
    raise ValueError(f"--worker={spec}: worker {index} of {count} (0 <= I < N)")
  return index, count


def shares(runs: list[Run], count: int) -> list[list[Run]]:
  """The runs split over ``count`` workers, balanced by estimated cost (largest first, each to
  the least-loaded worker; ties by index): the same split on every worker. Each share in
  manifest order (pre-training before the transfer runs that need it)."""
  load, out = [0.0] * count, [[] for _ in range(count)]
  for r in sorted(runs, key=lambda r: (-(r.images or 0.0), r.index)):
    w = min(range(count), key=lambda i: (load[i], i))
    out[w].append(r)
    load[w] += max(r.images or 0.0, 1.0)
  return [sorted(share, key=lambda r: r.index) for share in out]


STAGES = {
  "pretrain": ("pretrain", "convert"),
  "transfer": ("transfer",),
  "all": ("pretrain", "convert", "transfer"),
}


def _failed(e: BaseException) -> str:
  """A run's failure on one line (the study goes on with the next run)."""
  return f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def run_worker(runs: list[Run], workdir: str, spec: str, stage: str) -> int:
  """One worker's share of the study in this process (JAX start-up and compiled programs paid
  once). Returns the exit code: 0 when every run of the share is finished (here or by another
  worker), 1 when one failed or waits for a pre-training that is not finished, PREEMPTED_EXIT
  on SIGTERM/SIGINT (after the run in progress saved)."""
  index, count = parse_worker(spec)
  if stage not in STAGES:
    raise ValueError(f"--stage={stage}: one of {', '.join(STAGES)}")
  mine = [r for r in shares([r for r in runs if r.kind in STAGES[stage]], count)[index]]
  by_name = {r.name: r for r in runs}
  log_lib.info(f"worker {index}/{count} ({stage}): {len(mine)} of {len(runs)} runs")
  outcome: dict[str, str] = {}
  signals = runlock.OutsideLoopSignals(workdir)
  try:
    for i, r in enumerate(mine, 1):
      where = f"[worker {index} {i}/{len(mine)}] {r.name}"
      if r.done():
        outcome[r.name] = "done"
        log_lib.info(f"{where}: already finished")
        continue
      waiting = [d for d in r.deps if d in by_name and not by_name[d].done()]
      if waiting:
        outcome[r.name] = "waiting"
        log_lib.info(f"{where}: left for later: {waiting[0]} is not finished")
        continue
      # The claim: one worker per run, whatever the over-subscription or requeueing (a claim
      # whose holder is gone — a dead pid here, no heartbeat elsewhere — is taken over).
      claim = runlock.WorkdirLock(r.workdir, log_lib.info, name=".claim")
      try:
        claim.acquire()
      except runlock.LockError as e:
        outcome[r.name] = "claimed"
        log_lib.info(f"{where}: claimed by another worker ({str(e).split(' (')[0]})")
        continue
      t = time.time()
      try:
        if r.done():  # finished by another worker between the check above and the claim
          outcome[r.name] = "done"
          log_lib.info(f"{where}: already finished")
          continue
        log_lib.info(f"{where} ...")
        _run_one(r)
      except runlock.Preempted:
        raise
      except Exception as e:  # noqa: BLE001 - one run's failure must not stop the worker
        outcome[r.name] = "failed"
        log_lib.info(f"{where}: {_failed(e)}")
        continue
      finally:
        claim.release()
      outcome[r.name] = "done"
      log_lib.info(f"{where}: ok in {log_lib.format_duration(time.time() - t)}")
  except runlock.Preempted as e:
    print(f"stopped: worker {index}: {e} (exit {runlock.PREEMPTED_EXIT})", file=sys.stderr)
    return runlock.PREEMPTED_EXIT
  finally:
    signals.restore()
  counts = {k: sum(1 for v in outcome.values() if v == k) for k in sorted(set(outcome.values()))}
  log_lib.info(
    f"worker {index}/{count} finished: " + ", ".join(f"{v} {k}" for k, v in counts.items())
  )
  bad = [k for k, v in outcome.items() if v in ("failed", "waiting")]
  if bad:
    print(
      f"error: worker {index}: {len(bad)} run(s) failed or wait for pre-training: "
      f"{', '.join(bad[:5])}",
      file=sys.stderr,
    )
    return 1
  return 0


# ----------------------------------------------------------------------------- SLURM


@dataclasses.dataclass
class Job:
  """One sbatch submission: ``name``, its sbatch options, the command its tasks run, the jobs
  it waits for (by name) and how (afterok / afterany)."""

  name: str
  options: list[str]
  command: list[str]
  after: list[str]
  dependency: str = "afterok"
  array: int = 0  # tasks (0: not an array)


def slurm_jobs(
  runs: list[Run],
  study_args: list[str],
  study,
  options: list[str],
  runs_per_task: int,
  max_array: int,
) -> list[Job]:
  """The study as SLURM jobs: a job per pre-training arm or conversion (its own command, under
  srun: several nodes join one JAX job), a job array per arm of its transfer runs (workers of
  one share each, ``--worker=slurm --only=<arm> --stage=transfer``) after that arm's job, and a
  report job after every array (afterany: a report of what finished)."""
  # Every command runs as a job step (srun), which --signal reaches two minutes before the time
  # limit: the run saves and exits 75, and the task requeues itself (as SLURM does on
  # preemption with --requeue); its next start resumes.
  common = ["--requeue", "--signal=TERM@120", "--open-mode=append"] + list(options)
  pre_opts = [
    f"--{k.replace('_', '-')}={v}" for k, v in dict(study.get("slurm_pretrain", {})).items()
  ]
  jobs: list[Job] = []

  def logs(name, array=False):  # WORKDIR/slurm/<job>_<id>[_<task>].out
    return f"--output={{workdir}}/slurm/{name.replace('/', '_')}_{'%A_%a' if array else '%j'}.out"

  for r in runs:
    if r.kind in ("pretrain", "convert"):
      cmd = r.command()
      cmd = [sys.executable, *cmd[1:]] if cmd[0] == "python" else cmd  # this environment's
      jobs.append(
        Job(r.name, common + (pre_opts if r.kind == "pretrain" else []) + [logs(r.name)], cmd, [])
      )
  by_arm: dict[str, list[Run]] = {}
  for r in runs:
    if r.kind == "transfer":
      by_arm.setdefault(r.name.split("/")[1], []).append(r)
  arrays = []
  for arm, trs in by_arm.items():
    per_task = max(runs_per_task, -(-len(trs) // max_array))
    tasks = -(-len(trs) // per_task)
    name = f"transfer/{arm}"
    cmd = [*study_args, "--worker=slurm", "--stage=transfer", f"--only=transfer/{arm}/"]
    deps = sorted({d for r in trs for d in r.deps})
    jobs.append(Job(name, common + [logs(name, array=True)], cmd, deps, array=tasks))
    arrays.append(name)
  jobs.append(
    Job(
      "report",
      list(options) + [logs("report")],
      [*study_args, "--collect"],
      arrays,
      dependency="afterany",
    )
  )
  return jobs


def wrap(command: list[str]) -> str:
  """The batch script of a job: its command as a job step; exit 75 (stopped by the time-limit
  signal after saving) requeues the task."""
  return (
    f"srun {shlex.join(command)}; rc=$?; "
    f'if [ "$rc" -eq {runlock.PREEMPTED_EXIT} ]; then scontrol requeue "$SLURM_JOB_ID"; fi; '
    f"exit $rc"
  )


def sbatch_argv(job: Job, ids: dict[str, str], workdir: str) -> list[str]:
  """The sbatch command line of ``job`` (``ids``: the job ids of the jobs it waits for)."""
  argv = ["sbatch", "--parsable", f"--job-name=bt:{job.name}"]
  argv += [o.replace("{workdir}", workdir) for o in job.options]
  if job.array:
    argv.append(f"--array=0-{job.array - 1}")
  wait = [ids[a] for a in job.after if a in ids]
  if wait:
    argv.append(f"--dependency={job.dependency}:{':'.join(wait)}")
  argv += ["--wrap", wrap(job.command)]
  return argv


def submit_slurm(jobs: list[Job], workdir: str, dry_run: bool) -> dict[str, str]:
  """Submits ``jobs`` in order with sbatch (each job's dependencies by the ids sbatch gave);
  ``dry_run``: prints the commands, with ``$<name>`` for the ids. Returns {name: id}."""
  ids: dict[str, str] = {}
  if not dry_run:
    os.makedirs(os.path.join(workdir, "slurm"), exist_ok=True)
  for job in jobs:
    argv = sbatch_argv(job, ids, workdir)
    if dry_run:
      print(shlex.join(argv))
      ids[job.name] = f"${job.name.replace('/', '_')}"
      continue
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode:
      raise RuntimeError(
        f"sbatch failed for {job.name} (exit {out.returncode}): "
        f"{(out.stderr.strip().splitlines() or ['?'])[-1]}"
      )
    ids[job.name] = out.stdout.strip().split(";")[0]
    log_lib.info(f"submitted {job.name}: job {ids[job.name]}")
  return ids


def _config_args() -> list[str]:
  """The study's --config and --config.KEY=VALUE arguments as given (a job runs the same study)."""
  out, argv = [], sys.argv[1:]
  for i, a in enumerate(argv):
    if a.startswith("--config"):
      out.append(a if "=" in a or i + 1 >= len(argv) else f"{a}={argv[i + 1]}")
  return out


def select(runs: list[Run], text: str) -> list[Run]:
  """The runs whose name contains ``text``, and the pre-training runs they depend on."""
  keep = {r.name for r in runs if text in r.name}
  keep |= {d for r in runs if r.name in keep for d in r.deps}
  return [r for r in runs if r.name in keep]


def _transfer_images(base, ds, shots, protocol, overrides) -> float:
  """Examples a transfer run processes, from the grid it will run: for every point (the
  authors' grid with ``paper_grid``, else one per learning rate) its epochs x the training set,
  or its steps x batch; plus the refit of a full-data run on train + val at the grid's mean.
  ``base``: the study's transfer config before the run's own overrides (0 when unknown)."""
  if protocol not in finetune.FINETUNING:
    return 0.0
  get = lambda k: overrides[k] if k in overrides else base.get(k)
  n = ds.get("num_train", 0) if str(shots) == "full" else int(shots) * ds.get("num_classes", 0)
  points, _ = finetune.grid_of(get("paper_grid") or "", protocol, get("lrs") or (0.0,))
  steps, epochs, batch = get("total_steps"), get("total_epochs"), get("batch_size") or 1
  per_point = [
    float(n) * e
    if e
    else (float(steps) * min(int(b or batch), n) if steps else float(n) * float(epochs or 0))
    for _, b, e in points
  ]
  total = sum(per_point)
  if str(shots) == "full" and get("refit_full") and not get("val_split") and protocol != "wise_ft":
    total += total / len(per_point)
  return total


def _time_kind(run: Run) -> str:
  """How the study's closing time summary groups a run: pre-training, conversion, or transfer
  by protocol."""
  if run.kind == "transfer":
    return f"transfer {run.fields.get('protocol', '')}".strip()
  return {"pretrain": "pre-training", "convert": "conversion"}.get(run.kind, run.kind)


def _run_one(run: Run):
  if run.kind == "convert":
    rc = convert_checkpoint.main([*run.convert_args, f"--out={run.workdir}"])
    if rc:
      raise RuntimeError(f"convert_checkpoint exited with {rc} (its error is above)")
    return
  config = _load_run_config(run)
  config.lock()
  accept = FLAGS["accept_changes"].value if "accept_changes" in FLAGS else ""
  if run.kind == "pretrain":
    train.run(config, run.workdir, accept_changes=accept)
  else:
    finetune.run(config, run.workdir, accept_changes=accept)


def _load_run_config(run: Run):
  config = config_lib.load(run.config)
  config.unlock()
  apply_overrides(config, run.overrides)
  return config


def check(runs: list[Run]) -> list[tuple[str, list[str]]]:
  """Every run's config resolved and validated and its data opened, as the run itself would
  before compiling — nothing trained, nothing written. Returns [(problem, run names)], one
  entry per distinct problem."""
  errors = (
    config_lib.ConfigError,
    sources.DataError,
    finetune.TransferError,
    app.UserError,
    checkpoint.CheckpointError,
    ValueError,
    KeyError,
  )
  problems: dict[str, list[str]] = {}
  arm_of: dict[str, tuple] = {}  # pre-training run name -> (method, model)
  opened: dict[tuple, Any] = {}  # downstream data, opened once for all its runs

  def note(run, e):
    msg = f"{type(e).__name__}: {e}" if isinstance(e, KeyError) else str(e)
    problems.setdefault(msg.splitlines()[0] if msg else type(e).__name__, []).append(run.name)

  for run in runs:
    try:
      if run.kind == "convert":
        src = next((a for a in run.convert_args if not a.startswith("-")), "")
        if not run.done() and not os.path.isfile(src):
          raise checkpoint.CheckpointError(
            f"public checkpoint {src!r} not found (download it first: docs/DATA.md, "
            f"'Reference checkpoints')"
          )
        arm_of[run.name] = (run.fields["method"], run.fields["model"])
        continue
      config = _load_run_config(run)
      if run.kind == "pretrain":
        train.prepare(config, None)
        arm_of[run.name] = (config.method, config.model)
        continue
      if run.deps and run.deps[0] not in arm_of:
        raise ValueError("depends on a pre-training run with a problem (listed above)")
      pre_method, pre_model = arm_of[run.deps[0]] if run.deps else (None, None)
      finetune.check_protocol(config)  # config problems first: they hold with or without data
      finetune.with_model(config, pre_model)
      key = (config.data, config.train_split, config.val_split, config.test_split, config.data_dir)
      if key not in opened:
        opened[key] = finetune.transfer_sources(config)
      names = opened[key]["class_names"]
      data = {
        "train": opened[key]["pool"],
        "class_names": names,
        "num_classes": config.num_classes or (len(names) if names else 2),
      }
      finetune.resolve(config, pre_method, pre_model, data)
    except errors as e:
      note(run, e)
  return sorted(problems.items(), key=lambda kv: kv[1][0])


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
  by = {}
  for r in tr:
    by.setdefault(r.fields["downstream"], 0)
    by[r.fields["downstream"]] += 1
  methods = sorted({r.fields["method"] for r in runs if r.fields.get("method")})
  return (
    f"{len(runs)} runs: {len(pre)} pre-training, "
    + (f"{len(conv)} public checkpoints converted, " if conv else "")
    + f"{len(tr)} transfer over "
    f"{len(by)} downstream sets ({', '.join(f'{k} {v}' for k, v in by.items())}); methods: "
    f"{', '.join(methods)}\ncompute estimate: {images:.3g} images processed "
    f"(~{images / throughput / 3600:.3g} accelerator-hours at {throughput:g} images/s)"
  )


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  if FLAGS.config is None or FLAGS.workdir is None:
    print("error: --config and --workdir are required", file=sys.stderr)
    sys.exit(2)
  study, workdir = FLAGS.config, FLAGS.workdir
  try:
    runs = expand(study, workdir)
  except (ValueError, KeyError) as e:
    print(f"error: study config: {e}", file=sys.stderr)
    sys.exit(2)
  all_runs = runs
  if FLAGS.only:
    runs = select(runs, FLAGS.only)
  throughput = float(study.get("throughput", 1000.0))
  if FLAGS.check:
    problems = check(runs)
    for msg, names in problems:
      more = f" and {len(names) - 1} more run(s)" if len(names) > 1 else ""
      print(f"error: {names[0]}{more}: {msg}", file=sys.stderr)
    bad = sum(len(n) for _, n in problems)
    print(
      f"checked {len(runs)} runs: {len(runs) - bad} ok, {bad} with {len(problems)} "
      f"distinct problem(s)"
    )
    sys.exit(1 if problems else 0)
  if FLAGS.submit:
    if FLAGS.submit != "slurm":
      print(
        f"error: --submit={FLAGS.submit}: only slurm (Kubernetes: launch/k8s_study.yaml)",
        file=sys.stderr,
      )
      sys.exit(2)
    study_args = [
      sys.executable,
      "-m",
      "big_transfer.study",
      *_config_args(),
      f"--workdir={workdir}",
    ]
    if FLAGS.accept_changes:
      study_args.append(f"--accept_changes={FLAGS.accept_changes}")
    jobs = slurm_jobs(
      [r for r in runs if not r.done()],
      study_args,
      study,
      [o for o in FLAGS.slurm.split(";") if o.strip()],
      FLAGS.runs_per_task,
      FLAGS.max_array,
    )
    if not FLAGS.dry_run:
      freeze_manifest(workdir, all_runs, update=True)
    try:
      # SLURM writes its logs to a file system: the workdir's slurm/, or for a workdir in a
      # bucket ./slurm_logs/<study> on the submitting host's (shared) disk
      logs = (
        workdir
        if not paths.is_url(workdir)
        else os.path.abspath(
          os.path.join("slurm_logs", _slug(study.get("name", "") or paths.basename(workdir)))
        )
      )
      submit_slurm(jobs, logs, dry_run=FLAGS.dry_run)
    except (RuntimeError, FileNotFoundError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    return
  if FLAGS.dry_run:
    print(_table(runs))
    print(summary(runs, throughput))
    return
  if FLAGS.print_commands:
    for r in runs:
      if not r.done():
        print(shlex.join(r.command()))
    return
  # Compiled programs persist across runs (and restarts): most runs share shapes.
  paths.makedirs(workdir)
  # (a node-local cache when the launcher names one: launch/pack.sh; a study in a bucket
  # keeps it on the local disk)
  jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("JAX_COMPILATION_CACHE_DIR")
    or (
      os.path.join(tempfile.gettempdir(), "big_transfer_jax_cache")
      if paths.is_url(workdir)
      else os.path.join(workdir, ".jax_cache")
    ),
  )
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  if FLAGS.worker:
    try:
      freeze_manifest(workdir, all_runs)
      sys.exit(run_worker(runs, workdir, FLAGS.worker, FLAGS.stage))
    except (ValueError, ManifestError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  freeze_manifest(workdir, all_runs, update=True)
  status: dict[str, str] = {}
  t0 = time.time()
  results_path = os.path.join(workdir, "results.jsonl")
  healed, healed_runs, table_ids = heal_results(runs, results_path)
  if healed:
    log_lib.info(
      f"{results_path}: {healed} row(s) of {healed_runs} finished run(s) were "
      f"missing; appended from the runs' own done.json"
    )
  finished = {r.name for r in runs if r.done(table_ids)}
  todo = [r for r in runs if r.name not in finished]
  if FLAGS.collect:
    for r in todo:
      status[r.name] = "not finished"
    todo = []
  for r in runs:
    if r.name in finished:
      status[r.name] = "done"
  log_lib.info(
    f"study {study.get('name', '')}: {len(runs)} runs, {len(runs) - len(todo)} "
    f"already finished, {len(todo)} to run"
  )
  eta = Eta()
  times = log_lib.TimeBreakdown()

  for i, r in enumerate(todo):
    failed_dep = [d for d in r.deps if status.get(d) in ("failed", "skipped")]
    if failed_dep:
      status[r.name] = "skipped"
      log_lib.info(f"[{i + 1}/{len(todo)}] {r.name}: skipped ({failed_dep[0]} failed)")
      continue
    t = time.time()
    log_lib.info(f"[{i + 1}/{len(todo)}] {r.name} ...")
    try:
      with times.run(_time_kind(r)):
        _run_one(r)
        if r.kind == "transfer":  # the table is derived from the run's own done.json
          heal_results([r], results_path)
      status[r.name] = "done"
    except runlock.Preempted as e:  # stop the study too; run it again to go on
      print(f"stopped: {r.name}: {e} (exit {runlock.PREEMPTED_EXIT})", file=sys.stderr)
      sys.exit(runlock.PREEMPTED_EXIT)
    except Exception as e:  # noqa: BLE001 - one run's failure must not stop the study
      status[r.name] = "failed"
      log_lib.info(f"[{i + 1}/{len(todo)}] {r.name}: {_failed(e)}")
      continue
    eta.add(r, time.time() - t)
    done_n = sum(1 for v in status.values() if v == "done")
    log_lib.info(
      f"[{i + 1}/{len(todo)}] {r.name}: ok in "
      f"{log_lib.format_duration(time.time() - t)} | {done_n}/{len(runs)} done, "
      f"elapsed {log_lib.format_duration(time.time() - t0)}, eta "
      f"{log_lib.format_duration(eta.remaining(todo[i + 1 :]))}"
    )
  failed = [k for k, v in status.items() if v in ("failed", "skipped", "not finished")]
  if FLAGS.report and paths.exists(os.path.join(workdir, "results.jsonl")):
    t_report = time.time()
    out = report.write_report(workdir, study)
    times.add("report", time.time() - t_report)
    rows, bad = report.split_rows(transfer.read_results(os.path.join(workdir, "results.jsonl")))
    print(report.summary(report.aggregate(rows)), flush=True)
    if bad:
      print(
        f"{len(bad)} row(s) left out of the tables (listed in the report): "
        f"{bad[0][1]}{', ...' if len(bad) > 1 else ''}",
        flush=True,
      )
    log_lib.info(f"report: {out} (figures and every table beside it)")
  if times.by_kind:
    log_lib.info(times.summary(time.time() - t0))
  if failed:
    print(
      f"error: {len(failed)} runs failed or were skipped: {', '.join(failed[:5])}", file=sys.stderr
    )
    sys.exit(1)
  log_lib.info(f"study done: {len(runs)} runs in {log_lib.format_duration(time.time() - t0)}")


def entry():
  define_flags()
  absl_app.run(main, flags_parser=config_lib.flags_parser)


if __name__ == "__main__":
  entry()
