"""Device mesh, parameter sharding by ordered name rules, global batches from per-host data."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch is split over every device


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp) mesh; one of the sizes may be -1 (= all remaining devices)."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  sizes = [data, fsdp]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got data={data}, fsdp={fsdp}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if n % known:
      raise ValueError(f"mesh: {n} devices are not divisible by {known} (data={data}, fsdp={fsdp})")
    sizes[sizes.index(-1)] = n // known
  if int(np.prod(sizes)) != n:
    raise ValueError(f"mesh: data={sizes[0]} x fsdp={sizes[1]} != {n} devices")
  try:  # topology-aware order on TPU/GPU slices
    arr = mesh_utils.create_device_mesh(sizes, devices)
  except (ValueError, NotImplementedError, AssertionError):  # odd topologies: given order
    arr = np.asarray(devices).reshape(sizes)
  return Mesh(arr, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def path_name(path) -> str:
  """A pytree path as 'a/b/c' (dict keys, attributes and sequence indices)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def _fsdp_spec(shape, fsdp_size: int, min_size: int) -> P:
  """Shards the largest dimension divisible by the fsdp axis; small arrays stay replicated."""
  if fsdp_size == 1 or int(np.prod(shape or (1,))) < min_size:
    return P()
  for d in np.argsort(shape)[::-1]:
    if shape[d] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[d] = "fsdp"
      return P(*spec)
  return P()


def spec_for(name: str, shape, rules, mesh: Mesh, min_size: int = 2**14) -> P:
  """First rule whose regex matches ``name`` wins: 'replicate', 'fsdp' or an explicit tuple."""
  for pattern, how in rules:
    if re.fullmatch(pattern, name):
      if how == "replicate":
        return P()
      if how == "fsdp":
        return _fsdp_spec(shape, mesh.shape["fsdp"], min_size)
      return P(*how)
  return P()


def tree_shardings(tree, rules, mesh: Mesh, min_size: int = 2**14):
  """NamedShardings for every leaf of an (abstract) pytree, by name rules."""

  def one(path, leaf):
    return NamedSharding(mesh, spec_for(path_name(path), np.shape(leaf), rules, mesh, min_size))

  return jax.tree_util.tree_map_with_path(one, tree)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def to_global(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's slice of the global batch -> global jax.Arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
  )
