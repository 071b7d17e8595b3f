"""Converters on generated data with planted broken files: counts and reasons must match."""

import csv
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from big_transfer.data import convert, sources

RNG = np.random.default_rng(0)


def _jpeg(h=24, w=32, quality=90):
  buf = io.BytesIO()
  Image.fromarray(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
      buf, format="JPEG", quality=quality)
  return buf.getvalue()


def _convert(argv, capsys):
  manifest = convert.main(argv)
  out = capsys.readouterr().out.strip().splitlines()
  return manifest, out[-1]


def test_imagefolder_with_splits_and_broken_files(tmp_path, capsys):
  src = tmp_path / "src"
  for split, n in (("train", 5), ("test", 2)):
    for cls in ("cat", "dog"):
      d = src / split / cls
      d.mkdir(parents=True)
      for i in range(n):
        (d / f"{i}.jpg").write_bytes(_jpeg())
  good = _jpeg()
  (src / "train" / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 2])
  (src / "train" / "cat" / "empty.jpg").write_bytes(b"")
  (src / "train" / "dog" / "notes.jpg").write_bytes(b"this is not an image")
  (src / "test" / "dog" / "huge.jpg").write_bytes(_jpeg(120, 120))
  dst = tmp_path / "dst"
  manifest, last = _convert(["imagefolder", str(src), str(dst), "--workers=2",
                             "--num_shards=3", "--max_pixels=5000"], capsys)
  assert last.endswith("skipped 4 (decompression_bomb 1, empty 1, truncated 1, undecodable 1)")
  assert manifest["skipped"] == {"decompression_bomb": 1, "empty": 1, "truncated": 1,
                                 "undecodable": 1}
  assert manifest["class_names"] == ["cat", "dog"]
  assert manifest["splits"]["train"]["num_examples"] == 10
  assert manifest["splits"]["train"]["per_class"] == {"cat": 5, "dog": 5}
  assert manifest["splits"]["test"]["per_class"] == {"cat": 2, "dog": 2}
  on_disk = json.load(open(dst / "manifest.json"))
  assert on_disk["num_skipped"] == 4
  src_train = sources.open_source(f"arrayrecord:{dst}")
  assert len(src_train) == 10
  labels = sorted(int(src_train[i]["label"]) for i in range(10))
  assert labels == [0] * 5 + [1] * 5
  assert {src_train[i]["label_name"] for i in range(10)} == {"cat", "dog"}


def test_imagefolder_split_fraction_is_stable_and_resizes(tmp_path, capsys):
  src = tmp_path / "src"
  for cls in ("a", "b"):
    (src / cls).mkdir(parents=True)
    for i in range(20):
      (src / cls / f"{i}.png").write_bytes(_jpeg(60, 80))
  args = ["imagefolder", str(src), "", "--split_fraction=0.25", "--max_side=40", "--workers=1"]
  m1, _ = _convert(args[:2] + [str(tmp_path / "d1")] + args[3:], capsys)
  m2, _ = _convert(args[:2] + [str(tmp_path / "d2")] + args[3:], capsys)
  n_test = m1["splits"]["test"]["num_examples"]
  assert 0 < n_test < 40 and m1["splits"]["train"]["num_examples"] == 40 - n_test
  assert m1["splits"] == m2["splits"]
  ex = sources.open_source(f"arrayrecord:{tmp_path / 'd1'}")[0]
  assert max(ex["height"], ex["width"]) == 40
  assert Image.open(io.BytesIO(ex["image"])).size == (40, 30)


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def test_webdataset_pairs_text_safety_and_broken_images(tmp_path, capsys):
  shards = tmp_path / "shards"
  shards.mkdir()
  for s in range(2):
    with tarfile.open(shards / f"{s:05d}.tar", "w") as tar:
      for i in range(4):
        key = f"{s:05d}{i:04d}"
        _add(tar, f"{key}.jpg", _jpeg())
        _add(tar, f"{key}.txt", f"a photo number {s}-{i}".encode())
        _add(tar, f"{key}.json", json.dumps({"width": 32, "height": 24, "src": "gen"}).encode())
      if s == 0:
        _add(tar, "no_text.jpg", _jpeg())  # a pair without text
        _add(tar, "json_caption.jpg", _jpeg())  # caption only in the json
        _add(tar, "json_caption.json", json.dumps({"caption": "from json"}).encode())
        _add(tar, "broken.jpg", b"\xff\xd8\xff garbage")
        _add(tar, "broken.txt", b"text of a broken image")
      else:
        _add(tar, "../escape.jpg", _jpeg())
        _add(tar, "/abs/path.jpg", _jpeg())
  dst = tmp_path / "dst"
  manifest, last = _convert(["webdataset", str(shards), str(dst), "--workers=2"], capsys)
  assert last.endswith("skipped 4 (no_text 1, undecodable 1, unsafe_path 2)")
  assert manifest["splits"]["train"]["num_examples"] == 9
  assert manifest["class_names"] is None and "caption" in manifest["schema"]
  src = sources.open_source(f"arrayrecord:{dst}")
  caps = {src[i]["caption"] for i in range(len(src))}
  assert "from json" in caps and "a photo number 1-3" in caps
  metas = [json.loads(src[i]["meta"]) for i in range(len(src)) if "meta" in src[i]]
  assert any(m.get("src") == "gen" for m in metas)
  assert not (tmp_path / "escape.jpg").exists() and not os.path.exists("/abs/path.jpg")


def test_csv_manifest_with_missing_file_and_bad_column(tmp_path, capsys):
  (tmp_path / "img").mkdir()
  rows = []
  for i in range(6):
    (tmp_path / "img" / f"{i}.jpg").write_bytes(_jpeg())
    rows.append({"path": f"img/{i}.jpg", "y": str(i % 2), "text": f"caption {i}"})
  rows.append({"path": "img/missing.jpg", "y": "1", "text": "gone"})
  with open(tmp_path / "m.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["path", "y", "text"])
    w.writeheader()
    w.writerows(rows)
  dst = tmp_path / "dst"
  manifest, last = _convert(["csv", str(tmp_path / "m.csv"), str(dst), "--image_column=path",
                             "--label_column=y", "--caption_column=text", "--workers=1"], capsys)
  assert last.endswith("skipped 1 (unreadable_file 1)")
  assert manifest["class_names"] == ["0", "1"]
  assert manifest["splits"]["train"]["per_class"] == {"0": 3, "1": 3}
  with pytest.raises(SystemExit, match="--label_column='label' is not a column"):
    convert.main(["csv", str(tmp_path / "m.csv"), str(tmp_path / "x"), "--image_column=path",
                  "--label_column=label"])


def test_interrupted_conversion_redoes_only_unfinished_shards(tmp_path, capsys, monkeypatch):
  src = tmp_path / "src"
  for cls in ("a", "b"):
    (src / cls).mkdir(parents=True)
    for i in range(6):
      (src / cls / f"{i}.jpg").write_bytes(_jpeg())
  dst = tmp_path / "dst"
  real = convert.convert_shard
  calls = []

  def flaky(job, opts):
    calls.append(job.index)
    if job.index == 2 and calls.count(2) == 1:
      raise KeyboardInterrupt  # the machine went away while writing shard 2
    return real(job, opts)
  monkeypatch.setattr(convert, "convert_shard", flaky)
  args = ["imagefolder", str(src), str(dst), "--num_shards=4", "--workers=1"]
  with pytest.raises(KeyboardInterrupt):
    convert.main(args)
  assert calls == [0, 1, 2]
  manifest, last = _convert(args, capsys)
  assert calls == [0, 1, 2, 0, 1, 2, 3]  # 0 and 1 return their saved stats at once
  assert manifest["splits"]["train"]["num_examples"] == 12 and last.endswith("skipped 0")
