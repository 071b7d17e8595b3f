"""One path layer: every workdir, checkpoint, metrics file, result, report, lock and ``pretrained=``
may be a local path or an object-store URL (``gs://bucket/...``, and what ``etils.epath`` reads
through fsspec: ``s3://``, ...).

Paths stay strings. Local paths go through ``os`` exactly as before (atomic renames, ``O_EXCL``
locks); URLs go through ``etils.epath`` (gcsfs for ``gs://``), with what object stores lack done
their way:
  - no rename: an object is written whole or not at all, so an atomic write is a plain write,
    and a "move" (a corrupt checkpoint set aside) is a copy, then a delete;
  - no append: files that grow (metrics, TensorBoard events) are written locally and the whole
    file is uploaded at each sync (:class:`Mirror`);
  - no ``O_EXCL``: a lock or claim is created with GCS's create-if-absent precondition
    (``ifGenerationMatch=0``), see :func:`create_exclusive`;
  - listings are cached by fsspec per process, and other processes (workers, a resumed run)
    write meanwhile: every listing and existence check here reads the store afresh.
Arrays in checkpoints go through Orbax/tensorstore's own object-store drivers.

Readers that cannot read object storage refuse a URL in one line naming the recipe (mount the
bucket with gcsfuse): see :func:`not_local`. A path that is almost a URL (``gs:/bucket``), a
scheme with no driver here (``s3://`` without s3fs) or a bucket that does not exist is refused
in one line before anything is written (:func:`check_location`).

Transient failures of a store (503 Service Unavailable, 429, a timeout, a reset connection) are
retried with exponential backoff for up to ``BT_STORE_RETRY_S`` seconds (default 120) on every
operation here — the lock and its heartbeat, metrics, results, markers, manifests, checksums —
then raised (:func:`is_transient` tells them apart from real errors).

Emulators: with ``STORAGE_EMULATOR_HOST`` set (a local GCS API emulator), gcsfs's bucket-type
probe (a Google API an emulator does not serve) is turned off unless
``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` says otherwise, and tensorstore is pointed at the same
emulator (``TENSORSTORE_GCS_HTTP_URL``) unless set.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import time
from typing import IO

log = logging.getLogger(__name__)

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
RECIPE = (
  "mount the bucket and give the mounted path (e.g. `gcsfuse --implicit-dirs BUCKET /mnt/BUCKET`, "
  "then /mnt/BUCKET/...)"
)

if os.environ.get("STORAGE_EMULATOR_HOST"):
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
  os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", os.environ["STORAGE_EMULATOR_HOST"])


class URLPathError(ValueError):
  """A URL where only a local path works, or a location that cannot be one; one line."""


# ----------------------------------------------------------------------------- transient errors

TRANSIENT_ERRNOS = {
  errno.EAGAIN,
  errno.ETIMEDOUT,
  errno.ECONNRESET,
  errno.ECONNREFUSED,
  errno.EMFILE,
  errno.ENFILE,
  errno.EBUSY,
  errno.ESTALE,
  errno.EINTR,
}
TRANSIENT_WORDS = (
  "unavailable",  # gRPC UNAVAILABLE, HTTP 503 Service Unavailable
  "deadline_exceeded",
  "deadline exceeded",
  "resource_exhausted",
  "too many open files",
  "too many requests",
  "rate limit",
  "connection reset",
  "connection aborted",
  "timed out",
  "backend error",
  "bad gateway",
  "gateway timeout",
)
TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}


def _chain(e: BaseException):
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def is_transient(e: BaseException) -> bool:
  """An error a retry may not see: an I/O errno of that kind, a timeout, an HTTP status of a
  store that is briefly unavailable (429, 5xx: gcsfs's HttpError is not an OSError), or such
  words in the message, in any case."""
  for x in _chain(e):
    if isinstance(x, OSError) and x.errno in TRANSIENT_ERRNOS:
      return True
    code = getattr(x, "code", None)
    if isinstance(code, int) and code in TRANSIENT_HTTP:
      return True
    text = str(x).lower()
    if isinstance(x, TimeoutError) or any(w in text for w in TRANSIENT_WORDS):
      return True
  return False


_BUDGET: list[float] = []  # retry_budget's overrides, innermost last


def retry_seconds() -> float:
  if _BUDGET:
    return _BUDGET[-1]
  return float(os.environ.get("BT_STORE_RETRY_S", "120"))


@contextlib.contextmanager
def retry_budget(seconds: float):
  """Retries inside the block stop after ``seconds`` (at most the configured budget): what
  cleans up after a failure does not wait out a long outage a second time."""
  _BUDGET.append(min(seconds, retry_seconds()))
  try:
    yield
  finally:
    _BUDGET.pop()


def retrying(fn):
  """``fn(path, ...)`` retried while a URL's store fails transiently: exponential backoff from
  1 s for up to :func:`retry_seconds` in all, each retry said once in the log; then the last
  error is raised. Local paths are called once, as they are."""

  @functools.wraps(fn)
  def call(path, *args, **kwargs):
    if not is_url(path):
      return fn(path, *args, **kwargs)
    deadline, wait = time.monotonic() + retry_seconds(), 1.0
    while True:
      try:
        return fn(path, *args, **kwargs)
      except Exception as e:  # noqa: BLE001  classified: only transient errors are retried
        left = deadline - time.monotonic()
        if not is_transient(e) or left <= 0:
          raise
        log.warning("%s %s: %s; retrying in %.0fs", fn.__name__, path, _short(e), min(wait, left))
        time.sleep(min(wait, left))
        wait = min(wait * 2, 30.0)

  return call


def _short(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


# ----------------------------------------------------------------------------- locations

ALMOST_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{1,}):/*(?!/)")
KNOWN_SCHEMES = ("gs", "gcs", "s3", "az", "abfs", "hf", "http", "https", "file", "memory")


def check_location(path, what: str = "path") -> None:
  """Refuses, in one URLPathError line and before anything is written, a location that cannot
  be what it means: a path whose first part is ``SCHEME:`` without ``//`` (``gs:/bucket/x``, a
  local directory named 'gs:' otherwise), a URL scheme with no driver here, or a bucket that
  does not exist or cannot be reached."""
  path = os.fspath(path)
  if not is_url(path):
    m = ALMOST_URL.match(path)
    if m and m[1].lower() in KNOWN_SCHEMES:
      fixed = f"{m[1]}://{path[m.end() :].lstrip('/')}"
      raise URLPathError(f"{what} {path!r} is not a URL (one slash); did you mean {fixed}?")
    return
  try:
    fs = _fs(path)
  except (ImportError, ValueError) as e:
    raise URLPathError(
      f"{what} {path}: {scheme(path)}:// is not supported here ({_short(e)}); supported: "
      f"local paths and gs:// (and schemes whose fsspec driver is installed)"
    ) from None
  bucket = _key(path).split("/", 1)[0]
  try:
    ok = retrying(lambda p: fs.exists(bucket))(path)
  except Exception as e:  # noqa: BLE001  one line whatever the store says
    raise URLPathError(
      f"{what} {path}: the bucket {scheme(path)}://{bucket} cannot be reached ({_short(e)})"
    ) from None
  if not ok:
    raise URLPathError(
      f"{what} {path}: the bucket {scheme(path)}://{bucket} does not exist or cannot be reached"
    )


def is_url(path) -> bool:
  return bool(path) and bool(URL.match(str(path)))


def scheme(path) -> str:
  return str(path).split("://", 1)[0].lower() if is_url(path) else ""


def not_local(path, why: str, verb: str = "readable") -> str:
  """The end of the one line refusing a URL that a reader (or writer) of local files was given:
  '<scheme>:// is not <verb> here (<why>); <the mount recipe>'."""
  return f"{scheme(path)}:// is not {verb} here ({why}); {RECIPE}"


def resolve(path) -> str:
  """The absolute form of a path: a local path made absolute, a URL as given (no trailing
  slash). Never turns a URL into a local directory named like it."""
  path = os.fspath(path)
  if is_url(path):
    return path.rstrip("/") if not path.endswith("://") else path
  return os.path.abspath(path)


join = os.path.join  # joins URLs as well ("gs://b/x" + "y" = "gs://b/x/y")
dirname = os.path.dirname
basename = os.path.basename


def _epath(path):
  from etils import epath  # lazy: local paths never need it

  _fs(path)  # the same filesystem settings (and a fresh listing) for epath's own calls

  return epath.Path(path)


def _fs(path):
  """The fsspec filesystem of a URL, its listing cache dropped (other processes write too).
  gcsfs's own log of its retries (a traceback per attempt) is silenced: what fails here is
  retried and reported in one line (:func:`retrying`)."""
  import fsspec

  logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
  if os.environ.get("STORAGE_EMULATOR_HOST"):  # an emulator takes no credentials
    for name in ("gs", "gcs"):
      fsspec.config.conf.setdefault(name, {}).setdefault("token", "anon")
  fs, _ = fsspec.core.url_to_fs(path)
  fs.invalidate_cache()
  return fs


def _key(path) -> str:
  return str(path).split("://", 1)[1]


@retrying
def exists(path) -> bool:
  if not is_url(path):
    return os.path.exists(path)
  return _fs(path).exists(_key(path))


@retrying
def isdir(path) -> bool:
  if not is_url(path):
    return os.path.isdir(path)
  return _fs(path).isdir(_key(path))


@retrying
def isfile(path) -> bool:
  if not is_url(path):
    return os.path.isfile(path)
  return _fs(path).isfile(_key(path))


@retrying
def listdir(path) -> list[str]:
  """Names in a directory (an object-store "directory": the names under its prefix)."""
  if not is_url(path):
    return os.listdir(path)
  fs = _fs(path)
  key = _key(path).rstrip("/")
  if not fs.isdir(key):
    raise FileNotFoundError(f"{path}: no such directory")
  return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(key, detail=False)} - {""})


def makedirs(path, exist_ok: bool = True) -> None:
  """A directory (an object store has none: nothing to make)."""
  if not is_url(path):
    os.makedirs(path, exist_ok=exist_ok)


def open(path, mode: str = "r", **kwargs) -> IO:  # noqa: A001  the builtin's shape
  if not is_url(path):
    return builtins.open(path, mode, **kwargs)
  if "a" in mode:
    raise URLPathError(f"{path}: object stores have no append; write whole files (paths.Mirror)")
  return _epath(path).open(mode)


def read_text(path) -> str:
  return read_bytes(path).decode()


@retrying
def read_bytes(path) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def read_json(path):
  return json.loads(read_text(path))


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode())


def json_default(v):
  """JSON for what ``json`` does not write itself: numpy scalars, tuples and sets as lists, the
  rest as its string."""
  if hasattr(v, "dtype") and getattr(v, "shape", None) == ():
    return v.item()
  if isinstance(v, (tuple, set)):
    return list(v)
  return str(v)


def write_json(path, value, **kwargs) -> None:
  write_text(path, json.dumps(value, **kwargs))


@retrying
def write_bytes(path, data: bytes) -> None:
  """Writes a file whole, atomically: readers see the old or the new content, never a part
  (locally: a temporary file renamed over it; an object store writes objects whole)."""
  if not is_url(path):
    tmp = f"{path}.tmp{os.getpid()}"
    with builtins.open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
    return
  with open(path, "wb") as f:
    f.write(data)


@retrying
def remove(path, missing_ok: bool = True) -> None:
  try:
    if not is_url(path):
      os.remove(path)
    else:
      fs = _fs(path)
      if not fs.exists(_key(path)):
        raise FileNotFoundError(path)
      fs.rm_file(_key(path))
  except FileNotFoundError:
    if not missing_ok:
      raise


@retrying
def rmtree(path) -> None:
  if not is_url(path):
    shutil.rmtree(path, ignore_errors=True)
    return
  fs = _fs(path)
  if fs.exists(_key(path)):
    fs.rm(_key(path), recursive=True)


@retrying
def move(src, dst) -> None:
  """Moves a file or directory (an object store: copied, then the source deleted)."""
  if not is_url(src) and not is_url(dst):
    shutil.move(src, dst)
    return
  if is_url(src) != is_url(dst) or scheme(src) != scheme(dst):
    raise URLPathError(f"moving {src} to {dst}: both must be on the same store")
  fs = _fs(src)
  fs.copy(_key(src), _key(dst), recursive=True)
  fs.rm(_key(src), recursive=True)


@retrying
def files_under(root) -> list[str]:
  """Every file below ``root``, as paths relative to it, sorted."""
  if not is_url(root):
    return sorted(
      os.path.relpath(os.path.join(dp, f), root) for dp, _, fs in os.walk(root) for f in fs
    )
  fs = _fs(root)
  key = _key(root).rstrip("/")
  return sorted(p[len(key) + 1 :] for p in fs.find(key) if p.startswith(key + "/"))


@contextlib.contextmanager
def local_copy(path):
  """``path`` itself, or for a file at a URL a local copy of it (deleted afterwards), for
  readers of local files (.npz, .safetensors, .pt)."""
  if not is_url(path):
    yield path
    return
  if not isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, basename(path))
    write_bytes(local, read_bytes(path))
    yield local


@retrying
def mtime(path) -> float:
  """Seconds since the epoch of the last write (the store's clock for an object)."""
  if not is_url(path):
    return os.path.getmtime(path)
  info = _fs(path).info(_key(path))
  for k in ("mtime", "updated", "LastModified", "last_modified"):
    v = info.get(k)
    if v is None:
      continue
    if hasattr(v, "timestamp"):
      return v.timestamp()
    if isinstance(v, str):
      import datetime

      return datetime.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
    return float(v)
  raise OSError(f"{path}: the store gives no modification time")


@retrying
def create_exclusive(path, data: bytes) -> bool:
  """Creates ``path`` with ``data`` if it does not exist: True when this call created it, False
  when it existed. Atomic among processes and hosts: ``O_EXCL`` locally, GCS's
  ``ifGenerationMatch=0`` precondition for ``gs://``. Other stores have no such primitive
  here: refused in one line."""
  if not is_url(path):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    return True
  if scheme(path) not in ("gs", "gcs"):
    raise URLPathError(
      f"{path}: a lock on {scheme(path)}:// needs a create-if-absent write this code has only for "
      f"gs:// and local paths; {RECIPE}"
    )
  fs = _fs(path)
  try:
    fs.pipe_file(_key(path), data, mode="create")
  except Exception as e:  # noqa: BLE001  412 Precondition Failed: it exists
    if _precondition_failed(e):
      return False
    raise
  return True


def _precondition_failed(e: BaseException) -> bool:
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, FileExistsError) or getattr(e, "code", None) == 412 or "412" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


class Mirror:
  """Files that grow by appends (metrics.jsonl, TensorBoard events), for a directory that may be
  a URL. A local directory is used as is (``local`` is it). For a URL, the files are written
  in a local staging directory and :meth:`sync` uploads each changed file whole (object stores
  have no append); ``fetch(name)`` first copies an existing file down (a resumed run goes on
  from it)."""

  def __init__(self, directory: str):
    self.directory = directory
    self.remote = is_url(directory)
    self.local = tempfile.mkdtemp(prefix="bt-stage-") if self.remote else directory
    self._sizes: dict[str, tuple[int, float]] = {}

  def fetch(self, name: str) -> str:
    """The local path of ``name``; for a URL directory, downloaded first when it exists."""
    local = os.path.join(self.local, name)
    if self.remote:
      remote = join(self.directory, name)
      if exists(remote):
        os.makedirs(os.path.dirname(local), exist_ok=True)
        write_bytes(local, read_bytes(remote))
        self._sizes[name] = self._stat(local)
    return local

  @staticmethod
  def _stat(p: str) -> tuple[int, float]:
    st = os.stat(p)
    return st.st_size, st.st_mtime

  def sync(self) -> None:
    """Uploads every file changed since the last sync (a URL directory; else nothing)."""
    if not self.remote:
      return
    for rel in files_under(self.local):
      p = os.path.join(self.local, rel)
      st = self._stat(p)
      if self._sizes.get(rel) != st:
        write_bytes(join(self.directory, rel), read_bytes(p))
        self._sizes[rel] = st

  def close(self) -> None:
    self.sync()
    if self.remote:
      shutil.rmtree(self.local, ignore_errors=True)
