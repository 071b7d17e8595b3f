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
    buf, format="JPEG", quality=quality
  )
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
  manifest, last = _convert(
    ["imagefolder", str(src), str(dst), "--workers=2", "--output_shards=3", "--max_pixels=5000"],
    capsys,
  )
  assert last.endswith("skipped 4 (decompression_bomb 1, empty 1, truncated 1, undecodable 1)")
  assert manifest["skipped"] == {
    "decompression_bomb": 1,
    "empty": 1,
    "truncated": 1,
    "undecodable": 1,
  }
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
  manifest, last = _convert(
    [
      "csv",
      str(tmp_path / "m.csv"),
      str(dst),
      "--image_column=path",
      "--label_column=y",
      "--caption_column=text",
      "--workers=1",
    ],
    capsys,
  )
  assert last.endswith("skipped 1 (unreadable_file 1)")
  assert manifest["class_names"] == ["0", "1"]
  assert manifest["splits"]["train"]["per_class"] == {"0": 3, "1": 3}
  with pytest.raises(SystemExit, match="--label_column='label' is not a column"):
    convert.main(
      [
        "csv",
        str(tmp_path / "m.csv"),
        str(tmp_path / "x"),
        "--image_column=path",
        "--label_column=label",
      ]
    )


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
  args = ["imagefolder", str(src), str(dst), "--output_shards=4", "--workers=1"]
  with pytest.raises(KeyboardInterrupt):
    convert.main(args)
  assert calls == [0, 1, 2]
  manifest, last = _convert(args, capsys)
  assert calls == [0, 1, 2, 0, 1, 2, 3]  # 0 and 1 return their saved stats at once
  assert manifest["splits"]["train"]["num_examples"] == 12 and last.endswith("skipped 0")


def _records(dst):
  src = sources.open_source(f"arrayrecord:{dst}")
  return sorted(
    (r["key"], int(r.get("label", -1)), r["image"]) for r in (src[i] for i in range(len(src)))
  )


def test_imagefolder_accounts_for_every_file_and_keeps_empty_classes(tmp_path, capsys):
  src = tmp_path / "src"
  for split in ("train", "test"):
    for cls in ("cat", "dog"):
      (src / split / cls).mkdir(parents=True)
      for i in range(3):
        (src / split / cls / f"{i}.jpg").write_bytes(_jpeg())
  (src / "train" / "bird").mkdir()  # a class with no images yet
  (src / ".ipynb_checkpoints" / "cat").mkdir(parents=True)  # a hidden folder beside the splits
  for i in range(2):
    (src / ".ipynb_checkpoints" / "cat" / f"{i}-checkpoint.jpg").write_bytes(_jpeg())
  (src / "README.md").write_text("notes")
  (src / "train" / "cat" / "more").mkdir()
  (src / "train" / "cat" / "more" / "x.jpg").write_bytes(_jpeg())  # nested in a class
  manifest, last = _convert(["imagefolder", str(src), str(tmp_path / "dst"), "--workers=1"], capsys)
  assert manifest["splits"]["train"]["num_examples"] == 6
  assert manifest["skipped"] == {"hidden": 2, "nested": 1, "stray_file": 1}
  assert last.endswith(
    "skipped 4 (hidden 2, nested 1, stray_file 1); empty classes kept in class_names: bird"
  )
  assert manifest["class_names"] == ["bird", "cat", "dog"] and manifest["empty_classes"] == ["bird"]
  assert manifest["splits"]["train"]["per_class"] == {"cat": 3, "dog": 3}
  labels = {(k.split("/")[0], y) for k, y, _ in _records(tmp_path / "dst")}
  assert labels == {("cat", 1), ("dog", 2)}  # ids are the class's place, empty classes included
  manifest, _ = _convert(
    ["imagefolder", str(src), str(tmp_path / "rec"), "--workers=1", "--recursive"], capsys
  )
  assert manifest["splits"]["train"]["per_class"] == {"cat": 4, "dog": 3}


def test_imagefolder_links_and_unicode_names_never_drop_or_split_a_class(tmp_path, capsys):
  import unicodedata

  src = tmp_path / "src"
  for cls in ("caff", "cat"):
    (src / cls).mkdir(parents=True)
    for i in range(2):
      (src / cls / f"{i}.jpg").write_bytes(_jpeg())
  # A class named on macOS (decomposed: 'cafe' + a combining accent) sorts before 'caff' as
  # typed there and after it as typed elsewhere: named in composed form, it has one id.
  nfd = unicodedata.normalize("NFD", "café")
  (src / nfd).mkdir()
  (src / nfd / "0.jpg").write_bytes(_jpeg())
  # A symlinked folder inside a class folder: its images are counted (nested), or with
  # --recursive written as the class's, never silently dropped.
  extra = tmp_path / "extra"
  extra.mkdir()
  for i in range(3):
    (extra / f"{i}.jpg").write_bytes(_jpeg())
  (src / "cat" / "more").symlink_to(extra, target_is_directory=True)
  manifest, _ = _convert(["imagefolder", str(src), str(tmp_path / "a"), "--workers=1"], capsys)
  assert manifest["class_names"] == ["caff", "café", "cat"]
  assert all(unicodedata.is_normalized("NFC", n) for n in manifest["class_names"])
  assert manifest["skipped"] == {"nested": 3}
  manifest, _ = _convert(
    ["imagefolder", str(src), str(tmp_path / "b"), "--workers=1", "--recursive"], capsys
  )
  assert manifest["splits"]["train"]["per_class"] == {"caff": 2, "café": 1, "cat": 5}
  # One class name written both ways, side by side: refused in one line.
  (src / "café").mkdir()
  with pytest.raises(SystemExit, match="are the same class name 'café' written two ways"):
    convert.main(["imagefolder", str(src), str(tmp_path / "c"), "--workers=1"])
  (src / "café").rmdir()
  # A class folder that is a link to another: its images would be written under two labels.
  (src / "kitten").symlink_to(src / "cat", target_is_directory=True)
  with pytest.raises(SystemExit, match="'cat' and 'kitten' are the same folder"):
    convert.main(["imagefolder", str(src), str(tmp_path / "d"), "--workers=1"])


def test_csv_rows_with_bad_labels_short_rows_or_path_like_splits_are_counted_not_written(
  tmp_path, capsys
):
  (tmp_path / "img").mkdir()
  for i in range(5):
    (tmp_path / "img" / f"{i}.jpg").write_bytes(_jpeg())
  lines = [
    "path,y,split",
    "img/0.jpg,0,train",
    "img/1.jpg,1,test",
    "img/2.jpg,-1,train",
    "img/3.jpg,1",
    "img/4.jpg,0,../../escape",
    "img/4.jpg,0,/abs/x",
    "img/1.jpg,,train",
    "img/0.jpg,1,train,extra",
  ]
  (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
  dst = tmp_path / "out" / "dst"
  manifest, last = _convert(
    [
      "csv",
      str(tmp_path / "m.csv"),
      str(dst),
      "--image_column=path",
      "--label_column=y",
      "--split_column=split",
      "--workers=1",
    ],
    capsys,
  )
  assert manifest["skipped"] == {"bad_label": 2, "bad_split": 2, "long_row": 1, "short_row": 1}
  assert last.endswith("skipped 6 (bad_label 2, bad_split 2, long_row 1, short_row 1)")
  assert sorted(manifest["splits"]) == ["test", "train"]
  assert manifest["splits"]["train"]["per_class"] == {"0": 1}
  assert sorted(os.listdir(tmp_path / "out")) == ["dst"] and not os.path.exists("/abs/x")


def test_webdataset_duplicate_keys_are_skipped_and_keys_are_unique_across_tars(tmp_path, capsys):
  shards = tmp_path / "shards"
  shards.mkdir()
  for s in range(2):
    with tarfile.open(shards / f"part{s}.tar", "w") as tar:
      for key in ("a", "b"):
        _add(tar, f"{key}.jpg", _jpeg())
        _add(tar, f"{key}.txt", f"{key} in tar {s}".encode())
      if s == 0:
        _add(tar, "a.jpg", _jpeg())  # key 'a' again, later: a second sample under one key
        _add(tar, "a.txt", b"another a")
        _add(tar, "c.jpg", _jpeg())
        _add(tar, "c.jpg", _jpeg())  # one sample with two images
        _add(tar, "c.txt", b"c")
  manifest, last = _convert(
    ["webdataset", str(shards), str(tmp_path / "dst"), "--workers=1"], capsys
  )
  assert manifest["skipped"] == {"duplicate_key": 2}
  keys = [k for k, _, _ in _records(tmp_path / "dst")]
  assert keys == ["part0/a", "part0/b", "part1/a", "part1/b"]


def _coco(path, images, anns, cats):
  path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def test_coco_annotations_camera_traps_style(tmp_path, capsys):
  img = tmp_path / "images"
  img.mkdir()
  for i in range(8):
    (img / f"{i}.jpg").write_bytes(_jpeg())
  cats = [
    {"id": 1, "name": "opossum"},
    {"id": 3, "name": "empty"},
    {"id": 5, "name": "bobcat"},
    {"id": 9, "name": "badger"},
  ]  # badger: a category with no images here
  ims = [{"id": f"i{i}", "file_name": f"{i}.jpg", "location": i % 2} for i in range(8)]
  ims.append({"id": "gone", "file_name": "missing.jpg"})
  anns = [{"image_id": f"i{i}", "category_id": 1 if i < 3 else 5} for i in range(5)] + [
    {"image_id": "i5", "category_id": 3},  # empty frame
    {"image_id": "i6", "category_id": 1},
    {"image_id": "i6", "category_id": 5},
    {"image_id": "gone", "category_id": 1},
  ]  # i7: no annotation
  _coco(tmp_path / "train.json", ims[:7] + ims[8:], anns, cats)
  _coco(
    tmp_path / "test.json",
    [ims[7], {"id": "t", "file_name": "0.jpg"}],
    [{"image_id": "t", "category_id": 5}],
    cats,
  )
  manifest, last = _convert(
    [
      "coco",
      f"train={tmp_path / 'train.json'},test={tmp_path / 'test.json'}",
      str(tmp_path / "dst"),
      f"--images={img}",
      "--skip_categories=empty",
      "--workers=1",
    ],
    capsys,
  )
  assert manifest["class_names"] == ["badger", "bobcat", "opossum"]
  assert manifest["empty_classes"] == ["badger"]
  assert manifest["splits"]["train"]["per_class"] == {"bobcat": 2, "opossum": 3}
  assert manifest["splits"]["test"]["per_class"] == {"bobcat": 1}
  assert manifest["skipped"] == {
    "multi_label": 1,
    "no_label": 1,
    "skipped_category": 1,
    "unreadable_file": 1,
  }
  ex = sources.open_source(f"arrayrecord:{tmp_path / 'dst'}")[0]
  assert json.loads(ex["meta"])["location"] in (0, 1) and ex["label_name"] in ("bobcat", "opossum")


def test_a_conversion_split_across_two_hosts_then_merged_equals_one_run(tmp_path, capsys):
  src = tmp_path / "src"
  for cls in ("a", "b", "c"):
    (src / cls).mkdir(parents=True)
    for i in range(5):
      (src / cls / f"{i}.jpg").write_bytes(_jpeg())
  (src / "b" / "broken.jpg").write_bytes(b"nope")
  base = ["imagefolder", str(src)]
  one, _ = _convert(base + [str(tmp_path / "one"), "--output_shards=5", "--workers=1"], capsys)
  multi = str(tmp_path / "multi")
  assert (
    convert.main(
      base + [multi, "--output_shards=5", "--workers=1", "--num_shards=2", "--shard_index=1"]
    )
    is None
  )
  assert "convert merge" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="3 of 5 shards are not done yet"):
    convert.main(["merge", multi])
  convert.main(
    base + [multi, "--output_shards=5", "--workers=1", "--num_shards=2", "--shard_index=0"]
  )
  merged = convert.main(["merge", multi])
  assert merged == one
  assert _records(multi) == _records(tmp_path / "one")
  with pytest.raises(SystemExit, match="holds a conversion of other inputs"):
    convert.main(base + [multi, "--output_shards=4", "--workers=1"])


def test_imagenet_captions_as_documented_template_readable_class_names(tmp_path, capsys):
  """docs/DATA.md's ImageNet-Captions route: a CSV of path, wnid, caption; the template arm's
  captions name the class ('a photo of a tench.'), never its WordNet id."""
  (tmp_path / "img").mkdir()
  with open(tmp_path / "in1k_captions.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["path", "wnid", "caption"])
    for i, wnid in enumerate(["n01440764", "n01443537", "n15075141"] * 2):
      (tmp_path / "img" / f"{i}.jpg").write_bytes(_jpeg())
      w.writerow([f"img/{i}.jpg", wnid, f"my holiday photo {i}"])
  dst = tmp_path / "in1k_captions"
  manifest, _ = _convert(
    [
      "csv",
      str(tmp_path / "in1k_captions.csv"),
      str(dst),
      "--image_column=path",
      "--label_column=wnid",
      "--caption_column=caption",
      "--workers=1",
    ],
    capsys,
  )
  assert manifest["class_names"] == ["n01440764", "n01443537", "n15075141"]
  src = sources.open_source(f"arrayrecord:{dst}?captions=template")
  caps = [src[i]["caption"] for i in range(len(src))]
  assert all("n0" not in c and "n1" not in c for c in caps), caps
  by_label = {int(src[i]["label"]): caps[i] for i in range(len(src))}
  assert by_label[0].endswith(" tench.") and by_label[1].endswith(" goldfish.")
  assert by_label[2].endswith(" toilet paper.")
  assert sources.prompt_names(["n01440764", "sea_lion"]) == ["tench", "sea lion"]
  with pytest.raises(sources.DataError, match="n00000001"):
    sources.prompt_names(["n00000001", "n01440764"])


def test_cassava_2020_kaggle_layout_converts_with_names_and_a_stable_test_split(tmp_path, capsys):
  """The Cassava the authors used: Kaggle's 2020 competition (train.csv of image_id,label;
  train_images/; label_num_to_disease_map.json), as docs/DATA.md converts it."""
  names = {
    "0": "Cassava Bacterial Blight (CBB)",
    "1": "Cassava Brown Streak Disease (CBSD)",
    "2": "Cassava Green Mottle (CGM)",
    "3": "Cassava Mosaic Disease (CMD)",
    "4": "Healthy",
  }
  (tmp_path / "train_images").mkdir()
  (tmp_path / "label_num_to_disease_map.json").write_text(json.dumps(names))
  with open(tmp_path / "train.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image_id", "label"])
    for i in range(40):
      (tmp_path / "train_images" / f"{1000 + i}.jpg").write_bytes(_jpeg())
      w.writerow([f"{1000 + i}.jpg", str(i % 5)])
    (tmp_path / "train_images" / "9999.jpg").write_bytes(_jpeg())
    w.writerow(["9999.jpg", "7"])  # a label the map does not name
  args = [
    "csv",
    str(tmp_path / "train.csv"),
    None,
    "--image_column=image_id",
    "--label_column=label",
    f"--images={tmp_path / 'train_images'}",
    f"--label_names={tmp_path / 'label_num_to_disease_map.json'}",
    "--split_fraction=0.25",
    "--workers=1",
  ]
  manifest, last = _convert([*args[:2], str(tmp_path / "a"), *args[3:]], capsys)
  assert last.endswith("skipped 1 (unnamed_label 1)")
  assert manifest["class_names"] == [names[str(i)] for i in range(5)]
  n_train = manifest["splits"]["train"]["num_examples"]
  n_test = manifest["splits"]["test"]["num_examples"]
  assert n_train + n_test == 40 and 4 <= n_test <= 18
  src = sources.open_source(f"arrayrecord:{tmp_path / 'a'}:test")
  assert {src[i]["label_name"] for i in range(len(src))} <= set(names.values())
  assert all(
    names[str(int(src[i]["key"].split(":")[1][:4]) % 5)] == src[i]["label_name"]
    for i in range(len(src))
  )
  # The split is a property of each image, not of the run: converting again gives the same.
  again, _ = _convert([*args[:2], str(tmp_path / "b"), *args[3:]], capsys)
  assert again["splits"]["test"]["num_examples"] == n_test


def test_hidden_entries_are_never_classes_or_examples(tmp_path, capsys):
  """SRC/.ipynb_checkpoints/ beside the class folders (no split folders) is not a class: the
  real labels keep their ids; .DS_Store and macOS's ._ files are skipped and counted, in image
  folders and in webdataset tars alike."""
  src = tmp_path / "src"
  for cls in ("cat", "dog", "fish"):
    (src / cls).mkdir(parents=True)
    for i in range(2):
      (src / cls / f"{i}.jpg").write_bytes(_jpeg())
  (src / ".ipynb_checkpoints").mkdir()
  (src / ".ipynb_checkpoints" / "x-checkpoint.jpg").write_bytes(_jpeg())
  (src / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
  (src / "dog" / "._0.jpg").write_bytes(b"\0\5\26\7")
  manifest, last = _convert(["imagefolder", str(src), str(tmp_path / "dst"), "--workers=1"], capsys)
  assert manifest["class_names"] == ["cat", "dog", "fish"]
  assert manifest["skipped"] == {"hidden": 3} and last.endswith("skipped 3 (hidden 3)")
  assert manifest["splits"]["train"]["per_class"] == {"cat": 2, "dog": 2, "fish": 2}
  shards = tmp_path / "shards"
  shards.mkdir()
  with tarfile.open(shards / "00000.tar", "w") as tar:
    for i in range(3):
      _add(tar, f"{i:04d}.jpg", _jpeg())
      _add(tar, f"{i:04d}.txt", f"a photo {i}".encode())
    _add(tar, "._0000.jpg", b"\0\5\26\7")
  manifest, last = _convert(
    ["webdataset", str(shards), str(tmp_path / "wds"), "--workers=1"], capsys
  )
  assert manifest["splits"]["train"]["num_examples"] == 3
  assert last.endswith("skipped 1 (hidden 1)")


def test_readmes_own_data_command_trains_and_evaluates_on_converted_jpegs(tmp_path, capsys):
  """README's "convert imagefolder, then train" lines as written: the train string decodes, the
  mini config's eval string has no decode, and the converted JPEGs are decoded anyway."""
  from big_transfer import config_lib, train
  from big_transfer.logging import read_metrics
  from conftest import MINI, one_device

  src = tmp_path / "pets"
  for k, cls in enumerate(("cat", "dog")):
    (src / cls).mkdir(parents=True)
    for i in range(12):
      arr = np.full((36, 40, 3), 40 + 170 * k, np.uint8)
      buf = io.BytesIO()
      Image.fromarray(arr).save(buf, format="JPEG")
      (src / cls / f"{i}.jpg").write_bytes(buf.getvalue())
  _convert(
    ["imagefolder", str(src), str(tmp_path / "pets_ar"), "--split_fraction=0.25", "--workers=1"],
    capsys,
  )
  c = config_lib.load(f"{MINI}:steps=4,batch=8,width=0.125")
  c.data = f"arrayrecord:{tmp_path / 'pets_ar'}"
  c.pp_train = "decode|inception_crop(32)|flip_lr|value_range(-1,1)"
  assert "decode" not in c.pp_eval
  c.eval_every, c.tensorboard = 4, False  # classes from the manifest, as the README runs it
  train.run(c, str(tmp_path / "run"), devices=one_device())
  evals = [r for r in read_metrics(str(tmp_path / "run")) if "eval/accuracy" in r]
  assert evals and evals[-1]["step"] == 4


def test_class_folders_stay_names_and_negative_webdataset_classes_are_bad_labels(tmp_path, capsys):
  # Folders '1' and '01' are two classes (never merged by parsing them as numbers), '-1' a
  # third; no phantom classes; every label is a valid index into class_names.
  src = tmp_path / "folders"
  for cls, n in (("1", 2), ("01", 3), ("-1", 1)):
    (src / cls).mkdir(parents=True)
    for i in range(n):
      (src / cls / f"{i}.jpg").write_bytes(_jpeg())
  dst = tmp_path / "dst"
  manifest, _ = _convert(["imagefolder", str(src), str(dst)], capsys)
  assert manifest["class_names"] == ["-1", "01", "1"]
  assert manifest["splits"]["train"]["per_class"] == {"-1": 1, "01": 3, "1": 2}
  s = sources.open_source(f"arrayrecord:{dst}")
  got = sorted((s[i]["label_name"], int(s[i]["label"])) for i in range(len(s)))
  assert got == [("-1", 0), ("01", 1), ("01", 1), ("01", 1), ("1", 2), ("1", 2)]

  # webdataset: a .cls of -1 is a bad label (counted, not written, not credited to class 1).
  shards = tmp_path / "shards"
  shards.mkdir()
  with tarfile.open(shards / "00000.tar", "w") as tar:
    for i, cls in enumerate(["0", "1", "-1", "1"]):
      _add(tar, f"k{i}.jpg", _jpeg())
      _add(tar, f"k{i}.txt", b"a caption")
      _add(tar, f"k{i}.cls", cls.encode())
  manifest, last = _convert(["webdataset", str(shards), str(tmp_path / "wds")], capsys)
  assert "bad_label 1" in last
  assert manifest["class_names"] == ["0", "1"]
  assert manifest["splits"]["train"]["per_class"] == {"0": 1, "1": 2}
