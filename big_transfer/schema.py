"""Config sections as data: each subsystem declares the keys it reads (default and meaning) and
checks their values; ``config_lib`` assembles them into the config every run starts from.

  SECTION = schema.Section("optimizer", owner=__name__, keys=(
      schema.Key("lr", 0.1, "peak learning rate"), ...), check=_check)

``prefix`` '' puts the keys at the top level of the config (``config.data``), a name puts them
under it (``config.optimizer.lr``). ``check(config)`` raises :class:`SectionError` with one line
naming the key and the value; it may read other sections' keys it depends on. The help is what
``--print_config`` prints beside every key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import ml_collections
from ml_collections import config_dict


class SectionError(ValueError):
  """A value a section's check refuses; the message names the key and the value."""


@dataclasses.dataclass(frozen=True)
class Key:
  name: str
  default: Any  # a value, or ml_collections' placeholder(type) for a typed None
  help: str = ""


@dataclasses.dataclass(frozen=True)
class Section:
  prefix: str
  owner: str  # the module that reads these keys
  keys: tuple[Key, ...]
  check: Callable[[Any], None] | None = None
  help: str = ""  # what the section is (shown once above its keys)

  def dotted(self, key: str) -> str:
    return f"{self.prefix}.{key}" if self.prefix else key


def build(sections: Iterable[Section]) -> ml_collections.ConfigDict:
  """The config of every section's keys at their defaults (a key declared twice is a bug)."""
  c = ml_collections.ConfigDict()
  seen: dict[str, str] = {}
  for s in sections:
    target = c
    if s.prefix:
      if s.prefix not in c:
        c[s.prefix] = ml_collections.ConfigDict()
      target = c[s.prefix]
    for k in s.keys:
      name = s.dotted(k.name)
      if name in seen:
        raise ValueError(f"config key {name} is declared by {seen[name]} and {s.owner}")
      seen[name] = s.owner
      target[k.name] = _fresh(k.default)
  return c


def _fresh(default):
  """A default as a new value for each config: a placeholder is a reference that every config
  holding the same object would share (setting it in one would set it in all)."""
  if isinstance(default, config_dict.FieldReference):
    return config_dict.placeholder(default.get_type())
  if isinstance(default, dict):
    return ml_collections.ConfigDict({k: _fresh(v) for k, v in default.items()})
  return default


def help_of(sections: Iterable[Section]) -> dict[str, str]:
  """{dotted key: its meaning} (a section's own help for its prefix)."""
  out = {}
  for s in sections:
    if s.prefix and s.help:
      out[s.prefix] = s.help
    for k in s.keys:
      out[s.dotted(k.name)] = k.help
  return out


def unique(sections: Iterable[Section]) -> list[Section]:
  """Sections in order, each once (several methods may share one)."""
  out, ids = [], set()
  for s in sections:
    if id(s) not in ids:
      ids.add(id(s))
      out.append(s)
  return out
