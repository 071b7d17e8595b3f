"""Input pipelines whose unit of work is a global batch: deterministic, sharded across processes,
resumable from the step number alone.

Training: the source in a seeded order (a new permutation each epoch, endless). Global batch
``b`` is stream positions ``[b*B, (b+1)*B)``; with P processes, process ``i`` builds rows
``[i*B/P, (i+1)*B/P)`` of it. Each example is preprocessed with an rng seeded by (seed,
position). So batch ``b`` is a pure function of ``b``: the same on any number of worker
processes, threads or JAX processes, and a resumed run needs no iterator state — only the step
it resumes at. A record that fails preprocessing is replaced by a deterministic alternate (the
record at the same place of a later epoch's order; attempt ``j`` at position ``p + j*N``),
counted, never fatal; batches stay full. When the first records all fail, or the failed share
of recent attempts passes ``max_skip_fraction``, the pipeline stops with a DataError naming the
op chain, the error and a record (a chain that fails on every record would otherwise skip
forever).

Workers (``workers > 0``) are spawned processes that each build whole batches, so the main
process only moves finished arrays; ``threads`` preprocess the examples of one batch
concurrently (in the main process, or in each worker).

Evaluation: every example exactly once across processes in fixed-shape batches. Padding past
the end and records that fail preprocessing are rows with ``_mask`` 0 (a copy of a good example),
so a metric summed with the mask is exact and a failed record never changes a batch's shape.
Every row carries ``_index``, its position in the source, so per-example outputs gathered from
every process can be put back in source order.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import mmap
import multiprocessing
import os
import queue
import secrets
import threading
from collections.abc import Iterator, Sequence

import grain
import numpy as np
from ml_collections import config_dict

from big_transfer import paths, schema
from big_transfer.data import ops, sources
from big_transfer.data.sources import DataError
from big_transfer.runlock import pid_alive


def _check(config) -> None:
  if paths.is_url(config.data_dir):  # workdirs may be buckets; TFDS's ArrayRecord files may not
    raise schema.SectionError(
      f"config.data_dir={config.data_dir}: "
      + paths.not_local(config.data_dir, "ArrayRecord's reader reads local files")
    )
  for key in ("data",) + (("eval_data",) if config.eval_data not in ("", "none") else ()):
    try:
      sources.check_spec(config[key])
    except DataError as e:
      raise schema.SectionError(f"config.{key}: {e}") from None
  for key in ("pp_train", "pp_eval"):
    try:
      ops.parse(config[key])
    except ops.PreprocessError as e:
      raise schema.SectionError(f"config.{key}: {e}") from None
  if not 0 < config.max_skip_fraction <= 1:
    raise schema.SectionError(
      f"config.max_skip_fraction={config.max_skip_fraction}: must be in (0, 1]"
    )


SECTION = schema.Section(
  "",
  __name__,
  keys=(
    schema.Key(
      "data",
      "builtin:digits",
      "the training data: a source spec (builtin:NAME, "
      "tfds:NAME[:SPLIT], arrayrecord:PATH[:SPLIT], folders, webdataset, "
      "mix(SPEC@W,...); ?options), see README 'Data'",
    ),
    schema.Key(
      "data_dir",
      "",
      "where tfds: specs are read from ('' = $TFDS_DATA_DIR, else "
      "~/tensorflow_datasets); prepare them there first with `python -m "
      "big_transfer.data.prepare NAME --data_dir=DIR`",
    ),
    schema.Key("train_split", "train", "the split of data to train on, when the spec names none"),
    schema.Key(
      "eval_data",
      "",
      "held-out evaluation: '' = the training source at eval_split "
      "(without training-only options); 'none' = no evaluation; or a spec",
    ),
    schema.Key("eval_split", "test", "the split of the held-out evaluation"),
    schema.Key(
      "num_classes", config_dict.placeholder(int), "default: from the source's class names"
    ),
    schema.Key(
      "pp_train",
      "decode|inception_crop(224)|flip_lr|value_range(-1,1)",
      "training preprocessing (the op language: data/ops.py)",
    ),
    schema.Key(
      "pp_eval",
      "decode|resize_small(256)|central_crop(224)|value_range(-1,1)",
      "evaluation preprocessing",
    ),
    schema.Key(
      "data_threads",
      8,
      "threads that preprocess a batch's examples concurrently "
      "(split among the workers when there are some)",
    ),
    schema.Key(
      "data_workers",
      0,
      "spawned processes per JAX process, each building whole "
      "batches (0: this process builds them, in a background thread)",
    ),
    schema.Key(
      "normalize_on_device",
      True,
      "pp_train's trailing value_range / normalize run "
      "inside the jitted step (uint8 images cross to the device: a quarter of the "
      "bytes, no float pass on the host)",
    ),
    schema.Key(
      "max_skip_fraction",
      0.5,
      "stop (one error line) when more than this share of recent records fail preprocessing",
    ),
  ),
  check=_check,
)

MASK = "_mask"
INDEX = "_index"
MAX_ATTEMPTS = 16  # alternates tried for one failed position before the batch gives up
FIRST_FAILURES = 64  # this many failed attempts before any success: the chain is broken


class SkipError(DataError):
  """Preprocessing fails on (nearly) every record: one error line, not endless skipping."""


class ExampleCache:
  """Preprocessed evaluation examples kept per process, by (base source, index in it, op
  chain): a chain of deterministic ops (``ops.is_deterministic``) gives a record the same
  arrays every time, so every evaluation and frozen-feature pass over a record after the first
  — another pre-trained model's features of the same downstream set, a grid point's val and
  test accuracy, a view of the same base (val carved from the pool, a test subsample) — reads
  them instead of decoding and resizing again. Bounded (``max_bytes``, the oldest dropped first;
  ``BT_EVAL_CACHE_MB``, default 1024; 0 turns it off)."""

  def __init__(self, max_bytes: int):
    self.max_bytes, self.bytes = max_bytes, 0
    self.hits = self.misses = 0
    self._rows: collections.OrderedDict = collections.OrderedDict()
    self._lock = threading.Lock()

  def get(self, key):
    with self._lock:
      row = self._rows.get(key)
      if row is None:
        self.misses += 1
      else:
        self.hits += 1
      return row

  def put(self, key, row: dict[str, np.ndarray]) -> None:
    size = sum(np.asarray(v).nbytes for v in row.values())
    if size > self.max_bytes:
      return
    with self._lock:
      if key in self._rows:
        return
      self._rows[key] = row
      self.bytes += size
      while self.bytes > self.max_bytes:
        _, old = self._rows.popitem(last=False)
        self.bytes -= sum(np.asarray(v).nbytes for v in old.values())

  def clear(self) -> None:
    with self._lock:
      self._rows.clear()
      self.bytes = self.hits = self.misses = 0


EVAL_CACHE = ExampleCache(int(float(os.environ.get("BT_EVAL_CACHE_MB", "1024")) * 2**20))


class _Builder:
  """Builds examples and batches from positions; picklable, so workers can hold one."""

  def __init__(
    self,
    source,
    pp: str,
    seed: int,
    keys: Sequence[str],
    bind: dict | None,
    shuffle: bool,
    threads: int,
    num_classes: int | None = None,
  ):
    self.source, self.pp, self.seed, self.keys = source, pp, seed, tuple(keys)
    self.num_classes = num_classes if "label" in self.keys else None
    self.bind, self.shuffle, self.threads = dict(bind or {}), shuffle, max(1, threads)
    self.n = len(source)
    self.shm_prefix = "bt_"
    self._fn = self._order = self._pool = None
    self._cache_key = self._base_index = None  # evaluation: what EVAL_CACHE knows a row by
    if not shuffle and EVAL_CACHE.max_bytes and ops.is_deterministic(pp):
      base, idx = sources.provenance(source, see_through_wrappers=False)
      ident = getattr(base, "identity", None)
      if ident is not None:
        ident = tuple(ident) + ((sources.tfds_data_dir(),) if ident[0] == "tfds" else ())
        self._cache_key = (ident, pp, self.keys, repr(sorted(self.bind.items())))
        self._base_index = idx

  def __getstate__(self):
    d = dict(self.__dict__)
    d["_fn"] = d["_order"] = d["_pool"] = None
    return d

  def _setup(self):
    if self._fn is None:
      self._fn = ops.parse(self.pp, bind=self.bind)
      if self.shuffle:  # grain's index shuffle: O(1) memory, a new permutation each epoch
        self._order = grain.MapDataset.range(self.n).shuffle(seed=self.seed).repeat(None)

  def index(self, position: int) -> int:
    return int(self._order[position]) if self.shuffle else position

  def example(self, position: int, attempt: int = 0) -> dict[str, np.ndarray]:
    """The preprocessed example at ``position`` (its ``attempt``-th alternate's rng); an
    evaluation's deterministic chain reads and fills EVAL_CACHE."""
    if self._cache_key is None:
      return self._example(position, attempt)
    key = (self._cache_key, int(self._base_index[position]))
    row = EVAL_CACHE.get(key)
    if row is None:
      row = self._example(position, attempt)
      EVAL_CACHE.put(key, row)
    return row

  def _example(self, position: int, attempt: int = 0) -> dict[str, np.ndarray]:
    self._setup()
    ex = self.source[self.index(position)]
    rng = np.random.default_rng([self.seed, int(position)] + ([attempt] if attempt else []))
    out = self._fn(ex, rng)
    out = {k: np.asarray(out[k]) for k in self.keys}
    if self.num_classes is not None:
      label = out["label"]
      if label.ndim == 0 and not 0 <= int(label) < self.num_classes:
        raise ValueError(
          f"label {int(label)} is outside [0, {self.num_classes}) (a class "
          f"the data does not name: the record is skipped and counted)"
        )
    return out

  def _train_row(self, position: int):
    """(example, failures, first error) for one training row: alternates on failure."""
    failures, first = 0, None
    for attempt in range(MAX_ATTEMPTS):
      p = position + attempt * self.n
      try:
        return self.example(p, attempt), failures, first
      except Exception as e:  # noqa: BLE001  a corrupt record must not kill a long run
        failures += 1
        if first is None:
          first = _describe(e, self.source, self.index(p), p)
    return None, failures, first

  def _map(self, fn, items):
    if self.threads == 1 or len(items) == 1:
      return [fn(x) for x in items]
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(self.threads)
    return list(self._pool.map(fn, items))

  def train_rows(self, positions) -> tuple[list | None, int, int, str | None]:
    """(the rows' examples, or None when a row found no good record; attempts, failures,
    first error)."""
    self._setup()
    rows = self._map(self._train_row, list(positions))
    failures = sum(r[1] for r in rows)
    first = next((r[2] for r in rows if r[2]), None)
    attempts = failures + sum(r[0] is not None for r in rows)
    if any(r[0] is None for r in rows):
      return None, attempts, failures, first
    return [r[0] for r in rows], attempts, failures, first

  def train_batch(self, positions) -> tuple[dict | None, int, int, str | None]:
    """(stacked batch or None when a row found no good record, attempts, failures, first
    error)."""
    rows, attempts, failures, first = self.train_rows(positions)
    return (_stack(rows) if rows is not None else None), attempts, failures, first

  def eval_batch(self, positions, n: int, template: dict | None):
    """(batch, failures, first error, template): positions past ``n`` are padding; a row that
    fails is masked; both are filled with ``template`` (a good example)."""
    self._setup()

    def one(p):
      if p >= n:
        return None, None
      try:
        return self.example(p), None
      except Exception as e:  # noqa: BLE001
        return None, _describe(e, self.source, p, p)

    rows = self._map(one, list(positions))
    failures = sum(err is not None for _, err in rows)
    first = next((err for _, err in rows if err), None)
    good = next((ex for ex, _ in rows if ex is not None), None)
    template = template or good
    if template is None:  # nothing good in this batch yet: find one (padding needs a shape)
      for p in range(n):
        try:
          template = self.example(p)
          break
        except Exception:  # noqa: BLE001
          continue
      if template is None:
        raise SkipError(
          f"preprocessing {self.pp!r} fails on every one of the {n} records (e.g. {first})"
        )
    out = []
    for p, (ex, _) in zip(positions, rows):
      row = dict(ex if ex is not None else template)
      row[MASK] = np.float32(ex is not None)
      row[INDEX] = np.int32(p if p < n else -1)
      out.append(row)
    return _stack(out), failures, first, template


def _describe(e: BaseException, source, index: int, position: int) -> str:
  key = None
  try:
    key = source[index].get("key")
  except Exception:  # noqa: BLE001
    pass
  where = f"record {index}" + (f" (key {key!r})" if key else "") + f" at stream position {position}"
  return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''} — {where}"


def _stack(rows: list[dict]) -> dict[str, np.ndarray]:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class SkipCounter:
  """Counts failed records and stops the pipeline when preprocessing fails on (nearly) every
  record: ``FIRST_FAILURES`` failed attempts before any success, or more than
  ``max_fraction`` of the last ``window`` attempts."""

  def __init__(self, pp: str = "", max_fraction: float = 0.5, window: int = 2000):
    self.pp, self.max_fraction, self.window = pp, max_fraction, window
    self.count = 0  # failed records (this process, since it started)
    self.attempts = 0
    self._recent: collections.deque = collections.deque()  # (attempts, failures) per batch
    self._recent_sums = [0, 0]

  def add(self, attempts: int, failures: int, first: str | None):
    if failures:
      logging.warning("skipped %d record(s) that fail preprocessing, e.g. %s", failures, first)
    self.count += failures
    self.attempts += attempts
    self._recent.append((attempts, failures))
    self._recent_sums[0] += attempts
    self._recent_sums[1] += failures
    while self._recent_sums[0] - self._recent[0][0] >= self.window:
      a, f = self._recent.popleft()
      self._recent_sums[0] -= a
      self._recent_sums[1] -= f
    if failures and self.count == self.attempts and self.count >= FIRST_FAILURES:
      raise SkipError(
        f"preprocessing {self.pp!r} failed on each of the first {self.count} records: {first}"
      )
    a, f = self._recent_sums
    if failures and a >= min(self.window, 200) and f > self.max_fraction * a:
      raise SkipError(
        f"preprocessing {self.pp!r} failed on {f} of the last {a} records "
        f"(more than max_skip_fraction={self.max_fraction:g}): {first}"
      )


def _rows(batch: int, batch_size: int, process_index: int, process_count: int) -> range:
  per = batch_size // process_count
  start = batch * batch_size + process_index * per
  return range(start, start + per)


# ----------------------------------------------------------------------------- workers

_WORKER_BUILDER: _Builder | None = None
SHM_DIR = "/dev/shm"


def _unlink_blocks(prefix: str = "bt_", only_dead_owners: bool = False) -> int:
  """Removes shared-memory blocks named ``{prefix}...`` (``bt_<owner pid>_<loader>_...``):
  batches in flight when a loader stopped, or left by a killed run."""
  if not os.path.isdir(SHM_DIR):
    return 0
  n = 0
  for name in os.listdir(SHM_DIR):
    if not name.startswith(prefix):
      continue
    if only_dead_owners:
      owner = name[3:].split("_", 1)[0]
      if not owner.isdigit() or pid_alive(int(owner)):
        continue
    try:
      os.unlink(os.path.join(SHM_DIR, name))
      n += 1
    except OSError:
      pass
  return n


def _worker_init(builder: _Builder):
  global _WORKER_BUILDER
  _WORKER_BUILDER = builder


def _worker_train_batch(positions):
  """Builds a batch in a worker and hands its arrays over in shared memory: only their layout
  crosses the pipe (pickling tens of MB per batch through it cost more than building it).
  Rows are written straight into the shared block (no intermediate stacked copy)."""
  rows, attempts, failures, first = _WORKER_BUILDER.train_rows(positions)
  return (_to_shared(rows) if rows is not None else None), attempts, failures, first


def _to_shared(rows: list[dict[str, np.ndarray]]):

  import _posixshmem

  layout, offset = [], 0
  for k, v in rows[0].items():
    shape = (len(rows), *np.shape(v))
    layout.append((k, np.asarray(v).dtype.str, shape, offset))
    offset += -(-int(np.prod(shape)) * np.asarray(v).dtype.itemsize // 64) * 64
  name = f"/{_WORKER_BUILDER.shm_prefix}{os.getpid()}_{secrets.token_hex(6)}"
  fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
  try:
    os.ftruncate(fd, max(offset, 1))
    # MAP_POPULATE: the pages are faulted in one go, not one by one as the rows land.
    mm = mmap.mmap(fd, max(offset, 1), flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
  finally:
    os.close(fd)
  for k, dtype, shape, off in layout:
    dst = np.frombuffer(mm, np.dtype(dtype), int(np.prod(shape)), off).reshape(shape)
    for i, r in enumerate(rows):
      dst[i] = r[k]
    del dst
  mm.close()
  return name, layout


def _from_shared(handle) -> dict[str, np.ndarray]:
  """The batch's arrays as views of the shared block, without a copy: the block's name is
  unlinked at once and its memory lives as long as the arrays (or a device buffer aliasing
  them) do."""
  name, layout = handle
  import _posixshmem

  fd = _posixshmem.shm_open(name, os.O_RDWR, mode=0o600)
  try:
    mm = mmap.mmap(fd, os.fstat(fd).st_size)
  finally:
    os.close(fd)
    _posixshmem.shm_unlink(name)
  return {
    k: np.frombuffer(mm, np.dtype(dtype), int(np.prod(shape)), off).reshape(shape)
    for k, dtype, shape, off in layout
  }


class _Prefetch:
  """Runs ``produce(k)`` for k = 0, 1, ... ahead of the consumer, in order."""

  def __init__(self, produce, depth: int):
    self._q: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._produce = produce
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    k = 0
    while not self._stop.is_set():
      try:
        item = ("ok", self._produce(k))
      except BaseException as e:  # noqa: BLE001  handed to the consumer
        item = ("error", e)
      while not self._stop.is_set():
        try:
          self._q.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[0] == "error" or item[1] is None:
        return
      k += 1

  def get(self):
    kind, value = self._q.get()
    if kind == "error":
      raise value
    return value

  def close(self):
    self._stop.set()


class TrainBatches:
  """This process's rows of global batches ``start_batch``, ``start_batch + 1``, ... (an
  endless iterator of dicts of numpy arrays); see the module docstring."""

  def __init__(
    self,
    source,
    *,
    pp: str,
    batch_size: int,
    seed: int,
    keys: Sequence[str],
    process_index: int = 0,
    process_count: int = 1,
    threads: int = 8,
    workers: int = 0,
    skipped: SkipCounter | None = None,
    bind: dict | None = None,
    start_batch: int = 0,
    prefetch: int = 2,
    num_classes: int | None = None,
  ):
    if batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} is not divisible by {process_count} processes")
    if not len(source):
      raise ValueError("the training source is empty")
    self.batch_size, self.process_index, self.process_count = (
      batch_size,
      process_index,
      process_count,
    )
    self.skipped = skipped if skipped is not None else SkipCounter(pp)
    self.next_batch = start_batch
    self.workers = workers
    threads_each = max(1, threads // workers) if workers else threads
    self._builder = _Builder(
      source, pp, seed, keys, bind, shuffle=True, threads=threads_each, num_classes=num_classes
    )
    self._pool = None
    if workers:
      _unlink_blocks(only_dead_owners=True)  # left by a run that was killed
      self._builder.shm_prefix = f"bt_{os.getpid()}_{secrets.token_hex(3)}_"
      ctx = multiprocessing.get_context("spawn")
      self._pool = ctx.Pool(workers, initializer=_worker_init, initargs=(self._builder,))
      self._pending: collections.deque = collections.deque()
      self._depth = max(2, 2 * workers)
      self._submitted = start_batch
    else:
      self._prefetch = _Prefetch(
        lambda k: self._builder.train_batch(self._positions(start_batch + k)), prefetch
      )

  def _positions(self, b: int) -> range:
    return _rows(b, self.batch_size, self.process_index, self.process_count)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._pool is not None:
      while len(self._pending) < self._depth:
        self._pending.append(
          self._pool.apply_async(_worker_train_batch, (self._positions(self._submitted),))
        )
        self._submitted += 1
      handle, attempts, failures, first = self._pending.popleft().get()
      result = ((_from_shared(handle) if handle is not None else None), attempts, failures, first)
    else:
      result = self._prefetch.get()
    batch, attempts, failures, first = result
    self.skipped.add(attempts, failures, first)
    if batch is None:
      raise SkipError(
        f"preprocessing {self.skipped.pp or self._builder.pp!r}: batch "
        f"{self.next_batch} has a "
        f"position whose {MAX_ATTEMPTS} alternates all fail: {first}"
      )
    self.next_batch += 1
    return batch

  def close(self):
    if self._pool is not None:
      self._pool.terminate()
      self._pool.join()
      self._pool = None
      _unlink_blocks(self._builder.shm_prefix)  # batches built but never taken
    elif getattr(self, "_prefetch", None) is not None:
      self._prefetch.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # noqa: BLE001
      pass


class PaddedBatches:
  """Training batches padded to a fixed number of rows with ``_mask`` (1: a real row, 0:
  padding, all-zero arrays): a few-shot set smaller than the batch trains at the shape of every
  other run of its model (one compiled step), on exactly the rows of its own batch. ``batches``:
  a TrainBatches; ``rows``: this process's share of the padded global batch."""

  def __init__(self, batches: TrainBatches, rows: int):
    self.batches, self.rows = batches, rows

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self.batches)
    n = len(next(iter(batch.values())))
    if n > self.rows:
      raise ValueError(f"a batch of {n} rows cannot be padded to {self.rows}")
    pad = lambda a: np.concatenate([a, np.zeros((self.rows - n, *a.shape[1:]), a.dtype)])
    out = {k: pad(np.asarray(v)) for k, v in batch.items()} if n < self.rows else dict(batch)
    out[MASK] = (np.arange(self.rows) < n).astype(np.float32)
    return out

  @property
  def skipped(self):
    return self.batches.skipped

  def close(self):
    self.batches.close()


def train_dataset(source, **kwargs) -> TrainBatches:
  """The per-process training stream of batches of ``batch_size // process_count`` rows, from
  global batch ``start_batch`` on (see TrainBatches)."""
  return TrainBatches(source, **kwargs)


class EvalBatches:
  """Every example once across processes, in fixed-shape batches with ``_mask`` and
  ``_index``; iterate it once per evaluation. A random ``pp`` draws each example's randomness
  from (``seed``, its position): the same on every pass and any number of processes."""

  def __init__(
    self,
    source,
    *,
    pp: str,
    batch_size: int,
    keys: Sequence[str],
    process_index: int = 0,
    process_count: int = 1,
    threads: int = 8,
    bind: dict | None = None,
    skipped: SkipCounter | None = None,
    seed: int = 0,
  ):
    if batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} is not divisible by {process_count} processes")
    self.n = len(source)
    self.batch_size, self.process_index, self.process_count = (
      batch_size,
      process_index,
      process_count,
    )
    self.num_batches = -(-self.n // batch_size)
    self.skipped = skipped if skipped is not None else SkipCounter(pp)
    self._builder = _Builder(source, pp, seed, keys, bind, shuffle=False, threads=threads)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    state = {"template": None}

    def produce(k):
      if k >= self.num_batches:
        return None
      batch, failures, first, state["template"] = self._builder.eval_batch(
        _rows(k, self.batch_size, self.process_index, self.process_count), self.n, state["template"]
      )
      return batch, failures, first

    prefetch = _Prefetch(produce, 2)
    try:
      for _ in range(self.num_batches):
        batch, failures, first = prefetch.get()
        n_real = int(np.sum(batch[INDEX] >= 0))
        self.skipped.add(n_real, failures, first)
        yield batch
    finally:
      prefetch.close()


def eval_dataset(source, **kwargs) -> EvalBatches:
  """Every example once across processes; batches padded to ``batch_size`` with ``_mask`` (see
  EvalBatches)."""
  return EvalBatches(source, **kwargs)
