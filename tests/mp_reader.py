"""Run by test_multiprocess through launch/local.sh: each JAX process reads its share of a
source through the training pipeline and writes the example ids it saw, and its iterator
state halfway, to OUT/process_<i>.json."""

import json
import sys

import jax
import numpy as np


class Indexed:
  class_names = None

  def __len__(self):
    return 48

  def __getitem__(self, i):
    return {"image": np.zeros((2, 2, 1), np.uint8), "label": i}


def main():
  out = sys.argv[1]
  flags = dict(a.lstrip("-").split("=", 1) for a in sys.argv[2:])
  jax.distributed.initialize(
    flags["coordinator_address"], int(flags["num_processes"]), int(flags["process_id"])
  )
  from big_transfer.data import pipeline

  pid, n = jax.process_index(), jax.process_count()
  it = iter(
    pipeline.train_dataset(
      Indexed(), pp="", batch_size=8, seed=4, keys=("label",), process_index=pid, process_count=n
    )
  )
  ids = [int(x) for _ in range(6) for x in next(it)["label"]]  # one epoch: 6 global batches
  with open(f"{out}/process_{pid}.json", "w") as f:
    json.dump({"ids": ids, "process_count": n}, f)


if __name__ == "__main__":
  main()
