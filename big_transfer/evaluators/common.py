"""Evaluators declared in config and built by type (big_vision's ``evaluators/common.py`` shape).

  config.evals.fewshot = dict(type="fewshot_linear", data="builtin:digits", pp="...",
                              shots=(1, 5, 10), every=500)
  config.evals.zeroshot = dict(type="zeroshot", data="builtin:digits", templates="clip7")
  config.evals.retrieval = dict(type="retrieval", data="builtin:glyphs", pp="...|tokenize")

One contract: ``run(state) -> {metric: value}``, metric names prefixed by the evaluator's config
name (``fewshot/digits/10shot``, ``zeroshot/digits/accuracy``). Every evaluator is exact on any
number of hosts: fixed-shape batches, a mask for padding and failed records, per-example
outputs gathered back in source order. An entry whose ``data`` is '' is off (so a config can
declare one that a variant or the command line turns on). ``every``: steps between runs (0: the
run's ``eval_every``); every evaluator also runs at the last step.

The held-out classification ``eval`` of a run is the same ``classification`` type, built from
``eval_data`` / ``eval_split`` / ``pp_eval``; transfer runs evaluate their validation and test
splits with it too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from big_transfer.data import ops, pipeline, sources
from big_transfer.evaluators.classification import Evaluator
from big_transfer.evaluators.fewshot_linear import FewShotLinear
from big_transfer.evaluators.retrieval import Retrieval
from big_transfer.evaluators.zeroshot import ZeroShot

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


@dataclasses.dataclass
class Context:
  """What every evaluator of a run shares: the method, how to get the model it evaluates from
  a state (the EMA weights when the run keeps them), the mesh and the state's shardings, the
  batch size, this process's place, and the run-level preprocessing arguments."""
  method: Any
  eval_model: Callable
  mesh: Any
  state_shardings: Any
  batch_size: int
  process_index: int = 0
  process_count: int = 1
  threads: int = 8
  bind: dict | None = None
  tokenizer: Any = None
  context_length: int = 77
  pp_eval: str = ""


class EvalConfigError(ValueError):
  """A config.evals entry that cannot be built; the message names the entry and the key."""


def settings(name: str, entry) -> dict[str, Any]:
  """An entry's values over its type's defaults; unknown types and keys rejected."""
  entry = dict(entry)
  kind = entry.get("type", "")
  name = name or kind
  if kind not in TYPES:
    raise EvalConfigError(f"config.evals.{name}.type={kind!r}: not one of "
                          f"{', '.join(sorted(TYPES))}")
  defaults = {**COMMON_KEYS, **TYPES[kind][1]}
  unknown = sorted(set(entry) - set(defaults))
  if unknown:
    raise EvalConfigError(f"config.evals.{name}: unknown key {unknown[0]!r} for type {kind} "
                          f"(keys: {', '.join(sorted(defaults))})")
  return {**defaults, **entry}


def entry(kind: str, **values) -> dict[str, Any]:
  """A config.evals entry with every key of its type (so each can be overridden from the
  command line: ``--config.evals.fewshot.every=500``)."""
  if kind not in TYPES:
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
    out.append((TYPES[s["type"]][0](name, s, ctx), s["every"] or default_every))
  return out


# ----------------------------------------------------------------------------- the types

@register("classification", data="", split="test", pp="")
def classification(name: str, s: dict, ctx: Context, source=None):
  """The method's ``eval_metrics`` (top-1, loss, ...) averaged over a split; ``source``: an
  opened source instead of ``data`` (transfer runs pass their validation and test splits)."""
  if not hasattr(ctx.method, "eval_metrics"):
    raise EvalConfigError(f"config.evals.{name}: method {getattr(ctx.method, 'name', '?')} "
                          f"has no per-example metrics to evaluate")
  if source is None:
    source = sources.open_source(sources.spec_at_split(s["data"], s["split"],
                                                       drop=sources.TRAINING_ONLY_OPTIONS))
  pp = s["pp"] or ctx.pp_eval
  keys = tuple(getattr(ctx.method, "batch_keys", ("image", "label")))

  def apply(state, batch):
    return ctx.method.eval_metrics(ctx.eval_model(state), batch)

  def make_ds():
    return pipeline.eval_dataset(source, pp=pp, batch_size=ctx.batch_size, keys=keys,
                                 process_index=ctx.process_index,
                                 process_count=ctx.process_count, threads=ctx.threads,
                                 bind=ctx.bind)
  return Evaluator(name, make_ds, apply, ctx.mesh, ctx.state_shardings, len(source))


@register("fewshot_linear", data="", pp="", shots=(1, 5, 10, 25), seeds=(0, 1, 2),
          l2_reg=0.1, train_split="train", test_split="test")
def fewshot_linear(name: str, s: dict, ctx: Context):
  """Closed-form ridge probes on frozen pre_logits at k shots per class (big_vision)."""
  if not hasattr(ctx.method, "features"):
    raise EvalConfigError(f"config.evals.{name}: the method has no features to probe")

  def features(state, batch):
    return ctx.method.features(ctx.eval_model(state), batch["image"])
  return FewShotLinear(s["data"], pp=s["pp"] or ctx.pp_eval, shots=s["shots"],
                       seeds=s["seeds"], l2_reg=s["l2_reg"], features=features,
                       mesh=ctx.mesh, state_shardings=ctx.state_shardings,
                       batch_size=ctx.batch_size, train_split=s["train_split"],
                       test_split=s["test_split"], process_index=ctx.process_index,
                       process_count=ctx.process_count, prefix=name)


def _text_method(name: str, ctx: Context, kind: str):
  if not hasattr(ctx.method, "encode_text"):
    raise EvalConfigError(f"config.evals.{name}: type {kind} needs an image-text method "
                          f"(clip, slip)")
  enc_image = lambda state, images: ctx.method.encode_image(ctx.eval_model(state), images)
  enc_text = lambda state, tokens: ctx.method.encode_text(ctx.eval_model(state), tokens)
  return dict(encode_image=enc_image, encode_text=enc_text, mesh=ctx.mesh,
              state_shardings=ctx.state_shardings, batch_size=ctx.batch_size,
              process_index=ctx.process_index, process_count=ctx.process_count, bind=ctx.bind)


@register("zeroshot", data="", split="test", pp="", templates="clip7")
def zeroshot(name: str, s: dict, ctx: Context):
  """Zero-shot classification with prompt-ensembled class names (CLIP, SigLIP, SLIP)."""
  common = _text_method(name, ctx, "zeroshot")
  return ZeroShot(s["data"], split=s["split"], pp=s["pp"] or ctx.pp_eval,
                  templates=s["templates"], tokenizer=ctx.tokenizer,
                  context_length=ctx.context_length, prefix=name, **common)


@register("retrieval", data="", split="test", pp="", max_examples=1000)
def retrieval(name: str, s: dict, ctx: Context):
  """Image<->text recall@1/5/10 over the first ``max_examples`` pairs of a split."""
  common = _text_method(name, ctx, "retrieval")
  return Retrieval(s["data"], split=s["split"], pp=s["pp"] or ctx.pp_eval,
                   max_examples=s["max_examples"], prefix=name, **common)
