r"""Convert image folders, webdataset tar shards and CSV manifests to ArrayRecord shards.

  python -m big_transfer.data.convert imagefolder SRC DST [--split_fraction=0.1]
  python -m big_transfer.data.convert webdataset 'SRC/*.tar' DST [--max_side=512]
  python -m big_transfer.data.convert csv manifest.csv DST --image_column=path --label_column=y

Output: ``DST/<split>-NNNNN-of-MMMMM.array_record`` (records as ``sources.encode_record``: image
bytes, label, caption, key, metadata) and ``DST/manifest.json`` with per-split and per-class
counts, class names, the record schema and what was skipped and why. Every image is fully
decoded once to check it: empty, truncated, undecodable and oversized (decompression-bomb)
images, pairs without text (webdataset) and tar members with absolute or ``..`` paths are
skipped and counted, never fatal. The final line says how many were skipped.

Shards are written by ``--workers`` processes, each to a temporary file renamed when complete,
with its statistics beside it: an interrupted conversion run again with the same arguments
redoes only the unfinished shards.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import glob
import io
import json
import multiprocessing
import os
import posixpath
import sys
import tarfile
import time
import warnings
import zlib
from typing import Any, Iterator

from PIL import Image

from big_transfer.data import sources

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")
SPLIT_NAMES = ("train", "test", "val", "validation")


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


def check_image(data: bytes, *, max_pixels: int, max_side: int | None,
                quality: int = 95) -> tuple[bytes, tuple[int, int]]:
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
          im = im.convert("RGB").resize((max(1, round(w * s)), max(1, round(h * s))),
                                        Image.BICUBIC)
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
  """Groups a webdataset tar's members by key (path up to the first dot of the basename)."""
  groups: dict[str, dict[str, Any]] = collections.OrderedDict()
  unsafe = []
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
        d, base = posixpath.split(m.name)
        stem, _, ext = base.partition(".")
        key = posixpath.join(d, stem)
        f = tar.extractfile(m)
        groups.setdefault(key, {})[ext.lower()] = f.read() if f else b""
    except (tarfile.TarError, OSError, EOFError):
      groups.setdefault("__truncated_tar__", {})["truncated"] = b""
  for name in unsafe:
    yield Item(key=name, split=split, problem="unsafe_path")
  for key, parts in groups.items():
    if "truncated" in parts:
      yield Item(key=f"{os.path.basename(path)}:rest", split=split, problem="truncated_tar")
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
    yield Item(key=key, split=split, data=parts[img_ext], label=label, caption=caption or None,
               meta=meta)


def list_imagefolder(src: str, split_fraction: float) -> list[Item]:
  entries = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))
  if not entries:
    raise SystemExit(f"error: imagefolder {src!r} has no class or split subdirectories")
  layouts = []
  if all(e in SPLIT_NAMES for e in entries):
    for split in entries:
      layouts.append((split, os.path.join(src, split)))
  else:
    layouts.append((None, src))
  items = []
  for split, root in layouts:
    for cls in sorted(os.listdir(root)):
      cdir = os.path.join(root, cls)
      if not os.path.isdir(cdir):
        continue
      for fname in sorted(os.listdir(cdir)):
        path = os.path.join(cdir, fname)
        if not os.path.isfile(path):
          continue
        s = split
        if s is None:  # a stable, per-file split: same answer on every run and machine
          h = zlib.crc32(f"{cls}/{fname}".encode()) / 2**32
          s = "test" if h < split_fraction else "train"
        items.append(Item(key=f"{cls}/{fname}", split=s, path=path, label=cls))
  return items


def list_csv(path: str, image_column: str, label_column: str | None,
             caption_column: str | None, split_column: str | None) -> list[Item]:
  base = os.path.dirname(os.path.abspath(path))
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    cols = reader.fieldnames or []
    for name, col in (("image_column", image_column), ("label_column", label_column),
                      ("caption_column", caption_column), ("split_column", split_column)):
      if col and col not in cols:
        raise SystemExit(f"error: {path}: --{name}={col!r} is not a column "
                         f"(columns: {', '.join(cols)})")
    items = []
    for i, row in enumerate(reader):
      p = row[image_column]
      full = p if os.path.isabs(p) else os.path.join(base, p)
      items.append(Item(
          key=f"{i}:{p}", split=row[split_column] if split_column else "train", path=full,
          label=row[label_column] if label_column else None,
          caption=(row[caption_column] or "").strip() or None if caption_column else None))
  return items


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
  from array_record.python import array_record_module as arm
  done = _done_path(opts["dst"], job)
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  items = job.items if job.items is not None else read_tar(job.tar_path, job.tar_split)
  writers, tmp_paths = {}, {}
  stats = {"shard": job.index, "files": {}, "counts": collections.Counter(),
           "labels": collections.Counter(), "skipped": collections.Counter(), "captions": 0}
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
      data, (h, w) = check_image(data, max_pixels=opts["max_pixels"],
                                 max_side=opts["max_side"], quality=opts["quality"])
    except Skip as s:
      stats["skipped"][s.reason] += 1
      continue
    record = {"image": data, "key": item.key, "height": h, "width": w}
    if item.label is not None:
      record["label"] = item.label  # names mapped to ids when the manifest is assembled
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

class LabelMap:
  """Class names -> ids: sorted names, or integers kept as they are."""

  def __init__(self, labels: set):
    self.numeric = all(isinstance(l, int) or (isinstance(l, str) and l.lstrip("-").isdigit())
                       for l in labels)
    if self.numeric:
      ids = sorted({int(l) for l in labels})
      self.names = [str(i) for i in range(max(ids) + 1)] if ids else []
    else:
      self.names = sorted(str(l) for l in labels)
    self.index = {n: i for i, n in enumerate(self.names)}

  def __call__(self, label) -> int:
    return int(label) if self.numeric else self.index[str(label)]


def _relabel(dst: str, files: list[str], label_map: LabelMap):
  """Rewrites records so that ``label`` holds an integer id (names go to the manifest)."""
  from array_record.python import array_record_data_source as ards
  from array_record.python import array_record_module as arm
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

def plan(kind: str, src: str, args) -> list[ShardJob]:
  if kind == "webdataset":
    tars = sorted(glob.glob(src) if any(c in src for c in "*?[") else (
        glob.glob(os.path.join(src, "*.tar")) if os.path.isdir(src) else [src]))
    if not tars:
      raise SystemExit(f"error: webdataset {src!r}: no .tar files")
    return [ShardJob(i, len(tars), tar_path=t, tar_split=args.split) for i, t in enumerate(tars)]
  if kind == "imagefolder":
    if not os.path.isdir(src):
      raise SystemExit(f"error: imagefolder {src!r} is not a directory")
    items = list_imagefolder(src, args.split_fraction)
  else:
    if not os.path.isfile(src):
      raise SystemExit(f"error: csv {src!r} does not exist")
    items = list_csv(src, args.image_column, args.label_column, args.caption_column,
                     args.split_column)
  n = max(1, min(args.num_shards or max(1, len(items) // 10000), max(1, len(items))))
  return [ShardJob(i, n, items=items[i::n]) for i in range(n)]


def run(kind: str, src: str, dst: str, args) -> dict:
  t0 = time.time()
  os.makedirs(dst, exist_ok=True)
  jobs = plan(kind, src, args)
  opts = {"dst": dst, "max_side": args.max_side, "quality": args.quality,
          "max_pixels": args.max_pixels,
          "require_text": kind == "webdataset" and not args.allow_missing_text}
  already = sum(os.path.exists(_done_path(dst, j)) for j in jobs)
  print(f"converting {kind} {src} -> {dst}: {len(jobs)} shard(s)"
        + (f", {already} already done (resuming)" if already else ""), flush=True)
  results = []
  work = [(j, opts) for j in jobs]
  if args.workers > 1 and len(jobs) > 1:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.workers) as pool:
      for i, r in enumerate(pool.imap_unordered(_run_job, work), 1):
        results.append(r)
        _progress(i, len(jobs), t0)
  else:
    for i, w in enumerate(work, 1):
      results.append(_run_job(w))
      _progress(i, len(jobs), t0)
  results.sort(key=lambda r: r["shard"])

  splits: dict[str, dict] = {}
  skipped = collections.Counter()
  label_counts = collections.Counter()
  for r in results:
    skipped.update(r["skipped"])
    label_counts.update(r["labels"])
    for split, fname in r["files"].items():
      s = splits.setdefault(split, {"files": [], "num_examples": 0})
      s["files"].append(fname)
      s["num_examples"] += r["counts"][split]
  labels = {k.split("\t", 1)[1] for k in label_counts}
  label_map = LabelMap(labels) if labels else None
  if label_map is not None:  # class names (folders, CSV values, .cls text) -> integer ids
    _relabel(dst, [f for s in splits.values() for f in s["files"]], label_map)
  for split, s in splits.items():
    per_class = collections.Counter()
    for k, v in label_counts.items():
      sp, lab = k.split("\t", 1)
      if sp == split:
        per_class[label_map.names[label_map(lab)]] += v
    if per_class:
      s["per_class"] = dict(sorted(per_class.items()))
  schema = {"image": "encoded image bytes", "key": "str", "height": "int", "width": "int"}
  if label_map is not None:
    schema["label"] = "int (index into class_names)"
  if any(r["captions"] for r in results):
    schema["caption"] = "str"
  if kind == "webdataset":
    schema["meta"] = "json str (the sample's .json, when present)"
  manifest = {
      "format": "big_transfer.arrayrecord/1", "source": {"kind": kind, "path": src},
      "splits": splits, "class_names": label_map.names if label_map else None,
      "schema": schema, "skipped": dict(sorted(skipped.items())),
      "num_skipped": sum(skipped.values()),
      "options": {"max_side": args.max_side, "max_pixels": args.max_pixels},
  }
  with open(os.path.join(dst, sources.MANIFEST) + ".tmp", "w") as f:
    json.dump(manifest, f, indent=1)
  os.replace(os.path.join(dst, sources.MANIFEST) + ".tmp", os.path.join(dst, sources.MANIFEST))
  counts = ", ".join(f"{k}: {v['num_examples']}" for k, v in sorted(splits.items()))
  why = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
  total = sum(s["num_examples"] for s in splits.values())
  print(f"wrote {total} examples ({counts}) to {dst}; skipped {sum(skipped.values())}"
        + (f" ({why})" if why else ""), flush=True)
  return manifest


def _progress(i, n, t0):
  dt = time.time() - t0
  eta = dt / i * (n - i)
  print(f"  shard {i}/{n} done, {i / dt:.2f} shards/s, eta {eta:.0f}s", flush=True)


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m big_transfer.data.convert",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("kind", choices=("imagefolder", "webdataset", "csv"))
  p.add_argument("src", help="image folder, tar file / directory / glob, or CSV file")
  p.add_argument("dst", help="output directory (ArrayRecord shards + manifest.json)")
  p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
  p.add_argument("--num_shards", type=int, default=0,
                 help="output shards (imagefolder/csv; default ~10k examples each)")
  p.add_argument("--max_side", type=int, default=0,
                 help="re-encode images whose longer side exceeds this (JPEG)")
  p.add_argument("--quality", type=int, default=95)
  p.add_argument("--max_pixels", type=int, default=89_478_485,
                 help="refuse larger images (decompression bombs)")
  p.add_argument("--split_fraction", type=float, default=0.0,
                 help="imagefolder SRC/<class>/<image>: fraction of images put in 'test'")
  p.add_argument("--split", default="train", help="webdataset: the split these shards form")
  p.add_argument("--allow_missing_text", action="store_true",
                 help="webdataset: keep images without a caption")
  p.add_argument("--image_column", default="image")
  p.add_argument("--label_column", default=None)
  p.add_argument("--caption_column", default=None)
  p.add_argument("--split_column", default=None)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  args.max_side = args.max_side or None
  return run(args.kind, args.src, args.dst, args)


if __name__ == "__main__":
  main()
