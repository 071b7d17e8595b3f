"""Pre-training methods as plug-ins to the one training loop.

A method is a :class:`~big_transfer.methods.base.Method` subclass in its own file, and one line
in :data:`METHODS` (or :func:`register` for one defined elsewhere, e.g. in a test or a user's
package). Everything else asks :func:`traits` / :func:`get`; no module compares method names.
"""

from __future__ import annotations

import functools
import importlib

from big_transfer.methods.base import PREDICTIONS, Method, Traits

__all__ = [
  "METHODS",
  "PREDICTIONS",
  "Method",
  "Traits",
  "get",
  "has_text_tower",
  "known",
  "register",
  "traits",
]

METHODS = {
  "supervised": "big_transfer.methods.supervised:Method",
  "simclr": "big_transfer.methods.simclr:Method",
  "clip": "big_transfer.methods.clip:Method",
  "slip": "big_transfer.methods.clip:SLIPMethod",
}

NO_METHOD = Traits(image_tower="")  # a run from scratch, a name no registry knows


def register(name: str, target: str) -> None:
  """Adds method ``name`` implemented by ``target`` ('module:Class'); a name registered twice
  is an error."""
  if name in METHODS:
    raise ValueError(f"method {name!r} is registered twice ({METHODS[name]}, {target})")
  METHODS[name] = target


def known() -> list[str]:
  return sorted(METHODS)


@functools.cache
def _class(target: str) -> type[Method]:
  module, _, cls = target.partition(":")
  return getattr(importlib.import_module(module), cls)


def method_class(name: str) -> type[Method]:
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r} (known: {', '.join(known())})")
  return _class(METHODS[name])


def traits(name: str | None) -> Traits:
  """The traits of method ``name`` (those of no method for None or an unknown name)."""
  if not name or name not in METHODS:
    return NO_METHOD
  return method_class(name).traits


def has_text_tower(name: str | None) -> bool:
  return traits(name).text_tower


def get(name: str, config, info) -> Method:
  """Builds the method ``name`` for a resolved config and the training data's ``info``."""
  return method_class(name)(config, info)
