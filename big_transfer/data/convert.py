r"""Convert image folders, webdataset tar shards, CSV manifests and COCO-style annotations to
ArrayRecord shards.

  python -m big_transfer.data.convert imagefolder SRC DST [--split_fraction=0.1]
  python -m big_transfer.data.convert webdataset 'SRC/*.tar' DST [--max_side=512]
  python -m big_transfer.data.convert csv manifest.csv DST --image_column=path --label_column=y
  python -m big_transfer.data.convert coco train=train.json,test=test.json DST --images=IMAGES

Output: ``DST/<split>-NNNNN-of-MMMMM.array_record`` (records as ``sources.encode_record``: image
bytes, label, caption, key, metadata) and ``DST/manifest.json`` with per-split and per-class
counts, class names, the record schema and what was skipped and why. Every input is accounted
for: each image is fully decoded once to check it, and empty, truncated, undecodable and
oversized (decompression-bomb) images, pairs without text, tar members with absolute or ``..``
paths, duplicate sample keys, files outside the expected layout (``stray_dir``, ``nested``),
CSV rows with missing fields or bad labels or split names are skipped with a reason and counted
in the final line and the manifest. Class folders (or categories) without images keep their
place in ``class_names``, so later class ids never shift.

Shards are written by ``--workers`` processes, each to a temporary file renamed when complete,
with its statistics beside it: an interrupted conversion run again with the same arguments
redoes only the unfinished shards. For hundreds of millions of pairs the work splits across
hosts: every host runs the same command with ``--num_shards=N --shard_index=I`` (a SLURM array
task, a TPU VM worker), then one runs ``python -m big_transfer.data.convert merge DST``, which
writes the same manifest a single run would have written.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import io
import json
import multiprocessing
import os
import posixpath
import re
import tarfile
import time
import unicodedata
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

from array_record.python import array_record_data_source as ards
from array_record.python import array_record_module as arm
from PIL import Image

from big_transfer import cli, paths
from big_transfer.data import sources

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")
SPLIT_NAMES = ("train", "test", "val", "validation")
PLAN = ".plan.json"
_SAFE_SPLIT = re.compile(r"^\w+$")  # split names become file names: never paths


def safe_split(name: str) -> bool:
  return bool(_SAFE_SPLIT.match(name or ""))


@dataclasses.dataclass
class Item:
  """One input example before checking: raw bytes (or a path) plus its annotations."""

  key: str
  split: str
  data: bytes | None = None
  path: str | None = None
  label: str | int | None = None
  caption: str | None = None
  meta: dict | None = None
  problem: str | None = None  # set when the input itself is unusable (reason name)


class Skip(Exception):
  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


def check_image(
  data: bytes, *, max_pixels: int, max_side: int | None, quality: int = 95
) -> tuple[bytes, tuple[int, int]]:
  """Fully decodes ``data``; returns (bytes to store, (height, width)) or raises Skip."""
  if not data:
    raise Skip("empty")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        if w * h > max_pixels:
          raise Skip("decompression_bomb")
        im.load()  # decodes everything: truncated files fail here
        if max_side and max(w, h) > max_side:
          s = max_side / max(w, h)
          im = im.convert("RGB").resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
          buf = io.BytesIO()
          im.save(buf, format="JPEG", quality=quality)
          return buf.getvalue(), (im.size[1], im.size[0])
        return data, (h, w)
  except Skip:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning):
    raise Skip("decompression_bomb") from None
  except OSError as e:
    raise Skip("truncated" if "truncated" in str(e).lower() else "undecodable") from None
  except Exception:  # noqa: BLE001  (PIL raises many kinds on garbage)
    raise Skip("undecodable") from None


# ----------------------------------------------------------------------------- readers


def _safe_member(name: str) -> bool:
  if name.startswith("/") or name.startswith("\\"):
    return False
  return ".." not in posixpath.normpath(name).split("/") and ".." not in name.split("/")


def read_tar(path: str, split: str) -> Iterator[Item]:
  """A webdataset tar's samples: consecutive members sharing a key (the path up to the first
  dot of the basename). A key that comes back later, or one extension twice in a sample, is a
  ``duplicate_key`` (which sample is right cannot be known). Keys are prefixed with the tar's
  name, so they are unique across the shards of a dataset."""
  prefix = os.path.splitext(os.path.basename(path))[0]
  samples: list[list] = []  # [key, {ext: bytes}, duplicate]
  seen: set[str] = set()
  unsafe, hidden = [], []
  truncated = False
  try:
    tar = tarfile.open(path)
  except (tarfile.TarError, OSError):
    yield Item(key=os.path.basename(path), split=split, problem="unreadable_tar")
    return
  with tar:
    try:
      for m in tar:
        if not _safe_member(m.name):
          unsafe.append(m.name)
          continue
        if not m.isfile():
          continue
        if is_hidden(m.name):  # e.g. macOS's ._KEY.jpg beside KEY.jpg
          hidden.append(m.name)
          continue
        d, base = posixpath.split(m.name)
        stem, _, ext = base.partition(".")
        key = posixpath.join(d, stem)
        if not samples or samples[-1][0] != key:
          samples.append([key, {}, key in seen])
          seen.add(key)
        f = tar.extractfile(m)
        ext = ext.lower()
        if ext in samples[-1][1]:
          samples[-1][2] = True
        samples[-1][1][ext] = f.read() if f else b""
    except (tarfile.TarError, OSError, EOFError):
      truncated = True
  for name in unsafe:
    yield Item(key=f"{prefix}/{name}", split=split, problem="unsafe_path")
  for name in hidden:
    yield Item(key=f"{prefix}/{name}", split=split, problem="hidden")
  for key, parts, duplicate in samples:
    key = f"{prefix}/{key}"
    if duplicate:
      yield Item(key=key, split=split, problem="duplicate_key")
      continue
    img_ext = next((e for e in IMAGE_EXTS if e in parts), None)
    meta = None
    if "json" in parts:
      try:
        meta = json.loads(parts["json"].decode("utf-8"))
      except (ValueError, UnicodeDecodeError):
        meta = None
    caption = None
    if "txt" in parts:
      caption = parts["txt"].decode("utf-8", errors="replace").strip()
    elif isinstance(meta, dict) and isinstance(meta.get("caption"), str):
      caption = meta["caption"].strip()
    label = None
    if "cls" in parts:
      label = parts["cls"].decode("utf-8", errors="replace").strip()
    if img_ext is None:
      yield Item(key=key, split=split, problem="no_image", caption=caption)
      continue
    if label is not None and (not label or (label.lstrip("-").isdigit() and int(label) < 0)):
      yield Item(key=key, split=split, problem="bad_label")  # a class id is never negative
      continue
    yield Item(
      key=key, split=split, data=parts[img_ext], label=label, caption=caption or None, meta=meta
    )
  if truncated:
    yield Item(key=f"{prefix}:rest", split=split, problem="truncated_tar")


def _files_under(root: str) -> list[str]:
  """Every file below ``root`` (relative paths, sorted), symlinked folders followed — each real
  folder once, so a link back up the tree ends there instead of looping."""
  out, seen = [], set()

  def walk(d: str, rel: str):
    real = os.path.realpath(d)
    if real in seen:
      return
    seen.add(real)
    for e in sorted(os.listdir(d)):
      full = os.path.join(d, e)
      if os.path.isdir(full):
        walk(full, os.path.join(rel, e))
      elif os.path.isfile(full):
        out.append(os.path.join(rel, e))

  walk(root, "")
  return sorted(out)


def is_hidden(path: str) -> bool:
  """A dot-name anywhere in the path (.ipynb_checkpoints/, .DS_Store, macOS's ._ files): never
  data, so never a class or an example; skipped and counted as ``hidden``."""
  return any(p.startswith(".") and p not in (".", "..") for p in path.replace("\\", "/").split("/"))


def list_imagefolder(
  src: str, split_fraction: float, recursive: bool = False
) -> tuple[list[Item], list[str]]:
  """(items, class names). ``SRC/<split>/<class>/<image>`` when any top-level folder is a split
  name, else ``SRC/<class>/<image>``. Anything else is listed as a skipped item with its
  reason: ``hidden`` (dot-names anywhere: ``.ipynb_checkpoints/``, ``.DS_Store``), ``stray_dir``
  (every file under a top-level folder that is not a split), ``stray_file`` (a file where
  folders were expected), ``nested`` (images in folders inside a class folder, unless
  ``recursive``: then they belong to it).
  Every class folder is a class, empty or not."""
  items: list[Item] = []

  def visible(root, prefix=""):  # entries of root; hidden ones listed as skipped items
    out = []
    for e in sorted(os.listdir(root)):
      full = os.path.join(root, e)
      if is_hidden(e):
        files = _files_under(full) if os.path.isdir(full) else [""]
        items.extend(
          Item(key=f"{prefix}{e}" + (f"/{f}" if f else ""), split="train", problem="hidden")
          for f in files
        )
      else:
        out.append(e)
    return out

  entries = visible(src)
  dirs = [e for e in entries if os.path.isdir(os.path.join(src, e))]
  if not dirs:
    raise SystemExit(f"error: imagefolder {src!r} has no class or split subdirectories")
  split_dirs = [e for e in dirs if e in SPLIT_NAMES]
  if split_dirs:
    layouts = [(split, os.path.join(src, split)) for split in split_dirs]
    for e in dirs:
      if e not in SPLIT_NAMES:
        items += [
          Item(key=f"{e}/{f}", split="train", problem="stray_dir")
          for f in _files_under(os.path.join(src, e))
        ]
  else:
    layouts = [(None, src)]
  items += [
    Item(key=e, split="train", problem="stray_file")
    for e in entries
    if os.path.isfile(os.path.join(src, e))
  ]
  classes: set[str] = set()
  for split, root in layouts:
    names = visible(root, f"{split}/") if split is not None else entries
    if split is not None:
      items += [
        Item(key=f"{split}/{e}", split="train", problem="stray_file")
        for e in names
        if os.path.isfile(os.path.join(root, e))
      ]
    folders = class_folders(root, [n for n in names if os.path.isdir(os.path.join(root, n))])
    for cls, folder in folders:
      cdir = os.path.join(root, folder)
      classes.add(cls)
      for rel in _files_under(cdir):
        nested = os.sep in rel
        s = split
        if s is None:  # a stable, per-file split: same answer on every run and machine
          s = _stable_split(f"{cls}/{rel}", split_fraction)
        problem = "hidden" if is_hidden(rel) else "nested" if nested and not recursive else None
        items.append(
          Item(
            key=f"{cls}/{rel}", split=s, path=os.path.join(cdir, rel), label=cls, problem=problem
          )
        )
  return items, sorted(classes)


def class_folders(root: str, folders: list[str]) -> list[tuple[str, str]]:
  """(class name, folder) of each class folder, the name in Unicode's composed form (NFC): a
  name typed on macOS (decomposed, NFD) and the same name typed elsewhere are one class, with
  the same id on every machine. Two folders that are one class after that, or one folder under
  two names (a symlink to another class folder: its images would be written under two
  labels), are refused in one line."""
  out, by_name, by_real = [], {}, {}
  for folder in sorted(folders):
    name = unicodedata.normalize("NFC", folder)
    if name in by_name:
      raise SystemExit(
        f"error: imagefolder {root!r}: folders {by_name[name]!r} and {folder!r} are the same "
        f"class name {name!r} written two ways (Unicode NFC and NFD): merge them into one folder"
      )
    real = os.path.realpath(os.path.join(root, folder))
    if real in by_real:
      raise SystemExit(
        f"error: imagefolder {root!r}: class folders {by_real[real]!r} and {folder!r} are the "
        f"same folder ({real}): its images would be written under two labels; remove the link"
      )
    by_name[name], by_real[real] = folder, folder
    out.append((name, folder))
  return sorted(out)


def _stable_split(key: str, split_fraction: float) -> str:
  """'test' for a fixed ``split_fraction`` of keys, by a hash of the key: the same answer on
  every run and machine."""
  return "test" if zlib.crc32(key.encode()) / 2**32 < split_fraction else "train"


def read_label_names(path: str) -> dict[str, str]:
  """A JSON file naming numeric labels: an object ``{"0": "name", ...}`` (Kaggle's
  label_num_to_disease_map.json) or a list of names in label order."""
  try:
    with open(path) as f:
      obj = json.load(f)
  except (OSError, ValueError) as e:
    raise SystemExit(f"error: --label_names={path!r}: {e}") from None
  if isinstance(obj, list):
    obj = {str(i): n for i, n in enumerate(obj)}
  if not isinstance(obj, dict) or not all(isinstance(v, str) and v for v in obj.values()):
    raise SystemExit(
      f"error: --label_names={path!r}: expected a JSON object of label -> name or a list of names"
    )
  return {str(k).strip(): v for k, v in obj.items()}


def list_csv(
  path: str,
  image_column: str,
  label_column: str | None,
  caption_column: str | None,
  split_column: str | None,
  *,
  images: str | None = None,
  split_fraction: float = 0.0,
  label_names: dict[str, str] | None = None,
) -> list[Item]:
  """One item per row; rows with fewer fields than the header (``short_row``) or more
  (``long_row``), an empty or negative numeric label (``bad_label``), a label ``label_names``
  does not name (``unnamed_label``) or a split value that is not a plain name (``bad_split``:
  it would become a file name) are skipped items. Relative image paths are under ``images``
  (default: the CSV's directory); without a split column, a stable ``split_fraction`` of the
  rows (by image path) is 'test'. ``label_names``: the class name of each label value, so a
  numeric label column (Kaggle's) gets readable class names."""
  base = os.path.abspath(images) if images else os.path.dirname(os.path.abspath(path))
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    cols = reader.fieldnames or []
    for name, col in (
      ("image_column", image_column),
      ("label_column", label_column),
      ("caption_column", caption_column),
      ("split_column", split_column),
    ):
      if col and col not in cols:
        raise SystemExit(
          f"error: {path}: --{name}={col!r} is not a column (columns: {', '.join(cols)})"
        )
    items = []
    for i, row in enumerate(reader):
      p = row.get(image_column) or ""
      key = f"{i}:{p}"
      problem = None
      if None in row.values():
        problem = "short_row"
      elif None in row:
        problem = "long_row"
      label = row[label_column].strip() if label_column and row.get(label_column) else None
      split = (
        (row.get(split_column) or "").strip() if split_column else _stable_split(p, split_fraction)
      )
      if (
        problem is None
        and label_column
        and (not label or (label.lstrip("-").isdigit() and int(label) < 0))
      ):
        problem = "bad_label"
      if problem is None and label is not None and label_names is not None:
        label = label_names.get(label)
        problem = None if label else "unnamed_label"
      if problem is None and not safe_split(split):
        problem = "bad_split"
      full = p if os.path.isabs(p) else os.path.join(base, p)
      items.append(
        Item(
          key=key,
          split=split if safe_split(split) else "train",
          path=full,
          label=label,
          problem=problem,
          caption=((row.get(caption_column) or "").strip() or None) if caption_column else None,
        )
      )
  return items


def list_coco(
  annotations: str, images: str, skip_categories: str = ""
) -> tuple[list[Item], list[str]]:
  """COCO-style annotation files (Caltech Camera Traps, iNaturalist, LILA): ``SPLIT=FILE[,...]``
  or one FILE (split 'train'); image paths are ``file_name`` under ``images``. One label per
  image: an image whose annotations name several categories is ``multi_label``, one without
  any ``no_label``, one of a category in ``skip_categories`` (e.g. 'empty') ``skipped_category``.
  Class names are every category of the files (sorted by name), images or not."""
  pairs = [a.partition("=") for a in annotations.split(",") if a.strip()]
  files = [(split if eq else "train", f if eq else split) for split, eq, f in pairs]
  skip = {c.strip() for c in skip_categories.split(",") if c.strip()}
  items: list[Item] = []
  names: set[str] = set()
  for split, path in files:
    if not safe_split(split):
      raise SystemExit(f"error: coco: split name {split!r} is not a plain name")
    try:
      with open(path) as f:
        coco = json.load(f)
    except (OSError, ValueError) as e:
      raise SystemExit(f"error: coco {path!r}: {e}") from None
    for k in ("images", "annotations", "categories"):
      if not isinstance(coco.get(k), list):
        raise SystemExit(f"error: coco {path!r}: no {k!r} list (not a COCO annotation file)")
    cats = {c["id"]: str(c["name"]) for c in coco["categories"]}
    names |= {n for n in cats.values() if n not in skip}
    by_image: dict[Any, set] = collections.defaultdict(set)
    for a in coco["annotations"]:
      by_image[a.get("image_id")].add(a.get("category_id"))
    for im in coco["images"]:
      found = by_image.get(im.get("id"), set())
      labels = {cats.get(c, f"unknown:{c}") for c in found}
      problem = None
      if not labels:
        problem = "no_label"
      elif len(labels) > 1:
        problem = "multi_label"
      elif labels <= skip:
        problem = "skipped_category"
      elif any(l.startswith("unknown:") for l in labels):
        problem = "bad_label"
      meta = {k: v for k, v in im.items() if k not in ("file_name",)}
      fname = str(im.get("file_name", ""))
      items.append(
        Item(
          key=f"{split}/{im.get('id')}:{fname}",
          split=split,
          path=os.path.join(images, fname),
          label=next(iter(labels), None),
          meta=meta,
          problem=problem,
        )
      )
  return items, sorted(names)


# ----------------------------------------------------------------------------- writing


@dataclasses.dataclass
class ShardJob:
  index: int
  num_shards: int
  items: list[Item] | None = None  # imagefolder / csv
  tar_path: str | None = None  # webdataset: one input tar per shard
  tar_split: str = "train"


def _shard_files(dst, job, split):
  stem = f"{split}-{job.index:05d}-of-{job.num_shards:05d}"
  return os.path.join(dst, stem + ".array_record"), os.path.join(dst, stem + ".stats.json")


def _done_path(dst, job):
  return os.path.join(dst, f".shard-{job.index:05d}-of-{job.num_shards:05d}.done.json")


def convert_shard(job: ShardJob, opts: dict) -> dict:
  """Writes one shard (per split present in it); returns its statistics. Idempotent."""
  done = _done_path(opts["dst"], job)
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  items = job.items if job.items is not None else read_tar(job.tar_path, job.tar_split)
  label_map = LabelMap(ordered=opts["class_names"]) if opts.get("class_names") else None
  writers, tmp_paths = {}, {}
  stats = {
    "shard": job.index,
    "files": {},
    "counts": collections.Counter(),
    "labels": collections.Counter(),
    "skipped": collections.Counter(),
    "captions": 0,
  }
  for item in items:
    try:
      if item.problem:
        raise Skip(item.problem)
      if opts["require_text"] and not item.caption:
        raise Skip("no_text")
      data = item.data
      if data is None:
        try:
          with open(item.path, "rb") as f:
            data = f.read()
        except OSError:
          raise Skip("unreadable_file") from None
      data, (h, w) = check_image(
        data, max_pixels=opts["max_pixels"], max_side=opts["max_side"], quality=opts["quality"]
      )
    except Skip as s:
      stats["skipped"][s.reason] += 1
      continue
    record = {"image": data, "key": item.key, "height": h, "width": w}
    if item.label is not None:
      record["label"] = item.label  # names mapped to ids when the manifest is assembled
      if label_map is not None:  # classes known from the listing: ids written at once
        record["label"], record["label_name"] = label_map(item.label), str(item.label)
    if item.caption:
      record["caption"] = item.caption
      stats["captions"] += 1
    if item.meta is not None:
      record["meta"] = json.dumps(item.meta, sort_keys=True)
    split = item.split
    if split not in writers:
      path, _ = _shard_files(opts["dst"], job, split)
      tmp_paths[split] = path + ".tmp"
      writers[split] = arm.ArrayRecordWriter(tmp_paths[split], "group_size:1")
    writers[split].write(sources.encode_record(record))
    stats["counts"][split] += 1
    if item.label is not None:
      stats["labels"][f"{split}\t{item.label}"] += 1
  for split, w in writers.items():
    w.close()
    path, _ = _shard_files(opts["dst"], job, split)
    os.replace(tmp_paths[split], path)
    stats["files"][split] = os.path.basename(path)
  stats = {k: dict(v) if isinstance(v, collections.Counter) else v for k, v in stats.items()}
  with open(done + ".tmp", "w") as f:
    json.dump(stats, f)
  os.replace(done + ".tmp", done)
  return stats


def _run_job(args):
  job, opts = args
  return convert_shard(job, opts)


# ----------------------------------------------------------------------------- labels


def _is_id(label: str) -> bool:
  """A canonical non-negative integer ('3', not '03' or '-1')."""
  return label.isdigit() and label == str(int(label))


class LabelMap:
  """Class names -> ids. ``ordered``: the names in id order (a listing's: imagefolder's folder
  names and COCO's categories sorted as strings, never parsed as numbers). Else from the
  labels seen: all canonical non-negative integers (webdataset .cls, a numeric CSV column)
  are ids themselves (names '0'..'max'); anything else is a set of names, sorted as strings."""

  def __init__(self, labels=(), ordered=None):
    if ordered is not None:
      self.names = [str(n) for n in ordered]
    else:
      labs = {str(l) for l in labels}
      if labs and all(_is_id(l) for l in labs):
        self.names = [str(i) for i in range(max(int(l) for l in labs) + 1)]
      else:
        self.names = sorted(labs)
    self.index = {n: i for i, n in enumerate(self.names)}
    if len(self.index) != len(self.names):
      raise SystemExit(f"error: class names repeat: {self.names}")

  def __call__(self, label) -> int:
    return self.index[str(label)]


def _relabel(dst: str, files: list[str], label_map: LabelMap):
  """Rewrites records so that ``label`` holds an integer id (names go to the manifest)."""
  for fname in files:
    path = os.path.join(dst, fname)
    src = ards.ArrayRecordDataSource([path])
    records = [sources.decode_record(src[i]) for i in range(len(src))]
    del src
    w = arm.ArrayRecordWriter(path + ".tmp", "group_size:1")
    for r in records:
      if "label" in r and not isinstance(r["label"], int):
        r["label_name"] = str(r["label"])
        r["label"] = label_map(r["label_name"])
      w.write(sources.encode_record(r))
    w.close()
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------- main


def plan(kind: str, src: str, args) -> tuple[list[ShardJob], list[str] | None]:
  """(jobs, class names when the listing knows them). Deterministic: every host of a
  multi-host conversion computes the same plan."""
  if kind == "webdataset":
    tars = sorted(
      glob.glob(src)
      if any(c in src for c in "*?[")
      else (glob.glob(os.path.join(src, "*.tar")) if os.path.isdir(src) else [src])
    )
    if not tars:
      raise SystemExit(f"error: webdataset {src!r}: no .tar files")
    return [
      ShardJob(i, len(tars), tar_path=t, tar_split=args.split) for i, t in enumerate(tars)
    ], None
  names = None
  if kind == "imagefolder":
    if not os.path.isdir(src):
      raise SystemExit(f"error: imagefolder {src!r} is not a directory")
    items, names = list_imagefolder(src, args.split_fraction, args.recursive)
  elif kind == "coco":
    if not args.images:
      raise SystemExit("error: coco needs --images=DIR (where the files named in the JSON are)")
    items, names = list_coco(src, args.images, args.skip_categories)
  else:
    if not os.path.isfile(src):
      raise SystemExit(f"error: csv {src!r} does not exist")
    names_of = read_label_names(args.label_names) if args.label_names else None
    items = list_csv(
      src,
      args.image_column,
      args.label_column,
      args.caption_column,
      args.split_column,
      images=args.images,
      split_fraction=args.split_fraction,
      label_names=names_of,
    )
    labels = {i.label for i in items if i.label is not None and i.problem is None}
    names = LabelMap(labels).names if labels else None
  n = max(1, min(args.output_shards or max(1, len(items) // 10000), max(1, len(items))))
  return [ShardJob(i, n, items=items[i::n]) for i in range(n)], names


def _write_json(path: str, obj) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(path + ".tmp", path)


def run(kind: str, src: str, dst: str, args) -> dict | None:
  """Converts this host's share of the jobs (all of them on one host) and, on one host,
  writes the manifest; returns it (None on a host of a multi-host conversion)."""
  t0 = time.time()
  if not 0 <= args.shard_index < args.num_shards:
    raise SystemExit(
      f"error: --shard_index={args.shard_index} is not in "
      f"0..{args.num_shards - 1} (--num_shards={args.num_shards})"
    )
  for what, path in (("SRC", src), ("DST", dst)):
    if paths.is_url(path):  # the readers and ArrayRecord's writer use local files
      why = paths.not_local(
        path, "the converter reads and writes local files", "readable or writable"
      )
      raise SystemExit(f"error: {what}={path}: {why}")
  os.makedirs(dst, exist_ok=True)
  jobs, class_names = plan(kind, src, args)
  opts = {
    "dst": dst,
    "max_side": args.max_side,
    "quality": args.quality,
    "max_pixels": args.max_pixels,
    "class_names": class_names,
    "require_text": kind == "webdataset" and not args.allow_missing_text,
  }
  the_plan = {
    "kind": kind,
    "src": src,
    "num_jobs": len(jobs),
    "class_names": class_names,
    "options": {k: v for k, v in opts.items() if k not in ("dst", "class_names")},
  }
  plan_path = os.path.join(dst, PLAN)
  if os.path.exists(plan_path):
    with open(plan_path) as f:
      before = json.load(f)
    if before != the_plan:
      raise SystemExit(
        f"error: {dst} holds a conversion of other inputs or options ({plan_path}); use a new DST"
      )
  else:
    _write_json(plan_path, the_plan)
  mine = [j for j in jobs if j.index % args.num_shards == args.shard_index]
  already = sum(os.path.exists(_done_path(dst, j)) for j in mine)
  host = (
    f" (host shard {args.shard_index}/{args.num_shards}: {len(mine)} of them)"
    if args.num_shards > 1
    else ""
  )
  print(
    f"converting {kind} {src} -> {dst}: {len(jobs)} shard(s){host}"
    + (f", {already} already done (resuming)" if already else ""),
    flush=True,
  )
  work = [(j, opts) for j in mine]
  if args.workers > 1 and len(mine) > 1:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.workers) as pool:
      for i, _ in enumerate(pool.imap_unordered(_run_job, work), 1):
        _progress(i, len(mine), t0)
  else:
    for i, w in enumerate(work, 1):
      _run_job(w)
      _progress(i, len(mine), t0)
  if args.num_shards > 1:
    print(
      f"host shard {args.shard_index}/{args.num_shards} done ({len(mine)} output shards); "
      f"when every host is done: python -m big_transfer.data.convert merge {dst}",
      flush=True,
    )
    return None
  return merge(dst)


def merge(dst: str) -> dict:
  """Assembles ``DST/manifest.json`` from the finished shards' statistics (every shard of the
  plan must be done); maps class names to ids where the listing did not know them."""
  plan_path = os.path.join(dst, PLAN)
  if not os.path.exists(plan_path):
    raise SystemExit(f"error: merge {dst}: no {PLAN} (not a conversion's output directory)")
  with open(plan_path) as f:
    the_plan = json.load(f)
  n = the_plan["num_jobs"]
  missing = [i for i in range(n) if not os.path.exists(_done_path(dst, ShardJob(i, n)))]
  if missing:
    raise SystemExit(
      f"error: merge {dst}: {len(missing)} of {n} shards are not done yet "
      f"(e.g. {', '.join(str(i) for i in missing[:5])}): run their hosts first"
    )
  results = []
  for i in range(n):
    with open(_done_path(dst, ShardJob(i, n))) as f:
      results.append(json.load(f))
  kind = the_plan["kind"]
  splits: dict[str, dict] = {}
  skipped = collections.Counter()
  label_counts = collections.Counter()
  for r in results:
    skipped.update(r["skipped"])
    label_counts.update(r["labels"])
    for split, fname in sorted(r["files"].items()):
      s = splits.setdefault(split, {"files": [], "num_examples": 0})
      s["files"].append(fname)
      s["num_examples"] += r["counts"][split]
  class_names = the_plan["class_names"]
  labels = {k.split("\t", 1)[1] for k in label_counts}
  label_map = None
  if class_names:
    label_map = LabelMap(ordered=class_names)
  elif labels:  # webdataset .cls labels: known only now; records rewritten with ids
    label_map = LabelMap(labels)
    relabelled = os.path.join(dst, ".relabelled.json")
    if not os.path.exists(relabelled):
      _relabel(dst, [f for s in splits.values() for f in s["files"]], label_map)
      _write_json(relabelled, {"class_names": label_map.names})
  for split, s in splits.items():
    per_class = collections.Counter()
    for k, v in label_counts.items():
      sp, lab = k.split("\t", 1)
      if sp == split:
        per_class[label_map.names[label_map(lab)]] += v
    if per_class:
      s["per_class"] = dict(sorted(per_class.items()))
  seen = {c for s in splits.values() for c in s.get("per_class", {})}
  empty = [c for c in (label_map.names if label_map else []) if c not in seen]
  schema = {"image": "encoded image bytes", "key": "str", "height": "int", "width": "int"}
  if label_map is not None:
    schema["label"] = "int (index into class_names)"
    schema["label_name"] = "str"
  if any(r["captions"] for r in results):
    schema["caption"] = "str"
  if kind in ("webdataset", "coco"):
    schema["meta"] = "json str (the sample's .json / the COCO image entry)"
  manifest = {
    "format": "big_transfer.arrayrecord/1",
    "source": {"kind": kind, "path": the_plan["src"]},
    "splits": splits,
    "class_names": label_map.names if label_map else None,
    "empty_classes": empty,
    "schema": schema,
    "skipped": dict(sorted(skipped.items())),
    "num_skipped": sum(skipped.values()),
    "options": the_plan["options"],
  }
  _write_json(os.path.join(dst, sources.MANIFEST), manifest)
  counts = ", ".join(f"{k}: {v['num_examples']}" for k, v in sorted(splits.items()))
  why = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
  total = sum(s["num_examples"] for s in splits.values())
  print(
    f"wrote {total} examples ({counts}) to {dst}; skipped {sum(skipped.values())}"
    + (f" ({why})" if why else "")
    + (f"; empty classes kept in class_names: {', '.join(empty)}" if empty else ""),
    flush=True,
  )
  return manifest


def _progress(i, n, t0):
  dt = time.time() - t0
  eta = dt / i * (n - i)
  print(f"  shard {i}/{n} done, {i / dt:.2f} shards/s, eta {eta:.0f}s", flush=True)


def command() -> cli.Command:
  c = cli.Command(
    "big_transfer.data.convert",
    __doc__,
    args=[
      cli.Arg(
        "kind",
        "what SRC is; 'merge DST' (no SRC) writes the manifest of a conversion "
        "split across hosts (--num_shards) once every host is done",
        choices=("imagefolder", "webdataset", "csv", "coco", "merge"),
      ),
      cli.Arg(
        "src",
        "image folder, tar file / directory / glob, CSV file, or COCO "
        "annotations (FILE or SPLIT=FILE,SPLIT=FILE); merge: DST",
      ),
      cli.Arg("dst", "output directory (ArrayRecord shards + manifest.json)", nargs="?"),
    ],
    usage="KIND SRC DST [flags]  |  merge DST",
  )
  c.integer(
    "workers", max(1, (os.cpu_count() or 2) - 1), "processes that decode and re-encode images"
  )
  c.integer(
    "output_shards",
    0,
    "output shards (imagefolder/csv/coco; 0: ~10k examples each; webdataset: one per input tar)",
  )
  c.integer(
    "num_shards",
    1,
    "hosts sharing this conversion (each runs it with its --shard_index; "
    "then `convert merge DST` on one)",
  )
  c.integer("shard_index", 0, "this host's index")
  c.integer("max_side", 0, "re-encode images whose longer side exceeds this (JPEG); 0: never")
  c.integer("quality", 95, "JPEG quality of re-encoded images")
  c.integer("max_pixels", 89_478_485, "refuse larger images (decompression bombs)")
  c.number(
    "split_fraction",
    0.0,
    "imagefolder SRC/<class>/<image>, or csv without --split_column: "
    "fraction of images put in 'test' (a stable hash of the path)",
  )
  c.boolean(
    "recursive",
    False,
    "imagefolder: images in folders inside a class folder belong to it "
    "(default: skipped as 'nested')",
  )
  c.string("split", "train", "webdataset: the split these shards form")
  c.boolean("allow_missing_text", False, "webdataset: keep images without a caption")
  c.string("image_column", "image", "csv: the image path column")
  c.string("label_column", None, "csv: the class name column")
  c.string("caption_column", None, "csv: the caption column")
  c.string("split_column", None, "csv: a column naming each row's split (else --split)")
  c.string(
    "images",
    None,
    "coco: the directory file_name is relative to; csv: the directory "
    "relative image paths are under (default: the CSV's)",
    metavar="DIR",
  )
  c.string(
    "label_names",
    None,
    "csv: a JSON file naming numeric labels ({\"0\": \"name\", ...} or a "
    "list of names), e.g. Kaggle's label_num_to_disease_map.json",
    metavar="FILE",
  )
  c.string("skip_categories", "", "coco: comma-separated category names to leave out (e.g. empty)")
  c.check(
    lambda a: (
      None
      if safe_split(a.split)
      else f"--split={a.split!r} is not a plain split name (letters, digits, _)"
    )
  )
  c.check(
    lambda a: (
      f"merge takes one argument, DST (python -m big_transfer.data.convert merge {a.src})"
      if a.kind == "merge" and a.dst is not None
      else None
    )
  )
  c.check(
    lambda a: (
      f"{a.kind} needs SRC and DST (python -m big_transfer.data.convert {a.kind} SRC DST)"
      if a.kind != "merge" and a.dst is None
      else None
    )
  )
  return c


def main(argv=None):
  args = command().parse(argv)
  if args.kind == "merge":
    return merge(args.src)
  args.max_side = args.max_side or None
  return run(args.kind, args.src, args.dst, args)


if __name__ == "__main__":
  main()
