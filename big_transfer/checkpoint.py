"""Orbax checkpoints: train state + Grain iterator state together, resume, fallback, transfer.

Layout: ``WORKDIR/checkpoints/<step>/{state,data}``. Saves are asynchronous (the loop goes on
while the arrays are written); only finalised checkpoints are listed, so a run killed mid-save
resumes from the previous one. A checkpoint that fails to restore is moved aside to
``WORKDIR/checkpoints_corrupt/<step>`` (nothing is deleted) and the next older one is tried.
Restores always pass target shardings, so a checkpoint moves between meshes and device counts.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  pass


def abstract_like(state, shardings=None):
  """ShapeDtypeStructs (with shardings) to restore ``state``'s structure into."""
  if shardings is None:
    shardings = jax.tree.map(lambda x: x.sharding, state)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


class Checkpointer:
  """Keeps the last ``keep`` checkpoints (and every ``keep_every``-th step, if set)."""

  def __init__(self, workdir: str, *, keep: int = 3, keep_every: int | None = None,
               async_save: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every or None,
        enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data_iter=None):
    args = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iter)
    self.manager.save(step, args=ocp.args.Composite(**args), force=True)

  def _restore(self, step, abstract_state, data_iter):
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    return self.manager.restore(step, args=ocp.args.Composite(**args))["state"]

  def _check_structure(self, step, abstract_state):
    """A checkpoint of another model or optimiser is a config error, not corruption."""
    tree = _metadata_tree(os.path.join(self.directory, str(step), "state"))
    mismatches = structure_mismatches(tree, abstract_state)
    if mismatches:
      raise CheckpointError(
          f"checkpoint {self.directory}/{step} was written by a different model or optimiser "
          f"than this config ({len(mismatches)} mismatches: {'; '.join(mismatches[:6])}"
          f"{' ...' if len(mismatches) > 6 else ''}); use a new --workdir")

  def restore_latest(self, abstract_state, data_iter=None) -> tuple[int, Any] | None:
    """Restores the newest checkpoint that reads back; None when there is none.

    Raises CheckpointError when the newest readable checkpoint has another structure."""
    for step in reversed(self.steps()):
      try:
        self._check_structure(step, abstract_state)
      except CheckpointError:
        raise
      except Exception:  # noqa: BLE001  unreadable metadata: corrupt, handled below
        pass
      try:
        return step, self._restore(step, abstract_state, data_iter)
      except Exception as e:  # noqa: BLE001  (any failure to read means a bad checkpoint)
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        log.warning("checkpoint %s/%d does not restore (%s: %s); moving it aside and "
                    "falling back to the previous one", self.directory, step,
                    type(e).__name__, msg)
        self._move_aside(step)
    return None

  def _move_aside(self, step: int):
    src = os.path.join(self.directory, str(step))
    if jax.process_index() == 0 and os.path.exists(src):
      dst_dir = os.path.join(self.workdir, "checkpoints_corrupt")
      os.makedirs(dst_dir, exist_ok=True)
      dst = os.path.join(dst_dir, str(step))
      if os.path.exists(dst):
        shutil.rmtree(dst)
      shutil.move(src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"checkpoint_move_aside_{step}")
    self.manager.reload()

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def find_checkpoint(path: str) -> tuple[str, int]:
  """A workdir, its checkpoints dir or one step dir -> (checkpoints dir, step)."""
  path = os.path.abspath(path)
  for d in (os.path.join(path, "checkpoints"), path):
    if os.path.isdir(d):
      steps = [int(s) for s in os.listdir(d) if s.isdigit()
               and os.path.isdir(os.path.join(d, s, "state"))]
      if steps:
        return d, max(steps)
  base = os.path.basename(path)
  if base.isdigit() and os.path.isdir(os.path.join(path, "state")):
    return os.path.dirname(path), int(base)
  raise CheckpointError(f"no checkpoint found at {path!r} (expected a workdir, its "
                        f"checkpoints/ directory or a checkpoints/<step> directory)")


def _metadata_tree(item_dir: str):
  meta = ocp.StandardCheckpointer().metadata(item_dir)
  return meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree


def _shapes_by_name(tree) -> dict[str, tuple]:
  from big_transfer.sharding import path_name
  return {path_name(p): tuple(getattr(v, "shape", ()))
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def structure_mismatches(saved_tree, target_tree) -> list[str]:
  """Names missing on either side and shape differences, as readable strings."""
  saved, target = _shapes_by_name(saved_tree), _shapes_by_name(target_tree)
  out = [f"{k}: not in checkpoint" for k in sorted(set(target) - set(saved))]
  out += [f"{k}: not in this model" for k in sorted(set(saved) - set(target))]
  out += [f"{k}: checkpoint {saved[k]} vs model {target[k]}" for k in sorted(set(saved) & set(target))
          if saved[k] != target[k]]
  return out


def load_state(path: str) -> tuple[dict, int]:
  """The full saved train state as host numpy arrays (any mesh it was saved from)."""
  directory, step = find_checkpoint(path)
  item = os.path.join(directory, str(step), "state")
  ckptr = ocp.StandardCheckpointer()
  from big_transfer.logging import quiet_absl
  with quiet_absl():  # orbax warns about optional metadata files
    tree = _metadata_tree(item)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  restored = ckptr.restore(item, target)
  return jax.tree.map(np.asarray, restored), step


def load_params(path: str) -> tuple[dict, int]:
  """Parameters only, for transfer: returns (state['params'], step)."""
  state, step = load_state(path)
  return state["params"], step
