"""A study config, declared and checked, and the plan it expands into: runs, groups, shares.

  study = load_study("configs/mini/study.py")   # every key checked against the schema below
  runs = expand(study, workdir)                 # pre-training and transfer runs, in order
  groups = group_runs(runs)                     # (arm, downstream set): what a Group shares
  mine = shares(runs, count)[index]             # a worker's groups, balanced by cost

The study config is data like every other config: its top-level keys, each pre-training arm's,
each downstream set's and each per-protocol limit's are declared here (:data:`STUDY`,
:data:`ARM`, :data:`DOWNSTREAM`, :data:`LIMIT`) with their defaults and meanings; a key that is
not declared is one error line naming the nearest declared one, before anything runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
from typing import Any

import ml_collections

from big_transfer import config_lib, methods, paths, protocols, schema
from big_transfer.protocols.ft import grid_of
from big_transfer.workdir import Workdir


class StudyConfigError(ValueError):
  """A study config that does not follow its schema; one line naming the entry and the key."""


# ----------------------------------------------------------------------------- the schema

STUDY = schema.Section(
  "",
  __name__,
  help="a study",
  keys=(
    schema.Key("name", "", "the study's name (the report's title)"),
    schema.Key("pretrain", [], "pre-training arms: a list of arm entries (ARM)"),
    schema.Key("downstream", [], "downstream sets: a list of downstream entries (DOWNSTREAM)"),
    schema.Key("transfer_config", "", "the transfer runs' config file (configs/finetune/...)"),
    schema.Key("transfer_overrides", {}, "config overrides of every transfer run"),
    schema.Key("protocols", ("lp",), "the protocols every arm runs (an arm may name its own)"),
    schema.Key(
      "protocol_settings",
      {},
      "per protocol: limits and overrides of its runs ({protocol: LIMIT entry})",
    ),
    schema.Key("shots", ("full",), "shots per class of every transfer run ('full': all)"),
    schema.Key("seeds", (0,), "seeds of every transfer run (zero-shot: the first)"),
    schema.Key("throughput", 1000.0, "images/s the compute estimate assumes"),
    schema.Key("slurm_pretrain", {}, "--submit=slurm: sbatch options of pre-training jobs"),
  ),
)

ARM = schema.Section(
  "pretrain[]",
  __name__,
  help="a pre-training arm",
  keys=(
    schema.Key("name", "", "the arm's name (required, unique): its workdir and row tag"),
    schema.Key("config", "", "its pre-training config path[:args]; '' with no convert: scratch"),
    schema.Key("overrides", {}, "its pre-training config overrides"),
    schema.Key("convert", (), "instead of pre-training: convert_checkpoint's arguments"),
    schema.Key("workdir", "", "an existing run's workdir instead of WORKDIR/pretrain/<name>"),
    schema.Key("method", "", "label: the pre-training method (rows, figures)"),
    schema.Key("source", "", "label: the pre-training data source"),
    schema.Key("size", "", "label: the pre-training data size"),
    schema.Key("model", "", "the architecture (a scratch arm's; labels otherwise)"),
    schema.Key("group", "", "label: which contrasts of the report the arm belongs to"),
    schema.Key("published", "", "label: the arm's name in the authors' results log"),
    schema.Key("pretrain_note", "", "label: the arm's own word on its pre-training recipe"),
    schema.Key("num_examples", 0, "pre-training examples (the estimate of epoch-long runs)"),
    schema.Key("protocols", (), "its protocols instead of the study's"),
    schema.Key("shots", (), "its shots instead of the study's"),
    schema.Key("transfer_overrides", {}, "config overrides of its transfer runs"),
  ),
)

DOWNSTREAM = schema.Section(
  "downstream[]",
  __name__,
  help="a downstream set",
  keys=(
    schema.Key("name", "", "the set's name (required, unique)"),
    schema.Key("data", "", "its data spec (required), e.g. tfds:cifar100"),
    schema.Key("num_train", 0, "its training examples: the compute estimate, --check"),
    schema.Key("num_classes", 0, "its classes: the compute estimate, --check"),
    schema.Key("shots", (), "its shots instead of the study's"),
    schema.Key("overrides", {}, "config overrides of its transfer runs"),
  ),
)

LIMIT = schema.Section(
  "protocol_settings[]",
  __name__,
  help="one protocol's limits",
  keys=(
    schema.Key("shots", (), "its shots (default: the arm's, the set's, the study's)"),
    schema.Key("seeds", (), "its seeds (default: the study's)"),
    schema.Key("downstream", (), "the downstream sets it runs on (default: all)"),
    schema.Key("overrides", {}, "config overrides of its runs"),
  ),
)

SECTIONS = (STUDY, ARM, DOWNSTREAM, LIMIT)


def _entry(section: schema.Section, where: str, value) -> dict[str, Any]:
  """``value`` (a dict or ConfigDict) over the section's defaults; an undeclared key is a
  StudyConfigError naming the nearest declared one."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if not isinstance(value, dict):
    raise StudyConfigError(f"study config: {where}: expected a dict of keys, got {value!r}")
  known = [k.name for k in section.keys]
  for key in value:
    if key not in known:
      near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
      hint = f"; did you mean {near[0]!r}?" if near else f" (keys: {', '.join(known)})"
      raise StudyConfigError(f"study config: {where}: unknown key {key!r}{hint}")
  return {**{k.name: k.default for k in section.keys}, **value}


def load_study(study) -> ml_collections.ConfigDict:
  """The study config with every entry checked against its section (:data:`SECTIONS`) and
  filled with the defaults: a mistyped key, a missing name, two arms or sets of one name, an
  unknown protocol are one StudyConfigError line."""
  top = _entry(STUDY, "top level", study)
  arms = [_entry(ARM, f"pretrain[{i}]", a) for i, a in enumerate(top["pretrain"])]
  sets = [_entry(DOWNSTREAM, f"downstream[{i}]", d) for i, d in enumerate(top["downstream"])]
  for what, entries, required in (
    ("pretrain", arms, ("name",)),
    ("downstream", sets, ("name", "data")),
  ):
    names = [e["name"] for e in entries]
    for i, e in enumerate(entries):
      for key in required:
        if not e[key]:
          raise StudyConfigError(f"study config: {what}[{i}]: {key!r} is required")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
      raise StudyConfigError(f"study: two {what} entries named {dup[0]!r}")
  limits = {}
  for p, v in dict(top["protocol_settings"]).items():
    _known_protocol(p, "protocol_settings")
    limits[p] = _entry(LIMIT, f"protocol_settings[{p!r}]", v)
  for p in tuple(top["protocols"]) + tuple(x for a in arms for x in a["protocols"]):
    _known_protocol(p, "protocols")
  return ml_collections.ConfigDict(
    {**top, "pretrain": arms, "downstream": sets, "protocol_settings": limits}
  )


def _known_protocol(name: str, where: str) -> None:
  if name not in protocols.PROTOCOLS:
    near = difflib.get_close_matches(name, protocols.known(), n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]!r}?" if near else f" (known: {', '.join(protocols.known())})"
    raise StudyConfigError(f"study config: {where}: unknown protocol {name!r}{hint}")


def estimate_problems(study) -> list[tuple[str, str]]:
  """(entry, problem) for each downstream set without what the compute estimate needs
  (num_train and num_classes): ``--check`` refuses them."""
  out = []
  for d in study.downstream:
    missing = [k for k in ("num_train", "num_classes") if not d.get(k)]
    if missing:
      out.append(
        (
          f"downstream {d['name']!r}",
          f"study config: downstream {d['name']!r}: no {' or '.join(missing)} (the compute "
          f"estimate and --check's sizes where the data is absent need them)",
        )
      )
  return out


# ----------------------------------------------------------------------------- runs


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

  @property
  def group(self) -> str:
    """What the run shares its opened data, features and programs with: its (arm, downstream
    set) for a transfer run, itself otherwise."""
    if self.kind != "transfer":
      return self.name
    return f"{self.fields.get('arm', '')}/{self.fields.get('downstream', '')}"

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
    wd = Workdir(self.workdir)
    if self.kind == "transfer":
      rows = wd.transfer_rows()
      if rows is None:
        return False
      return table_ids is None or all(r.get("row_id") in table_ids for r in rows)
    if self.kind == "convert":
      return wd.has_checkpoint(0)
    return wd.pretrain_finished()


def _flag_value(v) -> str:
  if isinstance(v, bool):
    return "true" if v else "false"
  if isinstance(v, (tuple, list)):
    return "(" + ",".join(_flag_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
  return str(v)


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


def with_args(config_spec: str, args: list[str]) -> str:
  """A config path[:its own args] with more args appended: ``file.py:epochs=6`` and
  ``pretrained=...`` give ``file.py:epochs=6,pretrained=...`` (never a second ':')."""
  path, sep, own = config_spec.partition(":")
  return f"{path}:{','.join([a for a in [own] if a] + args)}"


def load_run_config(run: Run):
  """A run's config: its file with its args, then its overrides."""
  config = config_lib.load(run.config)
  config.unlock()
  apply_overrides(config, run.overrides)
  return config


def expand(study, workdir: str) -> list[Run]:
  """Every run of the study, pre-training first; transfer runs name their dependency."""
  study = load_study(study)
  runs: list[Run] = []
  arms = {}
  for arm in study.pretrain:
    arm = dict(arm)
    run = _arm_run(arm, workdir)
    if run is not None:
      runs.append(run)
    arm["workdir"] = run.workdir if run is not None else ""
    arms[arm["name"]] = arm
  try:  # the transfer runs' defaults, for their compute estimates
    base = config_lib.load(resolve_config_path(study.transfer_config)).to_dict()
  except Exception:  # noqa: BLE001 - an estimate only; --check and the runs report the error
    base = {}
  for arm in arms.values():
    runs += _transfer_runs(study, arm, base, workdir)
  for i, r in enumerate(runs):
    r.index = i
  return runs


def _arm_run(arm: dict, workdir: str) -> Run | None:
  """The run that makes an arm's checkpoint: a conversion (a public checkpoint) or a
  pre-training run; None for an arm from scratch."""
  name = arm["name"]
  wd = arm.get("workdir") or os.path.join(workdir, "pretrain", name)
  fields = {
    "method": arm.get("method", ""),
    "data": arm.get("source", ""),
    "size": arm.get("size", ""),
    "model": arm.get("model", ""),
  }
  if arm.get("convert"):  # a public checkpoint, converted (transfer-only reference arm)
    return Run(
      "convert", f"pretrain/{name}", wd, "", {}, [], fields, convert_args=tuple(arm["convert"])
    )
  if not arm.get("config"):
    return None
  overrides = dict(arm.get("overrides", {}))
  images = 0.0
  try:  # the compute estimate: steps x batch from the resolved config
    c = apply_overrides(config_lib.load(resolve_config_path(arm["config"])), overrides)
    steps = c.total_steps or 0
    if not steps and c.total_epochs:
      steps = c.total_epochs * (arm.get("num_examples") or 0) / c.batch_size
    images = float(steps) * c.batch_size
    arm["model"] = arm.get("model") or c.model
    fields["model"] = arm["model"]
  except Exception:  # noqa: BLE001 - an estimate only; the run validates itself
    pass
  return Run(
    "pretrain",
    f"pretrain/{name}",
    wd,
    resolve_config_path(arm["config"]),
    overrides,
    [],
    fields,
    images,
  )


def _grid(study, arm, ds, protocol):
  """(shots, seeds) of the runs of ``protocol`` on ``ds`` for ``arm``, or None when the
  protocol's limits leave the set out or the arm cannot run it."""
  limit = study.protocol_settings.get(protocol, {})
  if limit.get("downstream") and ds["name"] not in limit["downstream"]:
    return None
  shots = tuple(arm.get("shots") or limit.get("shots") or ds.get("shots") or study.shots)
  seeds = tuple(limit.get("seeds") or study.seeds)
  if protocols.get(protocol).needs_text_tower:
    if not methods.has_text_tower(arm.get("method")):
      return None  # zero-shot needs a text tower
    shots, seeds = ("full",), seeds[:1]  # no training images, nothing random
  return shots, seeds


def _tags(arm, ds) -> dict[str, str]:
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
    raise StudyConfigError(
      f"study: arm {arm['name']!r}: {bad[0]}={tags[bad[0]]!r} holds "
      f"';' or '=' (row tags are 'k=v;k2=v2')"
    )
  return tags


def _transfer_runs(study, arm: dict, base: dict, workdir: str) -> list[Run]:
  """Every transfer run of one arm: downstream set x protocol x shots x seed."""
  out = []
  for ds in study.downstream:
    for protocol in tuple(arm.get("protocols") or study.protocols):
      grid = _grid(study, arm, ds, protocol)
      if grid is None:
        continue
      limit = study.protocol_settings.get(protocol, {})
      for shots in grid[0]:
        for seed in grid[1]:
          out.append(_transfer_run(study, arm, ds, protocol, limit, shots, seed, base, workdir))
  return out


def _transfer_run(study, arm, ds, protocol, limit, shots, seed, base, workdir) -> Run:
  what = (
    protocol
    if protocols.get(protocol).needs_text_tower
    else (f"{protocol}_full" if str(shots) == "full" else f"{protocol}_{shots}shot")
  )
  name = f"transfer/{arm['name']}/{ds['name']}/{what}_s{seed}"
  tags = _tags(arm, ds)
  # Config args choose how the config is built; values reach the run as structured overrides
  # (a data spec may hold commas, which an args string splits on).
  args = [f"pretrained={arm['workdir']}", f"protocol={protocol}", f"shots={shots}", f"seed={seed}"]
  if not arm["workdir"] and arm.get("model"):  # from scratch: its architecture
    args.append(f"model={arm['model']}")
  overrides = {
    "data": ds["data"],
    **dict(study.transfer_overrides),
    **dict(limit.get("overrides", {})),
    **dict(ds.get("overrides", {})),
    **dict(arm.get("transfer_overrides", {})),
    "feature_cache": os.path.join(workdir, "features"),
    "tags": ";".join(f"{k}={v}" for k, v in tags.items()),
  }
  fields = {
    "method": arm.get("method") or "scratch",
    "data": arm.get("source", ""),
    "size": arm.get("size", ""),
    "model": arm.get("model", ""),
    "arm": arm["name"],
    "downstream": ds["name"],
    "protocol": protocol,
    "shots": shots,
    "seed": seed,
  }
  return Run(
    "transfer",
    name,
    os.path.join(workdir, name),
    resolve_config_path(with_args(study.transfer_config, args)),
    overrides,
    [f"pretrain/{arm['name']}"] if arm["workdir"] else [],
    fields,
    transfer_images(base, ds, shots, protocol, overrides),
  )


def transfer_images(base, ds, shots, protocol, overrides) -> float:
  """Examples a transfer run processes, from the grid it will run: for every point (the
  authors' grid with ``paper_grid``, else one per learning rate) its epochs x the training set,
  or its steps x batch; plus the refit of a full-data run on train + val at the grid's mean.
  ``base``: the study's transfer config before the run's own overrides (0 when unknown)."""
  if not protocols.get(protocol).trains:
    return 0.0
  get = lambda k: overrides[k] if k in overrides else base.get(k)
  n = ds.get("num_train", 0) if str(shots) == "full" else int(shots) * ds.get("num_classes", 0)
  points, _ = grid_of(get("paper_grid") or "", protocol, get("lrs") or (0.0,))
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


def select(runs: list[Run], text: str) -> list[Run]:
  """The runs whose name contains ``text``, and the pre-training runs they depend on."""
  keep = {r.name for r in runs if text in r.name}
  keep |= {d for r in runs if r.name in keep for d in r.deps}
  return [r for r in runs if r.name in keep]


# ----------------------------------------------------------------------------- groups, shares


def group_runs(runs: list[Run]) -> list[list[Run]]:
  """The runs by group (:attr:`Run.group`), each group in manifest order, groups in the order
  of their first run."""
  out: dict[str, list[Run]] = {}
  for r in runs:
    out.setdefault(r.group, []).append(r)
  return list(out.values())


def shares(runs: list[Run], count: int) -> list[list[Run]]:
  """The runs split over ``count`` workers by whole groups (a worker opens a group's data and
  compiles its programs once), balanced by estimated cost (largest group first, each to the
  least-loaded worker; ties by index): the same split on every worker. Each share in manifest
  order (pre-training before the transfer runs that need it)."""
  load, out = [0.0] * count, [[] for _ in range(count)]
  cost = lambda g: sum(max(r.images or 0.0, 1.0) for r in g)
  for g in sorted(group_runs(runs), key=lambda g: (-cost(g), g[0].index)):
    w = min(range(count), key=lambda i: (load[i], i))
    out[w] += g
    load[w] += cost(g)
  return [sorted(share, key=lambda r: r.index) for share in out]


# ----------------------------------------------------------------------------- the manifest


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


def freeze_manifest(workdir: str, runs: list[Run], update: bool = False, log=print) -> dict:
  """WORKDIR/manifest.json: the study's runs by index, written at the first start and compared
  at every later one, so that an index means the same run on every worker. A study whose runs
  changed (another config, another arm) is refused in one line naming the first difference —
  unless ``update`` (the study run without --worker, the one process running it, rewrites it
  and says so)."""
  path = Workdir(workdir).manifest
  now = manifest_of(runs, workdir)
  if not paths.exists(path):
    paths.makedirs(workdir)
    paths.write_json(path, now, indent=1)  # several workers may write it at once: same content
    return now
  frozen = paths.read_json(path)
  if update:
    if frozen.get("runs") != now["runs"]:
      log(
        f"{path}: the study changed since it was written ({len(frozen.get('runs', []))} -> "
        f"{len(now['runs'])} runs); rewritten (workers of the old study must not be running)"
      )
      paths.write_json(path, now, indent=1)
      return now
    return frozen
  old = {m["index"]: m for m in frozen.get("runs", [])}
  for m in now["runs"]:
    o = old.get(m["index"])
    if o is None or (o["name"], o["identity"]) != (m["name"], m["identity"]):
      was = f"{o['name']} ({o['identity']})" if o else "absent"
      raise ManifestError(
        f"{path}: run {m['index']} is {m['name']} ({m['identity']}) now, {was} when the "
        f"study started; workers would disagree on what an index means: use another "
        f"--workdir, or remove {os.path.basename(path)} once no worker of the old study runs"
      )
  if len(old) != len(now["runs"]):
    raise ManifestError(
      f"{path}: the study had {len(old)} runs when it started and has {len(now['runs'])} now; "
      f"use another --workdir, or remove {os.path.basename(path)} once no worker of the old "
      f"study runs"
    )
  return frozen


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
