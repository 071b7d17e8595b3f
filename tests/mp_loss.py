"""Run by test_clip through launch/local.sh: the contrastive losses and their gradients over a
global batch whose rows live on two JAX processes (each holding half); process 0 writes them to
OUT/losses.json."""

import json
import sys

import jax
import numpy as np


def data():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(8, 6)).astype(np.float32) * 0.3
  x1, x2 = rng.normal(size=(32, 8)).astype(np.float32), rng.normal(size=(32, 8)).astype(np.float32)
  return w, x1, x2


def loss_fns():
  from big_transfer.methods import losses

  return {
    "nt_xent": lambda w, a, b: losses.nt_xent(a @ w, b @ w, 0.1)[0],
    "clip": lambda w, a, b: losses.clip_softmax(a @ w, b @ w, 14.3)[0],
    "siglip": lambda w, a, b: losses.siglip_sigmoid(a @ w, b @ w, 10.0, -10.0)[0],
  }


def main():
  out = sys.argv[1]
  flags = dict(a.lstrip("-").split("=", 1) for a in sys.argv[2:])
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    flags["coordinator_address"], int(flags["num_processes"]), int(flags["process_id"])
  )
  from big_transfer import sharding

  pid, n = jax.process_index(), jax.process_count()
  w, x1, x2 = data()
  mesh = sharding.make_mesh(-1, 1)
  rows = slice(pid * 32 // n, (pid + 1) * 32 // n)  # this process's half of the batch
  a, b = sharding.to_global({"a": x1[rows], "b": x2[rows]}, mesh).values()
  wg = jax.make_array_from_process_local_data(sharding.replicated(mesh), w)
  result = {"devices": len(a.sharding.device_set), "processes": n}
  for name, fn in loss_fns().items():
    f = jax.jit(jax.value_and_grad(fn), out_shardings=sharding.replicated(mesh))
    v, g = f(wg, a, b)
    result[name] = {"loss": float(v), "grad": np.asarray(g).tolist()}
  if pid == 0:
    with open(f"{out}/losses.json", "w") as fh:
      json.dump(result, fh)


if __name__ == "__main__":
  main()
