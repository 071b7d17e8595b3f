"""A transfer protocol as a plug-in: ``nearest_mean`` — each class's mean frozen feature as its
prototype, an image classified by its nearest prototype (cosine or Euclidean). One file, with
its own config section; registered with one line:

  protocols.register("nearest_mean", "example_plugins.nearest_mean_protocol:Protocol")
"""

import numpy as np

from big_transfer import schema
from big_transfer.protocols import base


def _check(config) -> None:
  if config.nearest_mean.metric not in ("cosine", "euclidean"):
    raise schema.SectionError(
      f"config.nearest_mean.metric={config.nearest_mean.metric!r}: cosine or euclidean"
    )


SECTION = schema.Section(
  "nearest_mean",
  __name__,
  help="the nearest-class-mean protocol",
  keys=(schema.Key("metric", "cosine", "cosine or euclidean distance to the class means"),),
  check=_check,
)


def _predict(means, x, metric):
  if metric == "cosine":
    unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    return np.argmax(unit(x) @ unit(means).T, -1)
  return np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), -1)


class Protocol(base.Protocol):
  name = "nearest_mean"
  sections = (SECTION,)

  def recipe(self, s) -> dict:
    return {"metric": s.config.nearest_mean.metric}

  def run(self, s, base_row: dict) -> list[dict]:
    metric = s.config.nearest_mean.metric
    tx, ty = s.frozen_features("train")
    means = np.stack([tx[ty == c].mean(0) for c in range(s.data["num_classes"])])
    acc = {}
    for split in ("val", "test"):
      x, y = s.frozen_features(split)
      acc[split] = float(np.mean(_predict(means, x, metric) == y))
    return [
      {
        **base_row,
        "hyperparameters": {"metric": metric},
        "val_accuracy": acc["val"],
        "test_accuracy": acc["test"],
        "steps": 0,
      }
    ]
