"""The op language's registry and builder: ``register``, ``parse`` (op string -> one function),
decode fusion, and the helpers every op module shares.

An op is a factory ``name(args) -> fn(example, rng) -> example`` in one of :data:`MODULES`
(image, keys, augment, device, text), registered with :func:`register`; a new op goes in the
module of its kind (or a new module: one more line in MODULES).
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

Example = dict[str, Any]
Op = Callable[[Example, np.random.Generator], Example]

REGISTRY: dict[str, Callable[..., Op]] = {}
RUN_ARGS: dict[str, tuple[str, ...]] = {}
DETERMINISTIC: set[str] = set()  # ops whose output does not depend on the rng

# The op modules, by kind (each registers its ops on import).
MODULES = (
  "big_transfer.data.pp.image",
  "big_transfer.data.pp.keys",
  "big_transfer.data.pp.augment",
  "big_transfer.data.pp.device",
  "big_transfer.data.pp.text",
)


class PreprocessError(ValueError):
  pass


def register(name: str, run_args: tuple[str, ...] = (), deterministic: bool = False):
  """Registers an op factory under ``name``; ``run_args``: the factory's arguments the
  trainer may bind from run-level values when the op string leaves them out (``parse``'s
  ``bind``, e.g. the tokenizer's ``vocab`` and ``max_len``); ``deterministic``: its output
  never depends on the rng (a chain of such ops gives an example the same output every time,
  so evaluation may keep it: pipeline.EVAL_CACHE). A name registered twice is an error (two
  modules defining one op would otherwise silently pick the last)."""

  def deco(factory):
    if name in REGISTRY:
      raise ValueError(
        f"preprocessing op {name!r} is registered twice "
        f"({REGISTRY[name].__module__}, {factory.__module__})"
      )
    unknown = [a for a in run_args if a not in inspect.signature(factory).parameters]
    if unknown:
      raise ValueError(f"preprocessing op {name!r}: run_args {unknown} are not arguments")
    REGISTRY[name] = factory
    RUN_ARGS[name] = tuple(run_args)
    if deterministic:
      DETERMINISTIC.add(name)
    return factory

  return deco


def load() -> dict[str, Callable[..., Op]]:
  """Every op module imported (each registers its ops): the registry."""
  for module in MODULES:
    importlib.import_module(module)
  return REGISTRY


def _parse_call(text: str) -> tuple[str, tuple, dict]:
  try:
    node = ast.parse(text.strip(), mode="eval").body
  except SyntaxError:
    raise PreprocessError(f"preprocessing op {text!r} is not NAME or NAME(args)") from None
  if isinstance(node, ast.Name):
    return node.id, (), {}
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
    try:
      args = tuple(ast.literal_eval(a) for a in node.args)
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except ValueError:
      raise PreprocessError(f"preprocessing op {text!r}: arguments must be literals") from None
    return node.func.id, args, kwargs
  raise PreprocessError(f"preprocessing op {text!r} is not NAME or NAME(args)")


def _split_ops(spec: str) -> list[str]:
  """Splits on '|' outside quotes and parentheses (two_views takes op strings)."""
  parts, cur, depth, quote = [], [], 0, None
  for ch in spec:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch == "(":
      depth += 1
    elif ch == ")":
      depth -= 1
    elif ch == "|" and depth == 0:
      parts.append("".join(cur))
      cur = []
      continue
    cur.append(ch)
  parts.append("".join(cur))
  return parts


def _bind(name: str, args: tuple, kwargs: dict, bind: dict) -> dict:
  """Fills the op's declared run-level arguments (``register(run_args=...)``) that the op
  string left out, from ``bind`` (the trainer binds e.g. the tokenizer's vocabulary file)."""
  params = list(inspect.signature(REGISTRY[name]).parameters)
  kwargs = dict(kwargs)
  for k in RUN_ARGS.get(name, ()):
    if k in bind and k not in kwargs and params.index(k) >= len(args):
      kwargs[k] = bind[k]
  return kwargs


def is_deterministic(spec: str) -> bool:
  """Whether every op of an op string is declared deterministic (its output a function of the
  example alone)."""
  load()
  calls = [_parse_call(t) for t in _split_ops(spec) if t.strip()]
  return all(name in DETERMINISTIC for name, *_ in calls)


def parse(spec: str, fuse: bool = True, bind: dict | None = None) -> Op:
  """Builds one function from an op string; raises PreprocessError naming the bad op.

  ``fuse`` lets ``decode`` merge into a following crop (see ``_fuse``); ``bind`` supplies
  arguments the string leaves out (see ``_bind``)."""
  load()
  fns = []
  calls = [(*_parse_call(t), t.strip()) for t in _split_ops(spec) if t.strip()]
  for name, _, _, _ in calls:
    if name not in REGISTRY or name.startswith("_"):
      raise PreprocessError(
        f"unknown preprocessing op {name!r} in {spec!r}; known ops: {', '.join(known_ops())}"
      )
  if bind:
    calls = [(n, a, _bind(n, a, k, bind), t) for n, a, k, t in calls]
  for name, args, kwargs, text in _fuse(calls) if fuse else calls:
    try:
      fns.append(REGISTRY[name](*args, **kwargs))
    except PreprocessError:
      raise
    except (TypeError, ValueError) as e:
      raise PreprocessError(f"preprocessing op {text.strip()!r}: bad argument ({e})") from None

  # Encoded images are decoded wherever they are read: a chain without ``decode`` (an eval
  # string written for built-in arrays, used on converted JPEGs) decodes 'image' first.
  auto_decode = None if any("decode" in name for name, *_ in calls) else REGISTRY["decode"]()

  def apply(example: Example, rng: np.random.Generator) -> Example:
    example = dict(example)
    if auto_decode is not None and isinstance(example.get("image"), (bytes, bytearray)):
      example = auto_decode(example, rng)
    for fn in fns:
      example = fn(example, rng)
    return example

  return apply


def _fuse(calls: list[tuple[str, tuple, dict, str]]) -> list[tuple[str, tuple, dict, str]]:
  """``decode`` followed by ``inception_crop`` or ``resize_small`` on the same key becomes one
  op that reads the JPEG header, decodes at a reduced DCT scale and crops: the same boxes from
  the same rng, far fewer pixels decoded."""
  out = []
  i = 0
  while i < len(calls):
    name, args, kwargs, text = calls[i]
    if (
      name == "decode"
      and i + 1 < len(calls)
      and calls[i + 1][0] in ("inception_crop", "resize_small")
      and kwargs.get("key", "image") == calls[i + 1][2].get("key", "image")
      and not args
      and set(kwargs) <= {"key"}
    ):
      nxt = calls[i + 1]
      out.append(("_decode_" + nxt[0], nxt[1], nxt[2], f"{text}|{nxt[3]}"))
      i += 2
      continue
    out.append(calls[i])
    i += 1
  return out


def _size2(size) -> tuple[int, int]:
  if isinstance(size, int):
    if size <= 0:
      raise ValueError(f"size must be positive, got {size}")
    return size, size
  h, w = size
  return int(h), int(w)


def _keyed(fn, key):
  def op(example, rng):
    example[key] = fn(example[key], rng)
    return example

  return op


def known_ops() -> list[str]:
  return sorted(k for k in load() if not k.startswith("_"))
