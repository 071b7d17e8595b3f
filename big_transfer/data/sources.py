"""Data sources by spec string: ``builtin:NAME``, ``tfds:NAME[:SPLIT]``, ``arrayrecord:PATH``.

A source is random access (``len`` and ``__getitem__``) and yields dicts of numpy values
(``image`` as HxWxC uint8 or encoded bytes, ``label`` as an int, optionally ``caption``). It
also knows its class names. Everything that can go wrong with a spec (unknown kind, missing
dataset, missing split) is raised as :class:`DataError` with one line naming the spec, before
any compile.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Sequence

import msgpack
import numpy as np

from big_transfer.data import builtin


class DataError(ValueError):
  """A data spec that cannot be served; the message names the spec and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Spec:
  kind: str
  name: str
  split: str | None

  def with_split(self, split: str) -> "Spec":
    return dataclasses.replace(self, split=split)

  def __str__(self):
    return f"{self.kind}:{self.name}" + (f":{self.split}" if self.split else "")


KINDS = ("builtin", "tfds", "arrayrecord")


def parse_spec(spec: str) -> Spec:
  """``kind:name[:split]``. For arrayrecord the name is a path; a split suffix is recognised
  when it names a split of the manifest (``arrayrecord:/data/cifar:test``)."""
  kind, sep, rest = spec.partition(":")
  if not sep or kind not in KINDS or not rest:
    raise DataError(f"data spec {spec!r}: expected one of "
                    f"{', '.join(k + ':...' for k in KINDS)} (e.g. builtin:digits, "
                    f"tfds:cifar100:train, arrayrecord:/path/to/converted)")
  if kind == "arrayrecord":
    path, _, split = rest.rpartition(":")
    if path and not os.sep in split and re.fullmatch(r"[\w\[\]:%+-]+", split):
      return Spec(kind, path, split)
    return Spec(kind, rest, None)
  name, _, split = rest.partition(":")
  return Spec(kind, name, split or None)


_SLICE = re.compile(r"^(\w+)(?:\[(-?\d*%?):(-?\d*%?)\])?$")


def _split_and_slice(split: str, spec: Spec) -> tuple[str, str | None, str | None]:
  m = _SLICE.match(split)
  if not m:
    raise DataError(f"data spec {spec}: bad split {split!r} (use NAME or NAME[a:b], "
                    f"a/b counts or percentages)")
  return m[1], m[2], m[3]


def _resolve_bound(b: str | None, n: int, default: int) -> int:
  if b is None or b == "":
    return default
  if b.endswith("%"):
    return int(round(n * int(b[:-1]) / 100))
  v = int(b)
  return v if v >= 0 else n + v


class Sliced:
  """A contiguous slice of a random-access source."""

  def __init__(self, source, lo: int, hi: int):
    self.source, self.lo, self.hi = source, lo, hi
    self.class_names = getattr(source, "class_names", None)

  def __len__(self):
    return self.hi - self.lo

  def __getitem__(self, i):
    if not 0 <= i < len(self):
      raise IndexError(i)
    return self.source[self.lo + i]


class TfdsSource:
  """A TFDS dataset through ``tfds.data_source`` (ArrayRecord, no TensorFlow needed)."""

  def __init__(self, name: str, split: str, data_dir: str | None = None):
    import tensorflow_datasets as tfds
    self.source = tfds.data_source(name, split=split, data_dir=data_dir)
    self.class_names = None
    feats = self.source.dataset_info.features
    if "label" in feats and hasattr(feats["label"], "names"):
      self.class_names = tuple(feats["label"].names)

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return dict(self.source[i])


MANIFEST = "manifest.json"


def encode_record(example: dict[str, Any]) -> bytes:
  """One ArrayRecord record: a msgpack map of bytes / str / int / float / small arrays."""
  def enc(v):
    if isinstance(v, np.ndarray):
      return {"__nd__": True, "dtype": v.dtype.str, "shape": list(v.shape), "data": v.tobytes()}
    if isinstance(v, np.generic):
      return v.item()
    return v
  return msgpack.packb({k: enc(v) for k, v in example.items()}, use_bin_type=True)


def decode_record(record: bytes) -> dict[str, Any]:
  d = msgpack.unpackb(record, raw=False)
  for k, v in d.items():
    if isinstance(v, dict) and v.get("__nd__"):
      d[k] = np.frombuffer(v["data"], dtype=np.dtype(v["dtype"])).reshape(v["shape"])
  return d


class ArrayRecordSource:
  """ArrayRecord shards written by ``big_transfer.data.convert`` (or :func:`write_arrayrecord`):
  ``PATH/manifest.json`` plus ``PATH/<split>-NNNNN-of-MMMMM.array_record`` files."""

  def __init__(self, path: str, split: str):
    from array_record.python import array_record_data_source as ards
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
      raise DataError(f"data spec arrayrecord:{path}: no {MANIFEST} in {path!r} "
                      f"(write one with `python -m big_transfer.data.convert`)")
    with open(manifest_path) as f:
      self.manifest = json.load(f)
    splits = self.manifest.get("splits", {})
    if split not in splits:
      raise DataError(f"data spec arrayrecord:{path}: no split {split!r} "
                      f"(splits: {', '.join(sorted(splits)) or 'none'})")
    files = [os.path.join(path, f) for f in splits[split]["files"]]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
      raise DataError(f"data spec arrayrecord:{path}: missing shard {missing[0]!r}")
    self.source = ards.ArrayRecordDataSource(files)
    self.class_names = tuple(self.manifest["class_names"]) if self.manifest.get(
        "class_names") else None

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return decode_record(self.source[i])


def write_arrayrecord(path: str, splits: dict[str, Sequence[dict[str, Any]]], *,
                      class_names: Sequence[str] | None = None, num_shards: int = 1,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """Writes examples as ArrayRecord shards plus a manifest; returns the manifest."""
  from array_record.python import array_record_module as arm
  os.makedirs(path, exist_ok=True)
  manifest = {"format": "big_transfer.arrayrecord/1", "splits": {},
              "class_names": list(class_names) if class_names else None, **(extra or {})}
  for split, examples in splits.items():
    examples = list(examples)
    files = []
    for s in range(num_shards):
      fname = f"{split}-{s:05d}-of-{num_shards:05d}.array_record"
      w = arm.ArrayRecordWriter(os.path.join(path, fname), "group_size:1")
      for ex in examples[s::num_shards]:
        w.write(encode_record(ex))
      w.close()
      files.append(fname)
    manifest["splits"][split] = {"files": files, "num_examples": len(examples)}
  with open(os.path.join(path, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=1)
  return manifest


def open_source(spec: str | Spec, default_split: str = "train"):
  """Opens a spec; raises DataError with one line naming what is wrong."""
  spec = parse_spec(spec) if isinstance(spec, str) else spec
  split, lo, hi = _split_and_slice(spec.split or default_split, spec)
  if spec.kind == "builtin":
    if spec.name not in builtin.BUILTINS:
      raise DataError(f"data spec {spec}: unknown built-in dataset {spec.name!r} "
                      f"(known: {', '.join(sorted(builtin.BUILTINS))})")
    cls = builtin.BUILTINS[spec.name]
    if split not in cls.SPLITS:
      raise DataError(f"data spec {spec}: no split {split!r} (splits: {', '.join(cls.SPLITS)})")
    source = cls(split)
  elif spec.kind == "tfds":
    import tensorflow_datasets as tfds
    # tfds handles its own slicing syntax; hand it the split string unchanged.
    try:
      source = TfdsSource(spec.name, spec.split or default_split)
    except tfds.core.registered.DatasetNotFoundError:
      raise DataError(f"data spec {spec}: TFDS has no dataset {spec.name!r}") from None
    except (FileNotFoundError, AssertionError) as e:
      raise DataError(f"data spec {spec}: TFDS dataset {spec.name!r} is not prepared "
                      f"({str(e).splitlines()[0][:200]}); run tfds build or set TFDS_DATA_DIR"
                      ) from None
    except ValueError as e:
      raise DataError(f"data spec {spec}: {str(e).splitlines()[0][:200]}") from None
    return source
  else:
    if not os.path.isdir(spec.name):
      raise DataError(f"data spec {spec}: directory {spec.name!r} does not exist")
    source = ArrayRecordSource(spec.name, split)
  n = len(source)
  if lo is None and hi is None:
    return source
  a, b = _resolve_bound(lo, n, 0), _resolve_bound(hi, n, n)
  if not 0 <= a < b <= n:
    raise DataError(f"data spec {spec}: slice [{lo}:{hi}] is empty or outside 0..{n}")
  return Sliced(source, a, b)
