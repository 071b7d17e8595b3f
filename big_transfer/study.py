r"""The study runner: expands a study config into pre-training and transfer runs and runs them.

  python -m big_transfer.study --config=configs/mini/study.py --workdir=runs/mini_study
  python -m big_transfer.study --config=configs/study/paper.py --workdir=gs://... --dry_run
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
import json
import os
import shlex
import sys
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
    "only",
    "",
    "Run only runs whose name contains this string (and their pre-training dependencies).",
  )
  flags.DEFINE_bool("report", True, "Write the report when the runs are done.")
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
      return os.path.isdir(os.path.join(self.workdir, "checkpoints", "0", "state"))
    return pretrain_finished(self.workdir)


def finished_rows(workdir: str) -> list[dict] | None:
  """The rows a finished transfer run recorded in its done.json (None: not finished, or a
  done.json that does not read)."""
  path = os.path.join(workdir, "done.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return list(json.load(f)["rows"])
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
  paths = [os.path.join(workdir, n) for n in ("config.json", "done.json")]
  if not all(os.path.exists(p) for p in paths):
    return False
  with open(paths[0]) as f:
    total = json.load(f)["resolved"]["total_steps"]
  with open(paths[1]) as f:
    return json.load(f).get("step") == total


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
              "results_file": os.path.join(workdir, "results.jsonl"),
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
  return runs


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
  os.makedirs(workdir, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
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
      status[r.name] = "done"
    except runlock.Preempted as e:  # stop the study too; run it again to go on
      print(f"stopped: {r.name}: {e} (exit {runlock.PREEMPTED_EXIT})", file=sys.stderr)
      sys.exit(runlock.PREEMPTED_EXIT)
    except Exception as e:  # noqa: BLE001 - one run's failure must not stop the study
      status[r.name] = "failed"
      log_lib.info(
        f"[{i + 1}/{len(todo)}] {r.name}: FAILED: {type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}"
      )
      continue
    eta.add(r, time.time() - t)
    done_n = sum(1 for v in status.values() if v == "done")
    log_lib.info(
      f"[{i + 1}/{len(todo)}] {r.name}: ok in "
      f"{log_lib.format_duration(time.time() - t)} | {done_n}/{len(runs)} done, "
      f"elapsed {log_lib.format_duration(time.time() - t0)}, eta "
      f"{log_lib.format_duration(eta.remaining(todo[i + 1 :]))}"
    )
  failed = [k for k, v in status.items() if v in ("failed", "skipped")]
  if FLAGS.report and os.path.exists(os.path.join(workdir, "results.jsonl")):
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
