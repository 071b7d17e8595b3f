"""The config contract: defaults for every key, typed variant args, validation, durations.

Every pre-training config starts from :func:`base_config` and is locked: a key that is not
declared here (or by the config file) is rejected by ml_collections when overridden on the
command line. :func:`validate` checks values (method, model, data spec, preprocessing strings,
optimiser) and raises :class:`ConfigError` with one line naming the key, before anything compiles.
Durations may be given in steps, epochs or examples; :func:`resolve_steps` turns them into steps
in this one place.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
import re
import sys
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_dict

from big_transfer import cli, methods, models, optim, schema
from big_transfer.evaluators import common as evals_lib


class ConfigError(ValueError):
  pass


def load(path_and_arg: str) -> ml_collections.ConfigDict:
  """Loads ``configs/...py[:arg]`` as the entrypoints do (``get_config(arg)``), locked."""
  path, sep, arg = path_and_arg.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location("_bt_config_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if sep else module.get_config()
  config.lock()
  return config


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def cadence(config, preset: str, **changes):
  """Sets the loop cadence and input threads (log_every, checkpoint_every, eval_every,
  data_threads) from a preset of configs/cadence.py — one place for every config — then
  ``changes``. Returns ``config``."""
  path = os.path.join(CONFIGS, "cadence.py")
  spec = importlib.util.spec_from_file_location("_bt_cadence", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if preset not in module.PRESETS:
    raise ConfigError(f"cadence preset {preset!r}: not one of {', '.join(module.PRESETS)} ({path})")
  for key, value in {**module.PRESETS[preset], **changes}.items():
    config[key] = value
  return config


def placeholder(t):
  return config_dict.placeholder(t)


def _check_run(config) -> None:
  if config.method not in methods.METHODS:
    raise ConfigError(
      f"config.method={config.method!r}: not one of {', '.join(sorted(methods.METHODS))}"
    )
  try:
    cls, defaults = models.parse(config.model)
  except ValueError as e:
    raise ConfigError(f"config.model: {e}") from None
  params = inspect.signature(cls.__init__).parameters
  for k in config.model_kwargs:
    if k not in params or k in ("self", "rngs", "num_classes", "dtype"):
      known = [p for p in params if p not in ("self", "rngs", "num_classes", "dtype")]
      raise ConfigError(
        f"config.model_kwargs.{k}: not an argument of {cls.__name__} (known: {', '.join(known)})"
      )
  if config.dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"config.dtype={config.dtype!r}: not float32 or bfloat16")
  for key in ("batch_size", "checkpoint_every", "log_every", "keep_checkpoints"):
    if config[key] <= 0:
      raise ConfigError(f"config.{key}={config[key]}: must be positive")
  for i, rule in enumerate(config.param_sharding):
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ConfigError(f"config.param_sharding[{i}]={rule!r}: expected (regex, how)")


# The run's own keys: what it trains (method, model), for how long, how often it logs and
# saves, how it starts and where its parameters live. The data, optimiser, method, evaluator and
# logging keys are declared by their modules (sections()).
RUN = schema.Section(
  "",
  __name__,
  keys=(
    schema.Key("method", "supervised", "the pre-training method (methods.METHODS)"),
    schema.Key(
      "model", "resnet50", "a model name (models: resnetD, bit_rDxW, clip_rnD, vit_{ti,s,m,b,l,h}P)"
    ),
    schema.Key("model_kwargs", {}, "the model's other arguments (e.g. width, image_size)"),
    schema.Key("batch_size", 256, "the global batch, over all processes and devices"),
    schema.Key(
      "total_steps",
      placeholder(int),
      "the run's length: exactly one of "
      "total_steps, total_epochs, total_examples (resolved to steps)",
    ),
    schema.Key("total_epochs", placeholder(float), "the run's length in epochs"),
    schema.Key("total_examples", placeholder(int), "the run's length in examples seen"),
    schema.Key("eval_batch_size", placeholder(int), "default: batch_size"),
    schema.Key("log_every", 50, "steps between metrics rows"),
    schema.Key(
      "eval_every", placeholder(int), "steps between evaluations (default: checkpoint_every)"
    ),
    schema.Key("checkpoint_every", 1000, "steps between checkpoints"),
    schema.Key("keep_checkpoints", 3, "the newest checkpoints kept"),
    schema.Key("keep_every", placeholder(int), "also keep every N-th step forever"),
    schema.Key(
      "allow_fresh_start",
      False,
      "when checkpoints exist but none restores (all "
      "corrupt), a run stops with an error naming each; True starts again from step "
      "0 instead (saying so)",
    ),
    schema.Key("seed", 0, "initialisation, data order and augmentation"),
    schema.Key(
      "init_from",
      "",
      "start from another checkpoint of the same model (e.g. one "
      "made by convert_checkpoint), by name, instead of random weights",
    ),
    schema.Key("init_skip", "", "init_from: comma-separated name prefixes kept fresh"),
    schema.Key("dtype", "float32", "compute dtype; parameters stay float32"),
    schema.Key("mesh", {"data": -1, "fsdp": 1}, "the device mesh (data x fsdp; -1: the rest)"),
    schema.Key(
      "param_sharding",
      ((".*", "fsdp"),),
      "ordered (regex over 'a/b/kernel', how) rules; how: 'fsdp', 'replicate' or a spec tuple",
    ),
    schema.Key("param_sharding_min_size", 2**14, "'fsdp' leaves smaller arrays replicated"),
    schema.Key(
      "ema_decay",
      0.0,
      "> 0 keeps an exponential moving average of the weights "
      "(evaluated and transferred instead of the weights)",
    ),
    schema.Key("label_smoothing", 0.0, "supervised and transfer cross-entropy"),
  ),
  check=_check_run,
)


def sections() -> list[schema.Section]:
  """Every section of the base config, in order: the run's, the data's, the optimiser's, each
  registered method's, the evaluators', logging's."""
  from big_transfer import logging as log_lib
  from big_transfer.data import pipeline

  method_sections = [
    s for name in methods.known() for s in methods.method_class(name).config_sections
  ]
  return schema.unique(
    [
      RUN,
      pipeline.SECTION,
      optim.SECTION,
      *method_sections,
      evals_lib.SECTION,
      log_lib.SECTION,
      log_lib.WANDB_SECTION,
    ]
  )


def base_config() -> ml_collections.ConfigDict:
  """Every key a run reads, at its default (the sections of :func:`sections`)."""
  return schema.build(sections())


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Typed variant args: ``'model=vit_s16,steps=100,runlocal'`` against typed defaults.

  A bare name sets a bool default to True. Unknown names are errors listing the known ones.
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(","):
    if not item.strip():
      continue
    key, eq, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"config arg {key!r} is not one of: {', '.join(sorted(defaults))}")
    default = defaults[key]
    if not eq:
      if not isinstance(default, bool):
        raise ConfigError(f"config arg {key!r} needs a value ({key}=...)")
      out[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ConfigError(f"config arg {key}={value!r}: expected true or false")
      out[key] = value.lower() in ("true", "1")
    elif isinstance(default, int):
      out[key] = int(value)
    elif isinstance(default, float):
      out[key] = float(value)
    else:
      out[key] = value
  return out


def resolve_steps(
  total_steps,
  total_epochs,
  total_examples,
  *,
  batch_size: int,
  num_examples: int | None,
  what: str = "total",
) -> int:
  """One of steps / epochs / examples -> steps. 0 counts as unset, so a command line can
  switch units: ``--config.total_steps=0 --config.total_epochs=20``."""
  given = {
    k: v
    for k, v in (("steps", total_steps), ("epochs", total_epochs), ("examples", total_examples))
    if v
  }
  if len(given) != 1:
    raise ConfigError(
      f"config: set exactly one of {what}_steps, {what}_epochs, "
      f"{what}_examples (got {', '.join(given) or 'none'})"
    )
  ((unit, v),) = given.items()
  if v < 0:
    raise ConfigError(f"config.{what}_{unit}={v}: must be positive")
  if unit == "steps":
    return int(v)
  if unit == "examples":
    return max(1, math.ceil(v / batch_size))
  if num_examples is None:
    raise ConfigError(f"config.{what}_epochs: the source's size is unknown; give steps")
  return max(1, math.ceil(v * num_examples / batch_size))


def validate(config, extra: tuple = ()) -> None:
  """Checks values that would otherwise fail late, section by section (each owner's check;
  ``extra``: sections beyond the base config's); raises ConfigError with one line."""
  for section in sections() + list(extra):
    if section.check is None:
      continue
    try:
      section.check(config)
    except schema.SectionError as e:
      raise ConfigError(str(e)) from None


def to_plain(config) -> dict[str, Any]:
  """A JSON-able dict of a ConfigDict (placeholders resolved to None)."""
  return config_dict.ConfigDict(config).to_dict()


def _clean(e: BaseException) -> str:
  text = str(e.args[0]) if e.args else str(e)
  while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    text = text[1:-1]
  return " ".join(text.replace("\\n", " ").replace("\\'", "'").split())


def usage(program: str) -> str:
  """``--help`` of an absl entrypoint in the one help format of every entry point
  (``cli.render``): its docstring (the examples) and every flag it defines, with its help and
  default (absl alone lists none of them and exits 1)."""
  doc = (getattr(sys.modules.get("__main__"), "__doc__", None) or "").strip()
  module = _entry_module() or program
  by_module = flags.FLAGS.flags_by_module_dict()
  mine = [
    f
    for m, fs in by_module.items()
    if m.startswith(("big_transfer", "__main__"))
    or m.endswith(("train.py", "finetune.py", "study.py"))
    for f in fs
  ]
  mine += [flags.FLAGS["verbosity"]] if "verbosity" in flags.FLAGS else []
  entries, seen = [], set()
  for f in mine:
    if f.name in seen:
      continue
    seen.add(f.name)
    shown = {"config": "FILE[:ARGS]", "workdir": "DIR"}.get(f.name)
    entries.append(cli.flag_entry(f, shown, required=f.name in ("config", "workdir")))
  entries.append(
    (
      "--config.KEY=VALUE (repeatable)",
      "override any key of the config"
      + (" (--print_config lists them with their values)" if "print_config" in flags.FLAGS else ""),
    )
  )
  return cli.render(
    doc,
    f"python -m {module} --config=FILE[:ARGS] --workdir=DIR [--config.KEY=VALUE ...] [flags]",
    flag_entries=entries,
  )


def describe(config, extra: tuple = ()) -> str:
  """Every key of a config (dotted) with its value and its meaning as its section declares it
  (keys a config file adds, such as an evaluator entry's, without one). ``extra``: sections
  beyond the base config's (a transfer config's: finetune.sections())."""
  meanings = schema.help_of(list(sections()) + list(extra))
  out = []
  for key, value in sorted(dotted(to_plain(config)).items()):
    meaning = meaning_of(key, meanings)
    out.append(f"{key} = {value!r}" + (f"  # {meaning}" if meaning else ""))
  return "\n".join(out)


def meaning_of(key: str, meanings: dict[str, str]) -> str:
  """A dotted key's meaning, else that of the nearest enclosing key that has one (a dict-valued
  key such as ``mesh`` or ``lp`` documents its entries)."""
  while key:
    if meanings.get(key):
      return meanings[key]
    key = key.rpartition(".")[0]
  return ""


def dotted(d: dict, prefix: str = "") -> dict[str, Any]:
  """Every leaf of a nested dict under its dotted key: {'a': {'b': 1}} -> {'a.b': 1}. Empty
  dicts and lists are leaves (compared and shown as one value)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and v:
      out.update(dotted(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


SYNONYMS = {
  "learning_rate": "lr",
  "lr_schedule": "schedule",
  "wd": "weight_decay",
  "steps": "total_steps",
  "num_steps": "total_steps",
  "epochs": "total_epochs",
  "bs": "batch_size",
  "warmup": "warmup_steps",
  "dataset": "data",
}


def nearest_key(key: str, keys) -> str | None:
  """The key a mistyped or moved one most likely means, anywhere in the config: one ending in
  the same dotted name ('zeroshot.data' -> 'evals.zeroshot.data'), a known synonym in the same
  section ('optimizer.learning_rate' -> 'optimizer.lr'), else the closest spelling of the
  whole key, else of its last part (same section first). None when nothing is close."""
  import difflib

  keys = list(keys)
  tail = [k for k in keys if k.endswith("." + key)]
  if tail:
    return min(tail, key=len)
  parent, _, leaf = key.rpartition(".")
  want = SYNONYMS.get(leaf)
  if want:
    same = [k for k in keys if k.rpartition(".")[2] == want]
    pick = [k for k in same if k.rpartition(".")[0] == parent] or same
    if pick:
      return pick[0]
  close = difflib.get_close_matches(key, keys, n=1, cutoff=0.8)
  if close:
    return close[0]
  by_leaf: dict[str, list[str]] = {}
  for k in keys:
    by_leaf.setdefault(k.rpartition(".")[2], []).append(k)
  names = difflib.get_close_matches(leaf, list(by_leaf), n=3, cutoff=0.75)
  cands = [k for n in names for k in by_leaf[n]]
  same_parent = [k for k in cands if k.rpartition(".")[0] == parent]
  return (same_parent or cands or [None])[0]


def _nearest_configs(path: str) -> str | None:
  """The existing config file nearest to a mistyped path."""
  import difflib
  import glob

  root = os.path.dirname(path) if os.path.isdir(os.path.dirname(path) or ".") else ""
  pool = glob.glob(os.path.join(root or "configs", "**", "*.py"), recursive=True)
  if not pool:
    pool = glob.glob(os.path.join("configs", "**", "*.py"), recursive=True)
  pool = [p for p in pool if not os.path.basename(p).startswith("_")]
  close = difflib.get_close_matches(path, pool, n=1, cutoff=0.5)
  return close[0] if close else None


def _type_name(t) -> str:
  return getattr(t, "__name__", str(t))


def explain_flag_error(argv: list[str]) -> str | None:
  """One line for a command line whose config cannot be built: a config file that does not
  exist (naming the nearest one), an override of a key that does not exist (naming the nearest
  key anywhere in the config, its type and value) or a value that does not parse as the key's
  type (naming key, value and type). None when none of these is the cause."""
  spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
  if spec is None:
    return None
  path = spec.partition(":")[0]
  if not os.path.isfile(path):
    near = _nearest_configs(path)
    return f"--config={spec}: no such config file" + (
      f"; the nearest existing one is {near}" if near else " (configs are under configs/)"
    )
  try:
    config = load(spec)
  except Exception:  # noqa: BLE001  the config file's own error: reported as before
    return None
  keys = dotted(to_plain(config))
  for a in argv[1:]:
    if not a.startswith("--config.") or "=" not in a:
      continue
    key, value = a[len("--config.") :].split("=", 1)
    node, parts, ok = config, key.split("."), True
    for part in parts[:-1]:
      if isinstance(node, ml_collections.ConfigDict) and part in node:
        node = node[part]
      else:
        ok = False
        break
    leaf = parts[-1]
    if not ok or not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      near = nearest_key(key, keys)
      evaluator = key.split(".")[0] in evals_lib.types() and "evals" in config
      if evaluator and near and not near.startswith("evals."):
        near = None  # an evaluator's key: the hint below says where evaluators live
      hint = (
        f"; did you mean {near} ({_type_name(_key_type(config, near))}, now {keys[near]!r})?"
        if near
        else f"; evaluators are configured under evals.<name> (this config has "
        f"{', '.join(config.evals.keys()) or 'none'}); --print_config lists every key"
        if evaluator
        else "; --print_config lists every key"
      )
      return f"--config.{key}={value}: {path} has no key {key!r}{hint}"
    if isinstance(node[leaf], ml_collections.ConfigDict):
      continue
    t = node.get_type(leaf)
    if t in (int, float):
      try:
        t(value)
      except ValueError:
        if not (t is float and _is_int(value)):
          return (
            f"--config.{key}={value}: {key} expects {_type_name(t)} "
            f"(now {node[leaf]!r}); {value!r} is not one"
          )
    if t is bool and value.lower() not in ("true", "false", "1", "0", "yes", "no", "t", "f"):
      return f"--config.{key}={value}: {key} expects true or false (now {node[leaf]!r})"
  return None


def _is_int(text: str) -> bool:
  try:
    int(text)
    return True
  except ValueError:
    return False


def _key_type(config, key: str):
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  try:
    return node.get_type(leaf)
  except (KeyError, AttributeError):
    return type(node[leaf])


def _entry_module() -> str | None:
  """The running entry point's module (``python -m big_transfer.train``: big_transfer.train)."""
  return getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", None)


def flags_parser(argv: list[str]) -> list[str]:
  """absl flag parsing for entrypoints: ``--help`` lists the entrypoint's flags (exit 0); a bad
  flag or config override is one line, exit 2."""
  if any(a in ("--help", "-h", "--helpshort", "-?") for a in argv[1:]):
    print(usage(argv[0]))
    sys.exit(0)
  spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
  if spec is not None and not os.path.isfile(spec.partition(":")[0]):
    print(f"error: {explain_flag_error(argv)}", file=sys.stderr)  # (read lazily by absl)
    sys.exit(2)
  try:
    return flags.FLAGS(argv)
  except flags.UnrecognizedFlagError as e:
    if not e.flagname.startswith("config."):
      cli.fail(_entry_module() or "", cli.unknown_flag(e.flagname, list(flags.FLAGS)))
    return _flag_error(argv, e)
  except Exception as e:  # noqa: BLE001  (absl and ml_collections raise many kinds)
    return _flag_error(argv, e)


def _flag_error(argv: list[str], e: Exception):
  """A command line absl or the config cannot take: one ``error:`` line, exit 2."""
  cause = e
  while cause.__context__ is not None and isinstance(cause, flags.Error):
    cause = cause.__context__
  text = _clean(cause)
  try:
    explained = explain_flag_error(argv)
  except Exception:  # noqa: BLE001  never hide the original error behind a second one
    explained = None
  if explained:
    print(f"error: {explained}", file=sys.stderr)
    sys.exit(2)
  bad = [
    a.split("=")[0]
    for a in argv[1:]
    if a.startswith("--config.") and a.split("=")[0].rsplit(".", 1)[-1] in text
  ]
  if "Traceback" in text:  # an exception inside the config file: keep its last line
    config_arg = next((a for a in argv[1:] if a.startswith("--config=")), "--config")
    msg = f"{config_arg[2:]}: " + re.split(r"\b\w*(?:Error|Exception): ", text)[-1]
  elif isinstance(cause, (KeyError, AttributeError)) and bad:
    msg = f"unknown config key {bad[0][2:]!r} ({text})"
  elif bad:
    msg = f"bad value for {bad[0][2:]}: {text}"
  else:
    msg = text
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)
