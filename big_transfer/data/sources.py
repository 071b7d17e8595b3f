"""Data sources by spec string: ``builtin:NAME``, ``tfds:NAME[:SPLIT]``, ``arrayrecord:PATH``.

A source is random access (``len`` and ``__getitem__``) and yields dicts of numpy values
(``image`` as HxWxC uint8 or encoded bytes, ``label`` as an int, optionally ``caption``). It
also knows its class names. Everything that can go wrong with a spec (unknown kind, missing
dataset, missing split) is raised as :class:`DataError` with one line naming the spec, before
any compile.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np
from array_record.python import array_record_data_source as ards
from array_record.python import array_record_module as arm

from big_transfer import paths
from big_transfer.data import builtin
from big_transfer.logging import quiet_absl


class DataError(ValueError):
  """A data spec that cannot be served; the message names the spec and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Spec:
  kind: str
  name: str
  split: str | None

  def with_split(self, split: str) -> Spec:
    return dataclasses.replace(self, split=split)

  def __str__(self):
    return f"{self.kind}:{self.name}" + (f":{self.split}" if self.split else "")


KINDS = ("builtin", "tfds", "arrayrecord")


def check_spec(spec: str) -> None:
  """Syntax check of a full spec (options and mixtures included), without opening data."""
  spec = spec.strip()
  if spec.startswith("mix(") and spec.endswith(")"):
    for part in _split_top_level(spec[4:-1]):
      check_spec(part.rpartition("@")[0] or part)
    return
  parse_spec(spec.partition("?")[0])


def parse_spec(spec: str) -> Spec:
  """``kind:name[:split]``. For arrayrecord the name is a path; a split suffix is recognised
  when it names a split of the manifest (``arrayrecord:/data/cifar:test``)."""
  kind, sep, rest = spec.partition(":")
  if not sep or kind not in KINDS or not rest:
    raise DataError(
      f"data spec {spec!r}: expected one of "
      f"{', '.join(k + ':...' for k in KINDS)} (e.g. builtin:digits, "
      f"tfds:cifar100:train, arrayrecord:/path/to/converted)"
    )
  if kind == "arrayrecord":
    # The path may hold colons (gs://...): a split is a trailing ':NAME' or ':NAME[a:b]'.
    m = _PATH_AND_SPLIT.match(rest)
    if m:
      return Spec(kind, m["path"], m["split"])
    return Spec(kind, rest, None)
  name, _, split = rest.partition(":")
  return Spec(kind, name, split or None)


_SLICE = re.compile(r"^(\w+)(?:\[(-?\d*%?):(-?\d*%?)\])?$")
_PATH_AND_SPLIT = re.compile(r"^(?P<path>.+):(?P<split>\w+(?:\[-?\d*%?:-?\d*%?\])?)$")


def _split_and_slice(split: str, spec: Spec) -> tuple[str, str | None, str | None]:
  m = _SLICE.match(split)
  if not m:
    raise DataError(
      f"data spec {spec}: bad split {split!r} (use NAME or NAME[a:b], a/b counts or percentages)"
    )
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


# Where TFDS datasets are read from: config.data_dir when a run sets it (see
# ``set_tfds_data_dir``), else $TFDS_DATA_DIR, else TFDS's own default.
_TFDS_DATA_DIR: str | None = None


def set_tfds_data_dir(path: str | None) -> None:
  """The directory ``tfds:`` specs read from (``config.data_dir``); '' or None: the default."""
  global _TFDS_DATA_DIR
  _TFDS_DATA_DIR = os.path.expanduser(path) if path else None


def tfds_data_dir() -> str:
  return (
    _TFDS_DATA_DIR or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
  )


def prepare_command(name: str, data_dir: str | None = None) -> str:
  return f"python -m big_transfer.data.prepare {name} --data_dir={data_dir or tfds_data_dir()}"


class TfdsSource:
  """A prepared TFDS dataset through ``tfds.data_source`` (ArrayRecord, no TensorFlow needed).

  Never downloads or prepares inside a run (that needs TensorFlow and can take hours): a
  dataset that is not prepared is a DataError naming the command that prepares it."""

  def __init__(self, name: str, split: str, data_dir: str | None = None):
    import tensorflow_datasets as tfds  # lazy: +0.3 s at start-up, tfds: specs only

    self.name, self.split = name, split
    self.data_dir = data_dir or tfds_data_dir()
    if paths.is_url(self.data_dir):
      raise DataError(
        f"data spec tfds:{name}: data_dir {self.data_dir}: "
        + paths.not_local(self.data_dir, "tfds.data_source reads ArrayRecord's local files")
      )
    try:
      with quiet_absl():  # tfds warns about every version folder it looks into
        self.source = tfds.data_source(name, split=split, data_dir=self.data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError:
      raise DataError(f"data spec tfds:{name}: TFDS has no dataset {name!r}") from None
    except Exception as e:  # noqa: BLE001  tfds raises several kinds for "not prepared"
      with quiet_absl():
        raise DataError(_not_prepared_message(name, split, self.data_dir, e)) from None
    self.class_names = None
    feats = self.source.dataset_info.features
    if "label" in feats and hasattr(feats["label"], "names"):
      self.class_names = tuple(feats["label"].names)
    self.identity = ("tfds", name, split)

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return dict(self.source[i])


def _not_prepared_message(name: str, split: str, data_dir: str, error: Exception) -> str:
  """One line: what is missing and the command that prepares it (with the manual-download
  step for datasets TFDS cannot fetch itself)."""
  import tensorflow_datasets as tfds

  head = f"data spec tfds:{name}:{split}"
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception:  # noqa: BLE001
    return f"{head}: {str(error).splitlines()[0][:200]}"
  split_names = list(builder.info.splits.keys()) if builder.is_prepared() else []
  if split_names and split not in split_names:
    return f"{head}: no split {split!r} (splits: {', '.join(sorted(split_names))})"
  if builder.is_prepared():
    what = (
      f"is prepared in {builder.data_dir} as {builder.info.file_format.value}, not "
      f"array_record (what tfds.data_source reads)"
    )
  else:
    what = f"is not prepared in {data_dir}"
  manual = ""
  instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
  if instructions:
    manual = (
      f" after a manual download into {data_dir}/downloads/manual (TFDS cannot fetch "
      f"it: {' '.join(str(instructions).split())[:300]})"
    )
  return (
    f"{head}: TFDS dataset {name!r} {what}; prepare it with: "
    f"{prepare_command(name, data_dir)}{manual}"
  )


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
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
      raise DataError(
        f"data spec arrayrecord:{path}: no {MANIFEST} in {path!r} "
        f"(write one with `python -m big_transfer.data.convert`)"
      )
    with open(manifest_path) as f:
      self.manifest = json.load(f)
    splits = self.manifest.get("splits", {})
    if split not in splits:
      raise DataError(
        f"data spec arrayrecord:{path}: no split {split!r} "
        f"(splits: {', '.join(sorted(splits)) or 'none'})"
      )
    files = [os.path.join(path, f) for f in splits[split]["files"]]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
      raise DataError(f"data spec arrayrecord:{path}: missing shard {missing[0]!r}")
    self.source = ards.ArrayRecordDataSource(files)
    self.identity = ("arrayrecord", os.path.abspath(path), split)
    self.class_names = (
      tuple(self.manifest["class_names"]) if self.manifest.get("class_names") else None
    )

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return decode_record(self.source[i])


def write_arrayrecord(
  path: str,
  splits: dict[str, Sequence[dict[str, Any]]],
  *,
  class_names: Sequence[str] | None = None,
  num_shards: int = 1,
  extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """Writes examples as ArrayRecord shards plus a manifest; returns the manifest."""
  os.makedirs(path, exist_ok=True)
  manifest = {
    "format": "big_transfer.arrayrecord/1",
    "splits": {},
    "class_names": list(class_names) if class_names else None,
    **(extra or {}),
  }
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


def _open_base(spec: str | Spec, default_split: str = "train", builtin_options=None):
  spec = parse_spec(spec) if isinstance(spec, str) else spec
  split, lo, hi = _split_and_slice(spec.split or default_split, spec)
  if spec.kind == "builtin":
    if spec.name not in builtin.BUILTINS:
      raise DataError(
        f"data spec {spec}: unknown built-in dataset {spec.name!r} "
        f"(known: {', '.join(sorted(builtin.BUILTINS))})"
      )
    cls = builtin.BUILTINS[spec.name]
    if split not in cls.SPLITS:
      raise DataError(f"data spec {spec}: no split {split!r} (splits: {', '.join(cls.SPLITS)})")
    try:
      source = cls(split, **(builtin_options or {}))
    except (TypeError, ValueError) as e:
      raise DataError(f"data spec {spec}: {e}") from None
    source.identity = ("builtin", spec.name, split, tuple(sorted((builtin_options or {}).items())))
  elif spec.kind == "tfds":
    # The split's slice is taken here, as for every kind (not by TFDS): complementary slices
    # such as train[:80%] and train[80%:] are then disjoint by construction.
    source = TfdsSource(spec.name, split)
  else:
    if paths.is_url(spec.name):
      raise DataError(
        f"data spec {spec}: " + paths.not_local(spec.name, "ArrayRecord's reader reads local files")
      )
    if not os.path.isdir(spec.name):
      raise DataError(
        f"data spec {spec}: directory {spec.name!r} does not exist (write it with "
        f"`python -m big_transfer.data.convert`; docs/DATA.md has each source)"
      )
    source = ArrayRecordSource(spec.name, split)
  n = len(source)
  if lo is None and hi is None:
    return source
  a, b = _resolve_bound(lo, n, 0), _resolve_bound(hi, n, n)
  if not 0 <= a < b <= n:
    raise DataError(f"data spec {spec}: slice [{lo}:{hi}] is empty or outside 0..{n}")
  return Sliced(source, a, b)


# ----------------------------------------------------------------------------- study knobs
# Options after '?' turn one source into the study's variants without forking it:
#   builtin:glyphs?n=20000&seed=1            built-in generator options
#   arrayrecord:/data/laion?size=2.7M        a nested, deterministic subset
#   tfds:cifar100?label_noise=0.2            symmetric label noise at rate p
#   arrayrecord:/data/in1k?captions=template class-name template captions
#   arrayrecord:/data/cc12m?where=width>=256 metadata filters (curation), ANDed
#   mix(builtin:glyphs@0.7,builtin:shapes@0.3)  a weighted mixture of sources

CAPTION_TEMPLATES = (
  "a photo of a {}.",
  "a bad photo of a {}.",
  "a photo of the {}.",
  "a close-up photo of a {}.",
  "a good photo of the {}.",
  "itap of a {}.",
  "a drawing of a {}.",
  "a photo of one {}.",
)

OPTIONS = {
  "size": str,
  "subset_seed": int,
  "label_noise": float,
  "noise_seed": int,
  "captions": str,
  "caption_seed": int,
  "where": str,
}


def _parse_size(value: str, n: int, spec) -> int:
  v = value.strip().upper()
  try:
    if v.endswith("%"):
      k = round(n * float(v[:-1]) / 100)
    elif v[-1:] in ("K", "M", "B"):
      k = round(float(v[:-1]) * {"K": 1e3, "M": 1e6, "B": 1e9}[v[-1]])
    else:
      k = int(float(v))
  except ValueError:
    raise DataError(f"data spec {spec}: size={value!r} is not a count (1000, 2.7M, 10%)") from None
  if not 0 < k <= n:
    raise DataError(f"data spec {spec}: size={value} is outside 1..{n} (the source's size)")
  return k


def _parse_options(query: str, spec: str, extra: dict) -> tuple[dict, dict]:
  """'a=1&b=2' -> (study options, source-specific options), typed; unknown names rejected."""
  study, specific = {}, {}
  for item in [q for q in query.split("&") if q]:
    key, eq, value = item.partition("=")
    if not eq:
      raise DataError(f"data spec {spec}: option {item!r} needs a value ({item}=...)")
    if key in OPTIONS:
      typ = OPTIONS[key]
      target = study
    elif key in extra:
      typ = extra[key]
      target = specific
    else:
      known = sorted(OPTIONS) + sorted(extra)
      raise DataError(f"data spec {spec}: unknown option {key!r} (known: {', '.join(known)})")
    try:
      v = typ(value)
    except ValueError:
      raise DataError(f"data spec {spec}: option {key}={value!r} is not a {typ.__name__}") from None
    if key == "where":
      target.setdefault("where", []).append(v)
    else:
      target[key] = v
  return study, specific


class Subset:
  """A random-access view of ``indices`` of a source."""

  def __init__(self, source, indices):
    self.source, self.indices = source, np.asarray(indices, np.int64)
    self.class_names = getattr(source, "class_names", None)

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]


def nested_subset(source, size: int, seed: int = 0) -> Subset:
  """The first ``size`` of one fixed permutation: every smaller subset is inside every
  larger one (the 1M subset inside the 2.7M one), on any machine."""
  perm = np.random.default_rng([seed, len(source)]).permutation(len(source))
  return Subset(source, np.sort(perm[:size]))


class NoisyLabels:
  """Symmetric label noise: with probability p a label becomes a uniformly chosen *other*
  class. Deterministic per example from (seed, index); the clean label is kept."""

  def __init__(self, source, p: float, seed: int, num_classes: int):
    self.source, self.p, self.seed, self.num_classes = source, p, seed, num_classes
    self.class_names = getattr(source, "class_names", None)

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    ex = dict(self.source[i])
    rng = np.random.default_rng([self.seed, 7, int(i)])
    clean = int(ex["label"])
    ex["clean_label"] = clean
    if rng.random() < self.p:
      ex["label"] = (clean + int(rng.integers(1, self.num_classes))) % self.num_classes
    return ex


_WNID = re.compile(r"^n\d{8}$")
IMAGENET_NAMES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classnames.tsv")


@functools.lru_cache(maxsize=1)
def _imagenet_names() -> dict[str, str]:
  with open(IMAGENET_NAMES) as f:
    return dict(line.rstrip("\n").split("\t") for line in f if not line.startswith("#"))


def prompt_names(class_names: Sequence[str], underscores: bool = False) -> list[str]:
  """Class names as a prompt or caption says them: underscores as spaces (``underscores``: kept,
  as the authors' class lists did: 'aquarium_fish'), and WordNet ids (ImageNet's folder names,
  TFDS imagenet2012's labels: 'n01440764') as the readable names OpenAI's CLIP notebook gives
  them ('tench'); a WordNet id outside ImageNet-1K is an error."""
  names = [str(n) for n in class_names]
  if any(_WNID.match(n) for n in names):
    table = _imagenet_names()
    unknown = [n for n in names if _WNID.match(n) and n not in table]
    if unknown:
      raise DataError(
        f"class names {unknown[:3]}: WordNet ids with no ImageNet-1K name in "
        f"{IMAGENET_NAMES}; name the classes in the data instead"
      )
    names = [table.get(n, n) for n in names]
  return names if underscores else [n.replace("_", " ") for n in names]


class TemplateCaptions:
  """Replaces web captions with class-name templates ("a photo of a {label}."); the
  original text is kept as ``raw_caption``."""

  def __init__(self, source, class_names, seed: int = 0, templates=CAPTION_TEMPLATES):
    self.source, self.seed, self.templates = source, seed, templates
    self.names = prompt_names(class_names)
    self.class_names = class_names

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    ex = dict(self.source[i])
    if "caption" in ex:
      ex["raw_caption"] = ex["caption"]
    t = self.templates[np.random.default_rng([self.seed, 11, int(i)]).integers(len(self.templates))]
    ex["caption"] = t.format(self.names[int(ex["label"])])
    return ex


_COMPARE = re.compile(r"^([\w.]+)\s*(>=|<=|==|!=|>|<)\s*(.+)$")


def _predicate(expr: str, spec):
  m = _COMPARE.match(expr.strip())
  if not m:
    raise DataError(
      f"data spec {spec}: where={expr!r} is not FIELD OP VALUE (OP one of >= <= == != > <)"
    )
  field, op, value = m[1], m[2], m[3].strip()
  try:
    num = float(value)
  except ValueError:
    num = None

  def get(ex):
    if field in ex:
      return ex[field]
    meta = ex.get("meta")
    if isinstance(meta, (str, bytes)):
      try:
        meta = json.loads(meta)
      except ValueError:
        meta = None
    return meta.get(field) if isinstance(meta, dict) else None

  def pred(ex):
    v = get(ex)
    if v is None:
      return False
    if num is not None:
      try:
        a, b = float(v), num
      except (TypeError, ValueError):
        return False
    else:
      a, b = str(v), value
    return {">=": a >= b, "<=": a <= b, "==": a == b, "!=": a != b, ">": a > b, "<": a < b}[op]

  return pred


class Mixture:
  """Examples drawn from several sources with given weights, in a fixed interleaving from a
  seed; each component is cycled through in order, so every example of a component appears
  before any repeats. Class names are kept when all components share them."""

  def __init__(self, sources_, weights, seed: int = 0):
    w = np.asarray(weights, np.float64)
    if (w <= 0).any():
      raise ValueError("mixture weights must be positive")
    self.sources, self.weights = list(sources_), w / w.sum()
    n = sum(len(s) for s in self.sources)
    rng = np.random.default_rng([seed, 13])
    self.component = rng.choice(len(self.sources), size=n, p=self.weights).astype(np.int32)
    self.position = np.zeros(n, np.int64)
    for k in range(len(self.sources)):
      where = np.flatnonzero(self.component == k)
      self.position[where] = np.arange(len(where)) % len(self.sources[k])
    names = [getattr(s, "class_names", None) for s in self.sources]
    self.class_names = names[0] if all(x == names[0] for x in names) else None

  def __len__(self):
    return len(self.component)

  def __getitem__(self, i):
    k = int(self.component[i])
    ex = dict(self.sources[k][int(self.position[i])])
    ex["source_index"] = k
    return ex


def _split_top_level(text: str, sep: str = ",") -> list[str]:
  parts, depth, cur = [], 0, []
  for ch in text:
    if ch == "(":
      depth += 1
    elif ch == ")":
      depth -= 1
    if ch == sep and depth == 0:
      parts.append("".join(cur))
      cur = []
    else:
      cur.append(ch)
  parts.append("".join(cur))
  return [p.strip() for p in parts if p.strip()]


TRAINING_ONLY_OPTIONS = (
  "size",
  "subset_seed",
  "label_noise",
  "noise_seed",
  "captions",
  "caption_seed",
)


def spec_at_split(spec: str, split: str, drop: tuple = ()) -> str:
  """The same source and options at another split; options named in ``drop`` removed."""
  if spec.startswith("mix("):
    raise DataError(f"data spec {spec}: a mixture has no single split; give the split's spec")
  base, _, query = spec.partition("?")
  keep = [q for q in query.split("&") if q and q.split("=")[0] not in drop]
  return str(parse_spec(base).with_split(split)) + ("?" + "&".join(keep) if keep else "")


def spec_with_default_split(spec: str, split: str) -> str:
  """``spec`` as written when it names a split (its slice included: ``train[:80%]`` stays
  80% of train), else ``spec`` at ``split``."""
  if spec.startswith("mix("):
    return spec
  base, _, _ = spec.partition("?")
  return spec if parse_spec(base).split else spec_at_split(spec, split)


def provenance(source, see_through_wrappers: bool = True) -> tuple[Any, np.ndarray]:
  """(base source, indices into it) of a view: slices and subsets composed, wrappers that
  keep positions (label noise, template captions) seen through — or, with
  ``see_through_wrappers=False``, a wrapper is the base (its records are not the base's: a
  cache of what the base's records give stops there). Two views of one base with disjoint
  indices share no example (how splits are checked for leaks)."""
  idx = None
  while True:
    if isinstance(source, Sliced):
      step = np.arange(source.lo, source.hi)
    elif isinstance(source, Subset):
      step = source.indices
    elif see_through_wrappers and isinstance(source, (NoisyLabels, TemplateCaptions)):
      step = None
    else:
      break
    if step is not None:
      idx = step if idx is None else step[idx]
    source = source.source
  return source, (np.arange(len(source)) if idx is None else np.asarray(idx, np.int64))


def identity_of(source) -> tuple:
  """What a base source reads: (kind, name or path, split[, options])."""
  ident = getattr(source, "identity", None)
  if ident is not None:
    return tuple(ident)
  return (type(source).__name__, id(source))


def open_source(spec: str, default_split: str = "train"):
  """Opens a spec string with its options; raises DataError with one line naming what is
  wrong (the spec, the option, the value)."""
  spec = str(spec).strip()
  if spec.startswith("mix(") and spec.endswith(")"):
    comps, weights = [], []
    for part in _split_top_level(spec[4:-1]):
      sub, at, w = part.rpartition("@")
      try:
        weight = float(w) if at else None
      except ValueError:
        weight = None
      if weight is None or weight <= 0:
        raise DataError(
          f"data spec {spec}: mixture part {part!r} needs SPEC@WEIGHT with a positive weight"
        )
      comps.append(open_source(sub, default_split))
      weights.append(weight)
    if not comps:
      raise DataError(f"data spec {spec}: empty mixture")
    return Mixture(comps, weights)

  base, _, query = spec.partition("?")
  parsed = parse_spec(base)
  extra = {}
  if parsed.kind == "builtin" and parsed.name in builtin.BUILTINS:
    extra = getattr(builtin.BUILTINS[parsed.name], "OPTIONS", {})
  opts, specific = _parse_options(query, spec, extra)
  source = _open_base(parsed, default_split, builtin_options=specific)
  names = getattr(source, "class_names", None)
  for expr in opts.get("where", []):
    pred = _predicate(expr, spec)
    source = Subset(source, [i for i in range(len(source)) if pred(source[i])])
    if not len(source):
      raise DataError(f"data spec {spec}: where={expr!r} keeps no examples")
  if "size" in opts:
    source = nested_subset(
      source, _parse_size(opts["size"], len(source), spec), opts.get("subset_seed", 0)
    )
  if "label_noise" in opts:
    p = opts["label_noise"]
    if not 0 <= p <= 1:
      raise DataError(f"data spec {spec}: label_noise={p} is not in [0, 1]")
    if not names:
      raise DataError(f"data spec {spec}: label_noise needs a labelled source with class names")
    source = NoisyLabels(source, p, opts.get("noise_seed", 0), len(names))
  if "captions" in opts:
    if opts["captions"] == "template":
      if not names:
        raise DataError(f"data spec {spec}: captions=template needs class names")
      source = TemplateCaptions(source, names, opts.get("caption_seed", 0))
    elif opts["captions"] != "raw":
      raise DataError(f"data spec {spec}: captions={opts['captions']!r} is not raw or template")
  return source
