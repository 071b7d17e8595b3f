"""Evaluators declared in config and built by type (big_vision's ``evaluators/common.py`` shape).

  config.evals.fewshot = dict(type="fewshot_linear", data="builtin:digits", pp="...",
                              shots=(1, 5, 10), every=500)
  config.evals.zeroshot = dict(type="zeroshot", data="builtin:digits", templates="clip7")
  config.evals.retrieval = dict(type="retrieval", data="builtin:glyphs", pp="...|tokenize")

One contract: ``run(weights) -> {metric: value}`` on a :class:`~big_transfer.state.Weights`
(the trainer hands evaluators ``state.weights()``: the EMA parameters when the run keeps them).
An evaluator names its metrics without a prefix (``digits/10shot``); :func:`build` prefixes
them with the entry's config name, in one place (``fewshot/digits/10shot``). Every evaluator is
exact on any number of hosts: fixed-shape batches, a mask for padding and failed records,
per-example outputs gathered back in source order.

Each type lives in its own module, registers itself with :func:`register`, and is listed once
in :data:`MODULES`. It reaches the model only through the named predict functions the trainer
hands it (``ctx.predict``; see ``methods.PREDICTIONS``): a type that needs one the method does
not offer is an EvalConfigError naming both. An entry whose ``data`` is '' is off (so a config can
declare one that a variant or the command line turns on). ``every``: steps between runs (0: the
run's ``eval_every``); every evaluator also runs at the last step.

The held-out classification ``eval`` of a run is the same ``classification`` type, built from
``eval_data`` / ``eval_split`` / ``pp_eval``; transfer runs evaluate their validation and test
splits with it too.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from big_transfer import schema
from big_transfer.data import ops, sources

# The evaluator types: one module each (a new type: a new module here plus one line).
MODULES = (
  "big_transfer.evaluators.classification",
  "big_transfer.evaluators.fewshot_linear",
  "big_transfer.evaluators.zeroshot",
  "big_transfer.evaluators.retrieval",
)

TYPES: dict[str, tuple[Callable, dict[str, Any]]] = {}
COMMON_KEYS = {"type": "", "every": 0}


def register(name: str, **defaults):
  """Registers a builder ``fn(name, settings, ctx) -> evaluator`` for ``type=name`` with its
  keys and their defaults; registering a type twice is an error."""

  def deco(fn):
    if name in TYPES:
      raise ValueError(f"evaluator type {name!r} is registered twice")
    TYPES[name] = (fn, defaults)
    return fn

  return deco


def types() -> dict[str, tuple[Callable, dict[str, Any]]]:
  """{type: (builder, its keys' defaults)} of every registered evaluator type."""
  for module in MODULES:
    importlib.import_module(module)  # each registers its types on import
  return TYPES


@dataclasses.dataclass
class Context:
  """What every evaluator of a run shares: the method's named predict functions
  (``predict[name](model, inputs)``), how to build the model from Weights (``model_of``), the
  mesh and the weights' shardings, the batch size and the keys each batch carries, this
  process's place, and the run-level preprocessing arguments."""

  predict: dict[str, Callable]
  model_of: Callable
  mesh: Any
  weight_shardings: Any
  batch_size: int
  method_name: str = ""
  batch_keys: tuple[str, ...] = ("image", "label")
  process_index: int = 0
  process_count: int = 1
  threads: int = 8
  bind: dict | None = None
  tokenizer: Any = None
  context_length: int = 77
  pp_eval: str = ""
  # Everything the predict functions compute with (model, method, mesh), hashable, when
  # evaluators of equal keys may share compiled programs in this process (programs.py); None:
  # each evaluator compiles its own.
  program_key: tuple | None = None


class EvalConfigError(ValueError):
  """A config.evals entry that cannot be built; the message names the entry and the key."""


def predictor(ctx: Context, entry: str, kind: str, *names: str) -> list[Callable]:
  """``(weights, inputs) -> outputs`` for each named predict function of the method; one the
  method does not offer is an EvalConfigError naming the entry, the type and what it needs."""
  missing = [n for n in names if n not in ctx.predict]
  if missing:
    raise EvalConfigError(
      f"config.evals.{entry}: type {kind} needs the method's "
      f"{' and '.join(missing)}; method {ctx.method_name or '?'} offers "
      f"{', '.join(sorted(ctx.predict)) or 'none'}"
    )
  return [lambda w, x, fn=ctx.predict[n]: fn(ctx.model_of(w), x) for n in names]


class Prefixed:
  """An evaluator whose metric names carry its entry's name (``name/metric``)."""

  def __init__(self, name: str, evaluator):
    self.name, self.evaluator = name, evaluator

  def run(self, weights) -> dict[str, float]:
    return {f"{self.name}/{k}": v for k, v in self.evaluator.run(weights).items()}


def build(name: str, entry, ctx: Context, **kwargs) -> Prefixed:
  """The evaluator of one entry (``kwargs``: what its builder takes beyond the entry, e.g. an
  opened source), its metrics prefixed with ``name``."""
  s = settings(name, entry)
  return Prefixed(name, TYPES[s["type"]][0](name, s, ctx, **kwargs))


def settings(name: str, entry) -> dict[str, Any]:
  """An entry's values over its type's defaults; unknown types and keys rejected."""
  types()
  entry = dict(entry)
  kind = entry.get("type", "")
  name = name or kind
  if kind not in TYPES:
    raise EvalConfigError(
      f"config.evals.{name}.type={kind!r}: not one of {', '.join(sorted(TYPES))}"
    )
  defaults = {**COMMON_KEYS, **TYPES[kind][1]}
  unknown = sorted(set(entry) - set(defaults))
  if unknown:
    raise EvalConfigError(
      f"config.evals.{name}: unknown key {unknown[0]!r} for type {kind} "
      f"(keys: {', '.join(sorted(defaults))})"
    )
  return {**defaults, **entry}


def entry(kind: str, **values) -> dict[str, Any]:
  """A config.evals entry with every key of its type (so each can be overridden from the
  command line: ``--config.evals.fewshot.every=500``)."""
  if kind not in types():
    raise EvalConfigError(f"evaluator type {kind!r}: not one of {', '.join(sorted(TYPES))}")
  return settings(kind, {"type": kind, **values})


def check(evals) -> None:
  """Every entry's type, keys, data spec and op string, without opening anything."""
  for name, entry in dict(evals).items():
    s = settings(name, entry)
    if not s["data"]:
      continue
    try:
      sources.check_spec(s["data"])
      ops.parse(s.get("pp", ""))
    except (sources.DataError, ops.PreprocessError) as e:
      raise EvalConfigError(f"config.evals.{name}: {e}") from None


def _check_config(config) -> None:
  try:
    check(config.evals)
  except EvalConfigError as e:
    raise schema.SectionError(str(e)) from None
  for name, entry in config.evals.items():  # an entry that is off still has to parse
    try:
      ops.parse(dict(entry).get("pp", ""))
    except ops.PreprocessError as e:
      raise schema.SectionError(f"config.evals.{name}.pp: {e}") from None


SECTION = schema.Section(
  "",
  __name__,
  keys=(
    schema.Key(
      "evals",
      {},
      "evaluators run during training, by name: {type, data, every, "
      "...} with type classification, fewshot_linear (closed-form probes on frozen "
      "features), zeroshot or retrieval (image-text methods); an entry whose data is "
      "'' is off; every: steps between runs (0: eval_every). The held-out 'eval' "
      "(eval_data, eval_split, pp_eval) is built the same way",
    ),
  ),
  check=_check_config,
)


def data_specs(evals) -> list[str]:
  """The data specs the enabled entries will open (at their split), for early checks."""
  out = []
  for name, entry in dict(evals).items():
    s = settings(name, entry)
    if s["data"]:
      out.append(sources.spec_with_default_split(s["data"], s.get("split") or "train"))
  return out


def from_config(evals, ctx: Context, default_every: int) -> list[tuple[Any, int]]:
  """(evaluator, every N steps) for every enabled entry of ``config.evals``, in order."""
  out = []
  for name, entry in dict(evals).items():
    s = settings(name, entry)
    if not s["data"]:
      continue
    out.append((build(name, s, ctx), s["every"] or default_every))
  return out
