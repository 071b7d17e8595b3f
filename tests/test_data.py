"""Sources by spec, preprocessing ops, and the sharded, resumable Grain pipelines."""

import io

import numpy as np
import pytest
from PIL import Image

from big_transfer.data import ops, pipeline, sources


def test_builtin_digits_are_real_and_split_disjointly():
  train = sources.open_source("builtin:digits")
  test = sources.open_source("builtin:digits:test")
  assert (len(train), len(test)) == (1437, 360)
  assert train.class_names == tuple("0123456789")
  ex = train[0]
  assert ex["image"].shape == (8, 8, 1) and ex["image"].dtype == np.uint8
  seen = {train[i]["image"].tobytes() for i in range(len(train))}
  overlap = sum(test[i]["image"].tobytes() in seen for i in range(len(test)))
  assert overlap < 5  # a handful of digits are pixel-identical in the UCI data itself
  assert sorted(set(int(train[i]["label"]) for i in range(len(train)))) == list(range(10))


def test_split_slices():
  src = sources.open_source("builtin:digits:train[:10%]")
  assert len(src) == 144
  src = sources.open_source("builtin:digits:train[100:110]")
  assert len(src) == 10
  full = sources.open_source("builtin:digits")
  assert np.array_equal(src[0]["image"], full[100]["image"])


@pytest.mark.parametrize(
  "spec,message",
  [
    ("digits", "expected one of builtin"),
    ("builtin:nope", "unknown built-in dataset 'nope'"),
    ("builtin:digits:validation", "no split 'validation'"),
    ("tfds:surely_not_a_dataset", "TFDS has no dataset"),
    ("arrayrecord:/does/not/exist", "does not exist"),
  ],
)
def test_bad_specs_name_what_is_wrong(spec, message):
  with pytest.raises(sources.DataError, match=message):
    sources.open_source(spec)


def test_tfds_source_through_mock_data():
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=12):
    src = sources.open_source("tfds:mnist:train")
    assert len(src) == 12
    assert src.class_names == tuple(str(i) for i in range(10))
    assert src[3]["image"].shape == (28, 28, 1)


def _png(arr):
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format="PNG")
  return buf.getvalue()


def test_arrayrecord_roundtrip(tmp_path):
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 255, (10, 12, 12, 3), dtype=np.uint8)
  exs = [{"image": _png(im), "label": i % 3, "caption": f"photo {i}"} for i, im in enumerate(imgs)]
  sources.write_arrayrecord(
    str(tmp_path), {"train": exs[:7], "test": exs[7:]}, class_names=["a", "b", "c"], num_shards=2
  )
  src = sources.open_source(f"arrayrecord:{tmp_path}")
  assert len(src) == 7 and src.class_names == ("a", "b", "c")
  decoded = ops.parse("decode")(src[0], np.random.default_rng(0))
  labels = sorted(int(src[i]["label"]) for i in range(7))
  assert labels == sorted(i % 3 for i in range(7))
  assert decoded["image"].shape == (12, 12, 3)
  test = sources.open_source(f"arrayrecord:{tmp_path}:test")
  assert len(test) == 3 and {test[i]["caption"] for i in range(3)} == {
    "photo 7",
    "photo 8",
    "photo 9",
  }
  with pytest.raises(sources.DataError, match="no split 'val'"):
    sources.open_source(f"arrayrecord:{tmp_path}:val")
  # A slice of a converted set parses (the path ends at the split, not at the slice's colon),
  # and complementary slices are disjoint views of one base split.
  head = sources.open_source(f"arrayrecord:{tmp_path}:train[:50%]")
  tail = sources.open_source(f"arrayrecord:{tmp_path}:train[50%:]")
  assert (len(head), len(tail)) == (4, 3)
  (b1, i1), (b2, i2) = sources.provenance(head), sources.provenance(tail)
  assert sources.identity_of(b1) == sources.identity_of(b2)
  assert not set(i1) & set(i2) and sorted(set(i1) | set(i2)) == list(range(7))
  assert head[0]["caption"] == src[0]["caption"] and tail[0]["caption"] == src[4]["caption"]


class _Indexed:
  """A source whose examples carry their own index as the label."""

  class_names = None

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"image": np.full((2, 2, 1), i % 256, np.uint8), "label": i}


def _ids(batches):
  return [int(x) for b in batches for x in b["label"]]


def test_processes_see_disjoint_shards_whose_union_is_the_epoch():
  src, n, b = _Indexed(40), 40, 8
  per_proc = []
  for p in range(2):
    it = iter(
      pipeline.train_dataset(
        src, pp="", batch_size=b, seed=3, keys=("label",), process_index=p, process_count=2
      )
    )
    per_proc.append([next(it) for _ in range(n // b)])
  ids0, ids1 = _ids(per_proc[0]), _ids(per_proc[1])
  assert not set(ids0) & set(ids1)
  assert sorted(ids0 + ids1) == list(range(n))
  # Global batch k is the same set of examples as a single process's batch k.
  single = iter(pipeline.train_dataset(src, pp="", batch_size=b, seed=3, keys=("label",)))
  for k in range(n // b):
    assert sorted(_ids([next(single)])) == sorted(_ids([per_proc[0][k], per_proc[1][k]]))


def test_same_seed_same_order_new_permutation_each_epoch():
  src = _Indexed(16)
  make = lambda seed: iter(
    pipeline.train_dataset(src, pp="", batch_size=4, seed=seed, keys=("label",))
  )
  a, b, c = make(1), make(1), make(2)
  ea = _ids([next(a) for _ in range(8)])
  assert ea == _ids([next(b) for _ in range(8)])
  assert ea != _ids([next(c) for _ in range(8)])
  assert sorted(ea[:16]) == sorted(ea[16:]) == list(range(16))
  assert ea[:16] != ea[16:]


def test_batches_are_a_function_of_their_index_whatever_the_workers_or_the_resume_point():
  src = _Indexed(30)
  pp = "inception_crop(2, area_min=0.5)|flip_lr"  # random ops: their rng is the position's
  make = lambda **kw: pipeline.train_dataset(
    src, pp=pp, batch_size=4, seed=0, keys=("image", "label"), **kw
  )
  ref = make()
  expected = [next(ref) for _ in range(10)]
  import os

  stale = os.path.join(pipeline.SHM_DIR, "bt_999999999_dead_0")  # left by a killed run
  if os.path.isdir(pipeline.SHM_DIR):
    open(stale, "wb").close()
  runs = {
    "resumed at 4": make(start_batch=4),
    "1 worker": make(workers=1),
    "2 workers, resumed at 4": make(workers=2, start_batch=4),
    "1 thread": make(threads=1),
  }
  try:
    for name, it in runs.items():
      start = 4 if "resumed" in name else 0
      for want in expected[start:]:
        got = next(it)
        np.testing.assert_array_equal(got["label"], want["label"], err_msg=name)
        np.testing.assert_array_equal(got["image"], want["image"], err_msg=name)
  finally:
    for it in runs.values():
      it.close()
  if os.path.isdir(pipeline.SHM_DIR):  # batches cross in shared memory; none is left behind
    assert not [
      n
      for n in os.listdir(pipeline.SHM_DIR)
      if n.startswith(f"bt_{os.getpid()}_") or n == os.path.basename(stale)
    ]


def test_eval_covers_every_example_once_across_processes():
  src = _Indexed(23)
  seen, total_mask = [], 0.0
  for p in range(2):
    for batch in pipeline.eval_dataset(
      src, pp="", batch_size=8, keys=("label",), process_index=p, process_count=2
    ):
      assert batch["label"].shape == (4,)
      m = batch[pipeline.MASK]
      seen += [int(x) for x, keep in zip(batch["label"], m) if keep]
      assert [int(i) for i, keep in zip(batch[pipeline.INDEX], m) if keep] == [
        int(x) for x, keep in zip(batch["label"], m) if keep
      ]  # _index: source order
      total_mask += m.sum()
  assert sorted(seen) == list(range(23)) and total_mask == 23


class _Broken(_Indexed):
  def __init__(self, n, bad):
    super().__init__(n)
    self.bad = set(bad)

  def __getitem__(self, i):
    ex = super().__getitem__(i)
    if i in self.bad:
      ex["image"] = b"not an image"
    return ex


def test_corrupt_records_are_replaced_and_counted_batches_stay_full():
  counter = pipeline.SkipCounter()
  it = pipeline.train_dataset(
    _Broken(12, {5}), pp="decode(1)", batch_size=4, seed=0, keys=("label",), skipped=counter
  )
  batches = [next(it) for _ in range(6)]  # 2 epochs: record 5 comes up twice
  assert all(b["label"].shape == (4,) for b in batches)
  ids = _ids(batches)
  assert 5 not in ids and counter.count == 2 and counter.attempts == 26
  # The replacement is deterministic: the same batches again.
  again = pipeline.train_dataset(
    _Broken(12, {5}), pp="decode(1)", batch_size=4, seed=0, keys=("label",)
  )
  assert _ids([next(again) for _ in range(6)]) == ids


def test_evaluation_masks_a_corrupt_record_and_keeps_its_shape():
  src = _Broken(16, {3})
  batches = list(
    pipeline.eval_dataset(
      src, pp="decode(1)", batch_size=8, keys=("label",), process_index=1, process_count=2
    )
  )
  assert [b["label"].shape for b in batches] == [(4,), (4,)]
  masked = [int(i) for b in batches for i, m in zip(b[pipeline.INDEX], b[pipeline.MASK]) if not m]
  assert masked == []  # process 1 holds rows 4-7 and 12-15; record 3 is process 0's
  batches = list(
    pipeline.eval_dataset(
      src, pp="decode(1)", batch_size=8, keys=("label",), process_index=0, process_count=2
    )
  )
  masked = [int(i) for b in batches for i, m in zip(b[pipeline.INDEX], b[pipeline.MASK]) if not m]
  assert masked == [3] and all(b["label"].shape == (4,) for b in batches)


@pytest.mark.parametrize(
  "pp,keys,match",
  [
    (
      "decode(1)",
      ("label",),
      r"'decode\(1\)' failed on each of the first \d+ records: "
      r"UnidentifiedImageError",
    ),
    ("", ("caption",), r"failed on each of the first \d+ records: KeyError: 'caption'"),
  ],
)
def test_a_chain_that_fails_on_every_record_stops_with_one_line(pp, keys, match):
  src = _Broken(200, range(200)) if pp else _Indexed(200)
  it = pipeline.train_dataset(src, pp=pp, batch_size=8, seed=0, keys=keys)
  with pytest.raises(pipeline.SkipError, match=match) as e:
    for _ in range(100):
      next(it)
  assert "record" in str(e.value) and "stream position" in str(e.value)
  with pytest.raises(pipeline.SkipError, match="fails on every one of the 200 records"):
    list(pipeline.eval_dataset(src, pp=pp, batch_size=8, keys=keys))


def test_a_mostly_broken_source_stops_at_max_skip_fraction():
  src = _Broken(400, [i for i in range(400) if i % 3])  # two thirds fail
  counter = pipeline.SkipCounter("decode(1)", max_fraction=0.5, window=300)
  it = pipeline.train_dataset(
    src, pp="decode(1)", batch_size=8, seed=0, keys=("label",), skipped=counter
  )
  with pytest.raises(pipeline.SkipError, match="more than max_skip_fraction=0.5"):
    for _ in range(100):
      next(it)


# ----------------------------------------------------------------------------- study knobs


def test_size_subsets_are_nested_and_deterministic():
  small = sources.open_source("builtin:glyphs?n=2000&size=300")
  large = sources.open_source("builtin:glyphs?n=2000&size=1200")
  again = sources.open_source("builtin:glyphs?n=2000&size=300")
  assert (len(small), len(large)) == (300, 1200)
  assert set(small.indices) <= set(large.indices)
  np.testing.assert_array_equal(small.indices, again.indices)
  assert len(sources.open_source("builtin:digits?size=10%")) == 144
  other = sources.open_source("builtin:glyphs?n=2000&size=300&subset_seed=1")
  assert set(other.indices) != set(small.indices)


def test_symmetric_label_noise_rate_and_determinism():
  src = sources.open_source("builtin:digits?label_noise=0.3&noise_seed=5")
  flips = [int(src[i]["label"]) != int(src[i]["clean_label"]) for i in range(len(src))]
  assert abs(np.mean(flips) - 0.3) < 0.05
  again = sources.open_source("builtin:digits?label_noise=0.3&noise_seed=5")
  assert all(int(src[i]["label"]) == int(again[i]["label"]) for i in range(50))
  # Symmetric: wrong labels spread over all the other classes.
  wrong = [int(src[i]["label"]) for i in range(len(src)) if flips[i]]
  assert len(set(wrong)) == 10
  clean = sources.open_source("builtin:digits?label_noise=0")
  assert all(int(clean[i]["label"]) == int(clean[i]["clean_label"]) for i in range(50))


def test_template_captions_replace_web_text():
  raw = sources.open_source("builtin:glyphs?n=50&caption_noise=1.0")
  tmpl = sources.open_source("builtin:glyphs?n=50&caption_noise=1.0&captions=template")
  for i in range(20):
    ex = tmpl[i]
    name = raw.class_names[int(ex["label"])]
    assert ex["caption"].endswith(f" {name}.") and ex["raw_caption"] == raw[i]["caption"]
  # The raw captions of a noisy source mostly do not name the right class.
  names_right = sum(
    f" {raw.class_names[int(raw[i]['label'])]}" in raw[i]["caption"] for i in range(50)
  )
  assert names_right < 35


def test_metadata_filters_and_mixtures():
  small = sources.open_source("builtin:shapes?n=300&where=label<3")
  assert len(small) > 0 and all(int(small[i]["label"]) < 3 for i in range(len(small)))
  both = sources.open_source("builtin:shapes?n=300&where=label>=2&where=label<=4")
  assert {int(both[i]["label"]) for i in range(len(both))} == {2, 3, 4}
  mix = sources.open_source("mix(builtin:glyphs?n=600@3, builtin:shapes?n=200@1)")
  share = np.mean([mix[i]["source_index"] == 0 for i in range(len(mix))])
  assert len(mix) == 800 and abs(share - 0.75) < 0.05
  assert mix.class_names is None  # different label spaces
  with pytest.raises(sources.DataError, match="needs SPEC@WEIGHT"):
    sources.open_source("mix(builtin:digits)")
  with pytest.raises(sources.DataError, match="unknown option 'sizes'"):
    sources.open_source("builtin:digits?sizes=10")


def test_generated_sources_are_deterministic_and_differ_in_controlled_ways():
  g1, g2 = sources.open_source("builtin:glyphs?n=100"), sources.open_source("builtin:glyphs?n=100")
  np.testing.assert_array_equal(g1[7]["image"], g2[7]["image"])
  assert g1[0]["image"].shape == (8, 8, 1)  # the digits' format: a related source
  g3 = sources.open_source("builtin:glyphs?n=100&seed=1")
  assert not np.array_equal(g1[7]["image"], g3[7]["image"])
  letters = sources.open_source("builtin:glyphs?classes=letters&n=10")
  assert letters.class_names[0] == "A" and len(letters.class_names) == 26
  shapes = sources.open_source("builtin:shapes?n=10")
  assert shapes[0]["image"].shape == (32, 32, 3) and len(shapes.class_names) == 10
  test = sources.open_source("builtin:glyphs:test?n=100")
  assert not np.array_equal(test[0]["image"], g1[0]["image"])


def test_evaluation_keeps_deterministic_preprocessing_per_record_and_reads_it_back_exactly():
  src = sources.open_source("builtin:digits:test")
  pp = "to_rgb|resize(36)|central_crop(32)|value_range(-1, 1)"
  cache = pipeline.EVAL_CACHE
  cache.clear()
  batch = lambda s, p=pp: list(
    pipeline.eval_dataset(s, pp=p, batch_size=64, keys=("image", "label"))
  )
  rows = lambda bs: np.concatenate([b["image"][b[pipeline.MASK] > 0] for b in bs])
  first = rows(batch(src))
  assert (cache.misses, cache.hits) == (len(src), 0) and cache.bytes > 0
  # Another view of the same base (a subset: the test subsample, val carved from a pool) reads
  # its records back, exactly as they were computed.
  view = sources.Subset(src, np.arange(10, 50))
  again = rows(batch(view))
  assert cache.hits == 40 and cache.misses == len(src)
  np.testing.assert_array_equal(again, first[10:50])
  # A chain with a random op (or a plug-in op not declared deterministic) is never kept.
  assert ops.is_deterministic(pp) and not ops.is_deterministic("to_rgb|random_crop(8)")
  batch(view, "to_rgb|resize(36)|random_crop(32)|value_range(-1, 1)")
  assert (cache.hits, cache.misses) == (40, len(src))
  # Bounded: the oldest records go first.
  small = pipeline.ExampleCache(max_bytes=3 * first[0].nbytes)
  for i in range(5):
    small.put(i, {"image": first[i]})
  assert small.get(0) is None and small.get(4) is not None and small.bytes <= small.max_bytes
  cache.clear()
