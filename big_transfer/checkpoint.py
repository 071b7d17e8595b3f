"""Orbax checkpoints: train state and loader position together, verified, resume, fallback.

Layout: ``WORKDIR/checkpoints/<step>/{state,loader,digest,CHECKSUMS.json}``. Saves are
asynchronous (the loop goes on while the arrays are written); only finalised checkpoints are
listed, so a run killed mid-save resumes from the previous one, and the unfinished
``<step>.orbax-checkpoint-tmp`` directories it left are removed (saying so) when the next run
opens the directory.

Every checkpoint is verified before it is trusted, two ways, both written as part of its own
save and never added afterwards:
  - ``digest``: a checksum of every array of the state, computed on the device from the values
    being saved; a restore recomputes it from the values read back and compares (any mesh, any
    storage; it also covers a checkpoint a kill left without ``CHECKSUMS.json``);
  - ``CHECKSUMS.json``: a CRC32 of every file, written into the step's temporary directory
    after Orbax has finalised it and before the directory is renamed into place, so a listed
    checkpoint is sealed from its first moment; a restore checks the files first.

Restoring tells three failures apart:
  - corrupt (a checksum that does not match, a file missing, a checkpoint that does not read
    back): moved aside to ``WORKDIR/checkpoints_corrupt/<step>`` (nothing is deleted) and the
    next older one is tried;
  - incompatible (written by another model or optimiser): a CheckpointError naming the
    mismatched parameters; nothing is moved;
  - transient (an I/O error a retry may not see: a timeout, an unavailable file system): retried,
    then a CheckpointError; nothing is moved.
The loader's position is the step itself (batches are a function of their index), so a
checkpoint resumes on any number of processes, devices or data workers. Restores always pass
target shardings, so a checkpoint moves between meshes and device counts.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from big_transfer import paths
from big_transfer.logging import quiet_absl
from big_transfer.sharding import path_name
from big_transfer.workdir import CHECKPOINTS, CHECKPOINTS_CORRUPT

log = logging.getLogger(__name__)

CHECKSUMS = "CHECKSUMS.json"


class CheckpointError(RuntimeError):
  pass


def abstract_like(state, shardings=None):
  """ShapeDtypeStructs (with shardings) to restore ``state``'s structure into."""
  if shardings is None:
    shardings = jax.tree.map(lambda x: x.sharding, state)
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
  )


def _chain(e: BaseException):
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


is_transient = paths.is_transient  # one rule for every store


def is_disk_full(e: BaseException) -> bool:
  return any(
    (isinstance(x, OSError) and x.errno == errno.ENOSPC) or "No space left on device" in str(x)
    for x in _chain(e)
  )


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def _crc32(path: str) -> str:
  crc = 0
  with paths.open(path, "rb") as f:
    while chunk := f.read(1 << 22):
      crc = zlib.crc32(chunk, crc)
  return f"{crc:08x}"


# Orbax may rewrite its own bookkeeping after a save; the data and array files it may not.
# (commit_success.txt: Orbax's "this step is finalised" marker on object stores, which have no
# rename.)
_UNCHECKED = (CHECKSUMS, "_CHECKPOINT_METADATA", "commit_success.txt")  # = COMMIT_MARK


def _files(step_dir: str) -> list[str]:
  return [f for f in paths.files_under(step_dir) if paths.basename(f) not in _UNCHECKED]


def seal(step_dir: str) -> None:
  """Writes the checksums of a checkpoint's files (once), as part of its save."""
  path = os.path.join(step_dir, CHECKSUMS)
  if paths.exists(path):
    return
  sums = {f: _crc32(os.path.join(step_dir, f)) for f in _files(step_dir)}
  paths.write_json(path, {"crc32": sums}, indent=0, sort_keys=True)


def verify(step_dir: str) -> str | None:
  """None when every file matches its checksum (or the checkpoint was never sealed), else
  what is wrong, in one line."""
  path = os.path.join(step_dir, CHECKSUMS)
  if not paths.exists(path):
    return None
  try:
    sums = paths.read_json(path)["crc32"]
  except (OSError, ValueError, KeyError) as e:
    return f"{CHECKSUMS} unreadable ({_first_line(e)})"
  present = set(paths.files_under(step_dir))
  for rel, want in sums.items():
    full = os.path.join(step_dir, rel)
    if rel not in present:
      return f"{rel} is missing"
    if _crc32(full) != want:
      return f"{rel} does not match its checksum (bytes changed after the save)"
  return None


DIGEST_VERSION = 1


def _leaf_digest(x, xp):
  """A uint32 checksum of an array's bits: sum over elements of mix(bits) * (2 i + 1) mod 2**32
  (odd weights: any single changed element changes it). ``xp``: jax.numpy or numpy, equal
  results (the device computes it at save and restore; hosts reading another run's checkpoint
  compute it with numpy)."""
  itemsize = np.dtype(x.dtype).itemsize
  if x.dtype == bool:
    u = x.astype(xp.uint32)
  elif itemsize in (1, 2, 4):
    utype = {1: xp.uint8, 2: xp.uint16, 4: xp.uint32}[itemsize]
    if xp is np:
      u = np.ascontiguousarray(x).view(np.dtype(utype)).astype(np.uint32)
    else:
      u = jax.lax.bitcast_convert_type(x, utype).astype(xp.uint32)
  else:  # 64-bit leaves (x64 mode): fold the two halves
    if xp is np:
      v = np.ascontiguousarray(x).view(np.uint64)
    else:
      v = jax.lax.bitcast_convert_type(x, xp.uint64)
    u = (v ^ (v >> 32)).astype(xp.uint32)
  u = u.reshape(-1)
  i = xp.arange(u.shape[0], dtype=xp.uint32)
  mixed = (u ^ (u >> xp.uint32(15))) * xp.uint32(0x9E3779B1)
  return xp.sum(mixed * (i * xp.uint32(2) + xp.uint32(1)) + i, dtype=xp.uint32)


def _named_leaves(state) -> list[tuple[str, Any]]:
  return [(path_name(p), v) for p, v in jax.tree_util.tree_flatten_with_path(state)[0]]


_digest_fns: dict = {}


HOST_DIGEST_MAX_BYTES = 64 << 20


def state_digest(state) -> dict[str, str]:
  """{array name: 8 hex digits} of a (device) train state. A state of up to
  HOST_DIGEST_MAX_BYTES on one process is copied to the host and digested there (compiling
  the device program costs more than that); a larger one is digested where the arrays live
  (one small jitted program; every process of a multi-process run calls it). Both give the
  same digest."""
  leaves = jax.tree.leaves(state)
  nbytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves)
  if nbytes <= HOST_DIGEST_MAX_BYTES and all(
    getattr(x, "is_fully_addressable", True) for x in leaves
  ):
    return host_digest(jax.device_get(state))
  names = [n for n, _ in _named_leaves(state)]
  treedef = jax.tree_util.tree_structure(state)
  fn = _digest_fns.get(treedef)
  if fn is None:
    opts = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    fn = jax.jit(
      lambda t: [_leaf_digest(x, jax.numpy) for x in jax.tree.leaves(t)], compiler_options=opts
    )
    _digest_fns[treedef] = fn
  values = jax.device_get(fn(state))
  return {n: f"{int(v):08x}" for n, v in zip(names, values)}


def host_digest(state) -> dict[str, str]:
  """:func:`state_digest` of host (numpy) arrays."""
  with np.errstate(over="ignore"):
    return {n: f"{int(_leaf_digest(np.asarray(v), np)):08x}" for n, v in _named_leaves(state)}


def digest_mismatch(saved: dict, got: dict[str, str]) -> str | None:
  """None when every array matches the digest saved with it, else what is wrong, in one
  line."""
  if not isinstance(saved, dict) or saved.get("version") != DIGEST_VERSION:
    return None  # a digest this version cannot read: the file checksums decide
  want = saved.get("arrays", {})
  bad = [n for n in sorted(set(want) | set(got)) if want.get(n) != got.get(n)]
  if not bad:
    return None
  return (
    f"{len(bad)} array(s) do not match the digest saved with them (changed after the "
    f"save): {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}"
  )


def read_digest(step_dir: str) -> dict | None:
  """The digest item of a checkpoint (None: saved before digests existed)."""
  for name in ("digest/metadata", "digest"):
    path = os.path.join(step_dir, name)
    if paths.isfile(path):
      try:
        return paths.read_json(path)
      except (OSError, ValueError):
        return {"version": DIGEST_VERSION, "arrays": {"<digest unreadable>": ""}}
  return None


def fingerprint(step_dir: str) -> str | None:
  """What a checkpoint's weights are, cheaply: a hash of its array digest (else of its
  CHECKSUMS.json); None when it has neither."""
  saved = read_digest(step_dir)
  blob = None
  if saved:
    blob = json.dumps(saved, sort_keys=True).encode()
  elif paths.exists(os.path.join(step_dir, CHECKSUMS)):
    blob = paths.read_bytes(os.path.join(step_dir, CHECKSUMS))
  return hashlib.sha1(blob).hexdigest()[:16] if blob is not None else None


TMP_MARK = ".orbax-checkpoint-tmp"  # Orbax's suffix of a step directory being written


COMMIT_MARK = "commit_success.txt"  # Orbax's "finalised" file where there is no rename


def _committed(step_dir: str) -> bool:
  """Orbax finalised this step directory: locally by renaming it into place (so any ``<step>``
  is), on an object store (written in place, no rename) by writing its commit marker."""
  return not paths.is_url(step_dir) or paths.exists(os.path.join(step_dir, COMMIT_MARK))


def _unfinished(directory: str) -> list[str]:
  """Step directories a killed save left: ``<step>.orbax-checkpoint-tmp*``, or a ``<step>``
  Orbax never finalised (an object store's)."""
  return sorted(
    n
    for n in paths.listdir(directory)
    if TMP_MARK in n or (n.isdigit() and not _committed(os.path.join(directory, n)))
  )


def remove_unfinished(directory: str, log_fn=None) -> list[str]:
  """Removes the unfinished step directories a killed save left (process 0, under the workdir
  lock); returns their names."""
  if jax.process_index() != 0 or not paths.isdir(directory):
    return []
  gone = _unfinished(directory)
  for n in gone:
    paths.rmtree(os.path.join(directory, n))
  if gone and log_fn is not None:
    log_fn(
      f"removed {len(gone)} unfinished checkpoint(s) a stopped run left in {directory}: "
      f"{', '.join(gone[:4])}{' ...' if len(gone) > 4 else ''}"
    )
  return gone


class Checkpointer:
  """Keeps the last ``keep`` checkpoints (and every ``keep_every``-th step, if set)."""

  def __init__(
    self,
    workdir: str,
    *,
    keep: int = 3,
    keep_every: int | None = None,
    async_save: bool = True,
    log_fn=None,
  ):
    self.workdir = paths.resolve(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINTS)
    remove_unfinished(self.directory, log_fn or log.warning)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      keep_period=keep_every or None,
      enable_async_checkpointing=async_save,
      create=True,
      async_options=(
        ocp.AsyncOptions(post_finalization_callback=self._seal_pending) if async_save else None
      ),
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self.failed = False
    self.async_save = async_save
    self._pending: int | None = None  # the step being saved

  def _seal_pending(self):
    """Called by Orbax once the pending save is finalised, before its directory is renamed
    into place: its files' checksums go into it (one sealed step, never an older one)."""
    step, self._pending = self._pending, None
    if step is None or jax.process_index() != 0 or not paths.isdir(self.directory):
      return
    tmp = sorted(n for n in paths.listdir(self.directory) if n.startswith(f"{step}{TMP_MARK}"))
    step_dir = os.path.join(self.directory, tmp[-1] if tmp else str(step))
    try:
      seal(step_dir)
    except OSError as e:  # a full disk: the digest still verifies this checkpoint
      log.warning("checkpoint %s: checksums not written (%s)", step_dir, _first_line(e))

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def _save_error(self, step: int | None, e: BaseException, in_flight: bool = True):
    # An asynchronous save fails in the background; the error surfaces at a later call. The
    # failing step is the save in flight (not a path the error happens to name, nor the newest
    # finished step); the previous checkpoint is the newest finished one before it.
    if in_flight and self._pending is not None:
      step = self._pending
    where = f"{self.directory}/{step}"
    self.failed = True
    try:
      before = [s for s in self.steps() if step is None or s < step]
    except Exception:  # noqa: BLE001  the store may be what failed
      before = None
    intact = (
      f"the previous checkpoint {self.directory}/{before[-1]} is intact"
      if before
      else "no earlier checkpoint was saved"
      if before is not None
      else "the previous checkpoints are intact"
    )
    if is_disk_full(e):
      usage = shutil.disk_usage(self.directory)  # only a local disk fills up
      return CheckpointError(
        f"saving checkpoint {where} failed: no space left on device ({usage.free / 2**30:.2f} "
        f"GiB free of {usage.total / 2**30:.2f} GiB); {intact}; "
        f"free space and run the same command again to resume"
      )
    return CheckpointError(
      f"saving checkpoint {where} failed: {_first_line(e)}; {intact}; run the same command "
      f"again to resume from it"
    )

  def failed_before_save(self, step: int, what: str, e: BaseException) -> CheckpointError:
    """The one line of a save that could not start: ``what`` failed first (the rows that belong
    before it, say), the previous checkpoint named as intact."""
    err = self._save_error(step, e, in_flight=False)
    self.failed = False  # nothing of this save is in flight
    text = str(err).replace(" failed: ", f" failed: {what} (", 1)
    return CheckpointError(text.replace("; ", "); ", 1))

  def save(self, step: int, state, loader: dict | None = None):
    """Saves (asynchronously) the state and the loader's bookkeeping (``next_batch``,
    ``skipped``); a failure — this save's or an earlier asynchronous one's — is one
    CheckpointError line."""
    digest = {"version": DIGEST_VERSION, "arrays": state_digest(state)}
    args = {"state": ocp.args.StandardSave(state), "digest": ocp.args.JsonSave(digest)}
    if loader is not None:
      args["loader"] = ocp.args.JsonSave(loader)
    try:
      self.manager.wait_until_finished()  # the previous save is sealed before this one starts
      self._pending = step
      self.manager.save(step, args=ocp.args.Composite(**args), force=True)
    except Exception as e:  # noqa: BLE001  one line, the cause named (the save in flight's)
      raise self._save_error(step, e) from None
    if not self.async_save:
      self._seal_pending()  # synchronous: written and renamed by now

  def _restore(self, step, abstract_state) -> tuple[Any, dict]:
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    has_loader = paths.isdir(os.path.join(self.directory, str(step), "loader"))
    if has_loader:
      args["loader"] = ocp.args.JsonRestore()
    out = self.manager.restore(step, args=ocp.args.Composite(**args))
    return out["state"], (dict(out["loader"]) if has_loader else {})

  def _verify_arrays(self, step, state) -> str | None:
    """The restored arrays against the digest saved with them (None: they match). A checkpoint
    with neither a digest nor checksums (an older version's newest, after a kill) restores
    with a warning: nothing can vouch for it."""
    step_dir = os.path.join(self.directory, str(step))
    saved = read_digest(step_dir)
    if saved is None:
      if not paths.exists(os.path.join(step_dir, CHECKSUMS)):
        log.warning(
          "checkpoint %s has neither an array digest nor file checksums (written "
          "by an older version and stopped before sealing): restored unverified",
          step_dir,
        )
      return None
    return digest_mismatch(saved, state_digest(state))

  def _check_structure(self, step, abstract_state):
    """A checkpoint of another model or optimiser is a config error, not corruption."""
    with quiet_absl():  # "Metadata file does not exist" for every checkpoint of older Orbax
      tree = _metadata_tree(os.path.join(self.directory, str(step), "state"))
    mismatches = structure_mismatches(tree, abstract_state)
    if mismatches:
      raise CheckpointError(
        f"checkpoint {self.directory}/{step} was written by a different model or optimiser "
        f"than this config ({len(mismatches)} mismatches: {'; '.join(mismatches[:6])}"
        f"{' ...' if len(mismatches) > 6 else ''}); use a new --workdir"
      )

  def restore_latest(
    self, abstract_state, retries: int = 3, backoff_s: float = 2.0
  ) -> tuple[int | None, Any, dict, list[str]]:
    """The newest checkpoint that verifies and reads back: (step, state, loader info, problems
    with newer ones). (None, None, {}, problems) when none does — ``problems`` says for each
    checkpoint why (empty: there were none).

    Raises CheckpointError for an incompatible checkpoint or a transient failure that
    outlasts ``retries``: neither is corruption, and nothing is moved aside."""
    try:
      return self._restore_latest(abstract_state, retries, backoff_s)
    except CheckpointError:
      raise
    except Exception as e:  # noqa: BLE001  a store that stays unavailable: one line
      if not paths.is_transient(e):
        raise
      raise CheckpointError(
        f"checkpoints in {self.directory} could not be read ({_first_line(e)}, still after "
        f"{paths.retry_seconds():.0f}s of retries, BT_STORE_RETRY_S); a transient failure of "
        f"the store, not corruption: nothing moved aside; run again when it is back"
      ) from None

  def _restore_latest(self, abstract_state, retries: int, backoff_s: float):
    problems: list[str] = []
    for step in reversed(self.steps()):
      step_dir = os.path.join(self.directory, str(step))
      bad = verify(step_dir)
      if bad is None:
        try:
          self._check_structure(step, abstract_state)
        except CheckpointError:
          raise
        except Exception:  # noqa: BLE001  unreadable metadata: the restore below says more
          pass
        for attempt in range(retries + 1):
          try:
            state, loader = self._restore(step, abstract_state)
            bad = self._verify_arrays(step, state)
            if bad is None:
              return step, state, loader, problems
            del state
            break
          except Exception as e:  # noqa: BLE001  classified below
            if not is_transient(e):
              bad = f"does not restore ({_first_line(e)})"
              break
            if attempt == retries:
              raise CheckpointError(
                f"checkpoint {step_dir} could not be read after {retries + 1} tries "
                f"({_first_line(e)}); a transient failure, not corruption: nothing moved "
                f"aside; run again when the file system is back"
              ) from None
            log.warning(
              "checkpoint %s: %s; retrying in %.0fs",
              step_dir,
              _first_line(e),
              backoff_s * 2**attempt,
            )
            time.sleep(backoff_s * 2**attempt)
      problems.append(f"step {step}: {bad}")
      log.warning(
        "checkpoint %s %s; moving it aside to checkpoints_corrupt/ and falling "
        "back to the previous one",
        step_dir,
        bad,
      )
      self._move_aside(step)
    return None, None, {}, problems

  def _move_aside(self, step: int):
    src = os.path.join(self.directory, str(step))
    if jax.process_index() == 0 and paths.exists(src):
      dst_dir = os.path.join(self.workdir, CHECKPOINTS_CORRUPT)
      paths.makedirs(dst_dir)
      dst = os.path.join(dst_dir, str(step))
      if paths.exists(dst):
        paths.rmtree(dst)
      paths.move(src, dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint_move_aside_{step}")
    self.manager.reload()

  def check(self):
    """Raises (one CheckpointError line) if an asynchronous save has failed meanwhile: the
    loop stops at once instead of training on without checkpoints."""
    try:
      self.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      raise self._save_error(self.manager.latest_step(), e) from None

  def wait(self):
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._save_error(self.manager.latest_step(), e) from None

  def close(self):
    if self.failed:  # a failed save's threads are left to the exit: closing them only adds
      return  # tracebacks ("Event loop is closed") after the one error line
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._save_error(self.manager.latest_step(), e) from None
    finally:
      if not self.failed:
        self.manager.close()


def find_checkpoints(path: str) -> tuple[str, list[int]]:
  """A workdir, its checkpoints dir or one step dir -> (checkpoints dir, steps newest first;
  only the given one for a step dir)."""
  path = paths.resolve(path)
  for d in (os.path.join(path, CHECKPOINTS), path):
    if paths.isdir(d):
      steps = [int(s) for s in paths.listdir(d) if s.isdigit() and _finished(os.path.join(d, s))]
      if steps:
        return d, sorted(steps, reverse=True)
  base = os.path.basename(path)
  if base.isdigit() and _finished(path):
    return os.path.dirname(path), [int(base)]
  if not paths.exists(path):
    near = nearest_run(path)
    raise CheckpointError(
      f"no such run {path!r}"
      + (f"; the nearest run directory there is {near!r}" if near else "")
      + " (expected a workdir, its checkpoints/ directory or a checkpoints/<step> directory)"
    )
  raise CheckpointError(
    f"no checkpoint found at {path!r} (expected a workdir, its "
    f"checkpoints/ directory or a checkpoints/<step> directory)"
  )


def nearest_run(path: str) -> str | None:
  """The existing run directory (one holding checkpoints/) whose name is nearest to a mistyped
  ``path``'s, in the same parent directory; None when there is none close."""
  import difflib

  parent, name = os.path.split(path.rstrip("/"))
  try:
    names = [n for n in paths.listdir(parent) if paths.isdir(os.path.join(parent, n, CHECKPOINTS))]
  except (OSError, FileNotFoundError):
    return None
  close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
  return os.path.join(parent, close[0]) if close else None


def _finished(step_dir: str) -> bool:
  """A step directory holding a state that Orbax finalised."""
  return paths.isdir(os.path.join(step_dir, "state")) and _committed(step_dir)


def find_checkpoint(path: str) -> tuple[str, int]:
  """(checkpoints dir, newest step) of a workdir, its checkpoints dir or one step dir."""
  directory, steps = find_checkpoints(path)
  return directory, steps[0]


def _metadata_tree(item_dir: str):
  meta = ocp.StandardCheckpointer().metadata(item_dir)
  return meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree


def _shapes_by_name(tree) -> dict[str, tuple]:
  return {
    path_name(p): tuple(getattr(v, "shape", ()))
    for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def structure_mismatches(saved_tree, target_tree) -> list[str]:
  """Names missing on either side and shape differences, as readable strings."""
  saved, target = _shapes_by_name(saved_tree), _shapes_by_name(target_tree)
  out = [f"{k}: not in checkpoint" for k in sorted(set(target) - set(saved))]
  out += [f"{k}: not in this model" for k in sorted(set(saved) - set(target))]
  out += [
    f"{k}: checkpoint {saved[k]} vs model {target[k]}"
    for k in sorted(set(saved) & set(target))
    if saved[k] != target[k]
  ]
  return out


def _load_step(directory: str, step: int) -> dict:
  item = os.path.join(directory, str(step), "state")
  with quiet_absl():  # orbax warns about optional metadata files
    tree = _metadata_tree(item)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  return jax.tree.map(np.asarray, ocp.StandardCheckpointer().restore(item, target))


def load_state(path: str) -> tuple[dict, int]:
  """The full saved train state as host numpy arrays (any mesh it was saved from), from the
  newest checkpoint that verifies and reads back (an older one, with a warning, when the newest
  is corrupt; a given step directory: that one only). Nothing is moved: this reads another
  run's checkpoints."""
  directory, steps = find_checkpoints(path)
  problems = []
  for step in steps:
    bad = verify(os.path.join(directory, str(step)))
    if bad is None:
      try:
        state = _load_step(directory, step)
      except Exception as e:  # noqa: BLE001  a transient error is not retried here
        bad = f"does not restore ({_first_line(e)})"
      else:
        saved = read_digest(os.path.join(directory, str(step)))
        bad = digest_mismatch(saved, host_digest(state)) if saved else None
        if bad is None:
          if problems:
            log.warning(
              "%s: using checkpoint %d; newer ones are unusable: %s",
              directory,
              step,
              "; ".join(problems),
            )
          return state, step
    problems.append(f"step {step}: {bad}")
  raise CheckpointError(f"no usable checkpoint in {directory}: " + "; ".join(problems))


def load_params(path: str) -> tuple[dict, int]:
  """Parameters only, for transfer: returns (state['params'], step)."""
  state, step = load_state(path)
  return state["params"], step
