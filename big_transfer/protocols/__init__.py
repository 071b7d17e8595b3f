"""Transfer protocols as plug-ins: how a transfer run turns a pre-trained model and a downstream
set into result rows.

A protocol is a :class:`~big_transfer.protocols.base.Protocol` subclass in its own file, plus one
line in :data:`PROTOCOLS` (or :func:`register` for one defined elsewhere, e.g. in a test or a
user's package). It declares its own config keys (``sections``), how its head starts
(``head_init``), what its rows record of how they were made (``recipe``), and ``run(session,
base) -> rows``: the engine (session.py) gives it the opened data, the pre-trained weights, the
evaluators, the frozen features and the fine-tuning grid; the entrypoint (finetune.py) gives
every row its common fields, writes the done marker and appends the rows.
"""

from __future__ import annotations

import functools
import importlib

from big_transfer.protocols.base import Protocol

__all__ = ["PROTOCOLS", "Protocol", "get", "known", "register", "sections"]

PROTOCOLS = {
  "ft": "big_transfer.protocols.ft:Protocol",
  "lp": "big_transfer.protocols.lp:Protocol",
  "lp_ft": "big_transfer.protocols.lp_ft:Protocol",
  "zeroshot": "big_transfer.protocols.zeroshot:Protocol",
  "wise_ft": "big_transfer.protocols.wise_ft:Protocol",
}


def register(name: str, target: str) -> None:
  """Adds protocol ``name`` implemented by ``target`` ('module:Class'); a name registered twice
  is an error."""
  if name in PROTOCOLS:
    raise ValueError(f"protocol {name!r} is registered twice ({PROTOCOLS[name]}, {target})")
  PROTOCOLS[name] = target


def known() -> list[str]:
  return list(PROTOCOLS)


@functools.cache
def _class(target: str) -> type[Protocol]:
  module, _, cls = target.partition(":")
  return getattr(importlib.import_module(module), cls)


def get(name: str) -> Protocol:
  """The protocol plug-in ``name``; an unknown name is a ValueError naming the known ones."""
  if name not in PROTOCOLS:
    raise ValueError(f"config.protocol={name!r}: not one of {', '.join(known())}")
  return _class(PROTOCOLS[name])()


def sections() -> list:
  """Every registered protocol's config sections (each once), in registry order."""
  out, seen = [], set()
  for name in PROTOCOLS:
    for s in _class(PROTOCOLS[name]).sections:
      if id(s) not in seen:
        seen.add(id(s))
        out.append(s)
  return out
