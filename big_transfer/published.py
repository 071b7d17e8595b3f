"""Published numbers of Entezari et al. (2023), read from the authors' own results log.

``authors_results_log.tsv`` (beside this file) is their ``Hyperparameters_results.csv`` — 947
fine-tuning runs, from rahimentezari/DataDistributionTransferLearning at 6a8c78d. Every number
in the paper's tables is the best test accuracy of one cell (pre-training, downstream set,
protocol, shots) over those runs: their grid (batch 32/64/128, 64 or 128 epochs, lr 3e-6 to
6e-3, wider than the text's {1e-4, 3e-4, 1e-3, 3e-3} x batch 128 x 128 epochs) and their epochs,
selected on test. A :class:`Cell` carries that number with the protocol, learning rate, batch
and epochs of the run it came from and whether the text's grid reaches it, so the report can
set a published number beside ours only where the protocol is the same and label every
difference. Arms of a study name their published counterpart with ``published=<key>``.

Quirks of the log, kept visible here: three LAION-2B full fine-tuning rows say RN50 although
the paper's table gives them as ViT-B/32 (mapped to ``laion_2b_vitb32``, and used only where
no ViT-B/32 row has the cell: Pets, full); 'LAION0m' and
'Scratch' are both training from scratch. The 'zero' column is the zero-shot accuracy of the
pre-trained model with their text head: the same over each arm's learning rates to within 0.1
point (measured before fine-tuning), and at chance for strong models on DTD, Caltech-101,
Pets and both DomainNet sets (0.1-5%, while the same models reach 61-68% on CIFAR-100) —
their class-name lists are not in the order of their sorted label ids there
(:data:`MISWIRED_TEXT_HEADS`), so their FT and LP-FT heads on those sets started from
mismatched text embeddings.
:func:`zero_shot` gives the column as what it is. Cells that look implausible are named in
:data:`QUIRKS`.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import os

LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "authors_results_log.tsv")
SHOTS = ("1", "5", "10", "20", "full", "100", "200")
TEXT_GRID_LRS = (1e-4, 3e-4, 1e-3, 3e-3)  # the grid the paper's text describes

# (loss, arch, upstream) in the log -> published arm key
ARMS = {
  ("CLIP", "RN50", "CC3m"): "cc3m",
  ("CLIP", "RN50", "CC12m"): "cc12m_2.7m",
  ("CLIP", "RN50", "Redcaps2.7m"): "redcaps_2.7m",
  ("CLIP", "RN50", "YFCC2.7m"): "yfcc_2.7m",
  ("CLIP", "RN50", "LAION2.7m"): "laion_2.7m",
  ("CLIP", "RN50", "WIT2.7m"): "wit_2.7m",
  ("CLIP", "RN50", "Shutterstock2.7m"): "shutterstock_2.7m",
  ("CLIP", "RN50", "LAION1m"): "laion_1m",
  ("CLIP", "RN50", "LAION5m"): "laion_5m",
  ("CLIP", "RN50", "LAION7.5m"): "laion_7.5m",
  ("CLIP", "RN50", "LAION9.6m"): "laion_9.6m",
  ("CLIP", "RN50", "LAION15m"): "laion_15m",
  ("CLIP", "RN50", "YFCC_0.5m"): "yfcc_0.5m",
  ("CLIP", "RN50", "YFCC15m"): "yfcc_15m",
  ("CLIP", "RN50", "IN1K-Captions"): "in1k_web_captions",
  ("CLIP", "RN50", "IN_1K_CLIP_captions"): "in1k_template_captions",
  ("CLIP", "RN50", "LAION0m"): "scratch",
  ("CLIP", "RN50", "Scratch"): "scratch",
  ("Supervised", "RN50", "IN1K"): "supervised_in1k",
  ("CLIP", "RN50", "LAION2B"): "laion_2b_vitb32",  # the log's label; the table's ViT-B/32
  ("CLIP", "VITB32", "LAION2B"): "laion_2b_vitb32",
  ("CLIP", "VITB32", "LAION400m"): "laion_400m_vitb32",
  ("CLIP", "VITB32", "OpenAI400m"): "openai_400m_vitb32",
  ("CLIP_LP-FT", "RN50", "CC12m"): "cc12m_2.7m",
  ("CLIP_LP-FT", "RN50", "Redcaps2.7m"): "redcaps_2.7m",
  ("CLIP_LP-FT", "RN50", "Shutterstock2.7m"): "shutterstock_2.7m",
  ("SimCLR_LP-FT", "RN50", "CC12m"): "simclr_cc12m_2.7m",
  ("SimCLR_LP-FT", "RN50", "Redcaps2.7m"): "simclr_redcaps_2.7m",
  ("SimCLR_LP-FT", "RN50", "Shutterstock2.7m"): "simclr_shutterstock_2.7m",
}
DOWNSTREAM = {
  "CIFAR100": "cifar100",
  "DTD": "dtd",
  "CALTECH101": "caltech101",
  "PETS": "pets",
  "REAL": "domainnet_real",
  "CLIPART": "domainnet_clipart",
  "EuroSAT": "eurosat",
  "CassavaLeafDisease": "cassava",
  "CameraTraps": "caltech_camera_traps",
}


# The paper's method figure sets SimCLR's LP-FT beside CLIP's FT (its SimCLR numbers are
# LP-FT); other methods show the figure's main protocol.
METHOD_FIGURE_PROTOCOL = {"simclr": "lp_ft"}
METHOD_TITLES = {"supervised": "Supervised", "simclr": "SimCLR", "clip": "CLIP", "slip": "SLIP"}


# Sets where their text heads were wired to the wrong classes (their classnames.py order is not
# their sorted label order): the log's zero-shot column at chance for every strong model.
MISWIRED_TEXT_HEADS = ("dtd", "caltech101", "pets", "domainnet_real", "domainnet_clipart")

# Published cells that look implausible, with why ((arm prefix, downstream, protocol, shots)).
QUIRKS = {
  ("simclr_", "dtd", "lp_ft", "1"): "62-67% at 1 shot (5-shot cells of the same arms are lower)",
  ("simclr_", "domainnet_clipart", "lp_ft", "1"): "the same value at all three learning rates",
}


def quirk(arm: str | None, downstream: str, protocol: str, shots) -> str | None:
  """Why a published cell looks implausible (None: nothing known)."""
  for (prefix, ds, p, k), why in QUIRKS.items():
    if (arm or "").startswith(prefix) and ds == downstream and p == protocol and k == str(shots):
      return why
  return None


@functools.cache
def zero_shot_column() -> dict[tuple, float]:
  """(arm, downstream) -> the log's 'zero' column: the zero-shot accuracy (%) of their
  pre-trained model with their text head, before fine-tuning (one value per arm and set)."""
  out: dict[tuple, float] = {}
  with open(LOG, newline="") as f:
    for r in csv.DictReader(f, delimiter="\t"):
      arm, ds = ARMS.get((r["loss"], r["arch"], r["us"])), DOWNSTREAM.get(r["ds"])
      if arm and ds and r.get("zero", "").strip():
        out.setdefault((arm, ds), float(r["zero"]))
  return out


def zero_shot(arm: str | None, downstream: str) -> float | None:
  return zero_shot_column().get((arm, downstream)) if arm else None


def method_title(method: str | None) -> str:
  return METHOD_TITLES.get(method or "", method or "?")


def _protocol(loss: str) -> str:
  return "lp_ft" if loss.endswith("_LP-FT") else "ft"


@dataclasses.dataclass(frozen=True)
class Run:
  """One fine-tuning run of the log: its hyperparameters and test accuracy per shots."""

  arm: str
  downstream: str
  protocol: str
  lr: float
  batch_size: int
  epochs: int
  accuracy: dict  # shots -> %
  relabelled: bool = False  # the log's arch label differs from the paper's (see above)

  @property
  def in_text_grid(self) -> bool:
    return self.lr in TEXT_GRID_LRS and self.batch_size == 128 and self.epochs == 128


@dataclasses.dataclass(frozen=True)
class Cell:
  """A published number: the best test accuracy (%) over the runs of one cell, and the run
  that reached it."""

  accuracy: float
  protocol: str
  lr: float
  batch_size: int
  epochs: int
  in_text_grid: bool  # the text's grid reaches this number (else only their wider grid does)
  runs: int  # runs of the log in this cell

  def label(self) -> str:
    grid = "" if self.in_text_grid else ", outside the text's grid"
    return (
      f"{self.protocol}, lr {self.lr:g} b{self.batch_size} {self.epochs}ep{grid}; "
      f"best test over grid and epochs"
    )


@functools.cache
def runs() -> tuple[Run, ...]:
  out = []
  with open(LOG, newline="") as f:
    for r in csv.DictReader(f, delimiter="\t"):
      arm = ARMS.get((r["loss"], r["arch"], r["us"]))
      ds = DOWNSTREAM.get(r["ds"])
      if arm is None or ds is None:
        raise ValueError(
          f"{LOG}: row {r['']}: unmapped {r['loss']}/{r['arch']}/{r['us']} on {r['ds']}"
        )
      acc = {s: float(r[s]) for s in SHOTS if r[s].strip()}
      out.append(
        Run(
          arm,
          ds,
          _protocol(r["loss"]),
          float(r["ds_lr"]),
          int(r["ds_bs"]),
          int(r["ds_epochs"]),
          acc,
          relabelled=arm.endswith("_vitb32") and r["arch"] != "VITB32",
        )
      )
  return tuple(out)


@functools.cache
def cells() -> dict[tuple, Cell]:
  """(arm, downstream, protocol, shots) -> Cell."""
  by: dict[tuple, list[Run]] = {}
  for run in runs():
    for shots in run.accuracy:
      by.setdefault((run.arm, run.downstream, run.protocol, shots), []).append(run)
  out = {}
  for key, rs in by.items():
    shots = key[3]
    rs = [r for r in rs if not r.relabelled] or rs
    best = max(rs, key=lambda r: (r.accuracy[shots], r.in_text_grid))
    top = best.accuracy[shots]
    out[key] = Cell(
      top,
      best.protocol,
      best.lr,
      best.batch_size,
      best.epochs,
      any(r.in_text_grid and r.accuracy[shots] == top for r in rs),
      len(rs),
    )
  return out


def lookup(arm: str | None, downstream: str, shots, protocol: str = "ft") -> Cell | None:
  if not arm:
    return None
  return cells().get((arm, downstream, protocol, str(shots)))


def authors_grid(downstream: str, protocol: str = "ft") -> list[tuple[float, int, int]]:
  """Every (lr, batch, epochs) the log ran on ``downstream`` with ``protocol`` for CLIP RN50
  pre-training: the grid their published numbers came from."""
  return sorted(
    {
      (r.lr, r.batch_size, r.epochs)
      for r in runs()
      if r.downstream == downstream
      and r.protocol == protocol
      and not r.arm.endswith("vitb32")
      and r.arm != "scratch"
    }
  )
