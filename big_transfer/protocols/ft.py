"""Full fine-tuning over a grid of learning rates (or the authors' grid), chosen on validation;
full-data runs then train once more on train + val (``refit_full``).

The grid's points run through one compiled program (their lr, warm-up and length are runtime
values) and, where they share batch and length, as one fused vmapped program
(``fuse_grid``); either way each point keeps its own resumable directory and grid entry.
"""

from __future__ import annotations

from big_transfer import published, schema
from big_transfer.protocols import base
from big_transfer.transfer import TransferError

FUSE = ("auto", "on", "off")


def _check(config) -> None:
  for key in ("fuse_grid", "pad_batches"):
    if config[key] not in FUSE:
      raise schema.SectionError(f"config.{key}={config[key]!r}: one of {', '.join(FUSE)}")


SECTION = schema.Section(
  "",
  __name__,
  keys=(
    schema.Key("lrs", (1e-4, 3e-4, 1e-3, 3e-3), "fine-tuning's learning-rate grid"),
    schema.Key(
      "paper_grid",
      "",
      "the authors' real grid instead of lrs: a downstream name of "
      "their results log (cifar100, dtd, pets, caltech101, domainnet_real, "
      "domainnet_clipart, eurosat, cassava, caltech_camera_traps): every (lr, batch, "
      "epochs) they ran there, with the test accuracy after every epoch recorded so "
      "the row can show their best-over-epochs, test-selected number beside the "
      "validation-selected one. '' = off",
    ),
    schema.Key(
      "warmup_cap",
      0.0,
      "warm-up (optimizer.warmup_steps, 500 as published) capped "
      "at this fraction of a run (the few-shot runs are shorter than 500 steps). 0 = "
      "uncapped, as the authors ran: their short runs never reach the peak lr",
    ),
    schema.Key(
      "refit_full",
      True,
      "full-data runs: after choosing hyperparameters on the "
      "validation split carved from the training data, train once more on all of it "
      "(train + val) and report that test accuracy",
    ),
    schema.Key(
      "pad_batches",
      "auto",
      "'on': fine-tuning batches padded to batch_size rows with a mask (left out of the loss "
      "and of BatchNorm's statistics) where a few-shot set is smaller — one compiled step per "
      "model for every shot count, each run on exactly its own rows; 'off': such a set trains "
      "at its own batch size (a program per shape, less arithmetic per step); 'auto': on on "
      "accelerators, off on CPU (where the padded rows' arithmetic cost more than the "
      "compilations saved: bench --what=study)",
    ),
    schema.Key(
      "fuse_grid",
      "auto",
      "grid points that share batch and length train as one vmapped program (one state per "
      "point, the same batches): 'on', 'off', or 'auto' (on where bench --what=fuse measured "
      "it faster: accelerators; off on CPU)",
    ),
  ),
  check=_check,
)


def grid_of(paper_grid: str, protocol: str, lrs) -> tuple[list[tuple], str]:
  """The points of a fine-tuning grid, (lr, batch or None, epochs or None) — None: the
  config's — and its description. ``paper_grid`` '': one point per learning rate in ``lrs``.
  Else a downstream set of the authors' log: every (lr, batch, epochs) they ran on it with this
  protocol. Their log has no LP-FT runs on some sets (EuroSAT, Cassava, Camera Traps): LP-FT's
  fine-tuning stage there runs their fine-tuning grid of the same set, and the description
  says so."""
  if not paper_grid:
    return [(float(lr), None, None) for lr in lrs], "config.lrs"
  protocol = "lp_ft" if protocol == "lp_ft" else "ft"
  points = published.authors_grid(paper_grid, protocol)
  desc = f"the authors' log ({paper_grid}, {protocol}, {len(points)} points)"
  if not points and protocol == "lp_ft":
    points = published.authors_grid(paper_grid, "ft")
    desc = (
      f"the authors' log ({paper_grid}, their ft grid: no lp_ft runs there, {len(points)} points)"
    )
  if not points:
    known = sorted({r.downstream for r in published.runs() if r.protocol == "ft"})
    raise TransferError(
      f"config.paper_grid={paper_grid!r}: the authors' log has no "
      f"runs on it (known: {', '.join(known)})"
    )
  return [(lr, b, float(e)) for lr, b, e in points], desc


def grid_points(config) -> tuple[list[tuple], str]:
  """:func:`grid_of` of a config."""
  return grid_of(config.paper_grid, config.protocol, config.lrs)


class Protocol(base.Protocol):
  name = "ft"
  sections = (SECTION,)
  trains = True

  def auto_head(self, text_tower: bool) -> str:
    return "text" if text_tower else "zero"

  def check(self, config) -> None:
    grid_points(config)  # a grid that cannot be built fails here, not after the probe

  def recipe(self, s) -> dict:
    c = s.config
    return {
      "decay": c.optimizer.decay,
      "grad_clip_norm": c.optimizer.grad_clip_norm,
      "warmup_cap": c.warmup_cap,
      # steps: ceil(epochs x n / batch) full batches (theirs: epochs x ceil(n / batch), the
      # last batch of each epoch short)
      "steps_rule": "ceil(epochs*n/batch)",
      **probe_recipe(s),
    }

  def run(self, s, base_row: dict) -> list[dict]:
    result = train_grid(s, s.start_head())
    row = {
      **base_row,
      "hyperparameters": result.hyperparameters,
      "grid": result.grid,
      "val_accuracy": result.best["val_accuracy"],
      "test_accuracy": result.best["test_accuracy"],
      "test_selected_accuracy": result.test_selected,
      "test_selected_by": "best test over the grid" + (" and epochs" if result.by_epoch else ""),
      "steps": result.best["steps"],
    }
    if s.config.refit_full and s.data["refit"] is not None:
      refit(s, row, result)
    return [row]


def probe_recipe(s) -> dict:
  """How a probe-initialised head was made (its solver; AdamW's start), else nothing."""
  if s.head_init != "probe":
    return {}
  solver = s.probe_head_solver()
  # The probe's training features (lp.lp_ft_features), and its last epoch (theirs: the training
  # augmentation, computed once, and the probe epoch best on test — never chosen here).
  out = {"probe_solver": solver, "probe_features": f"{s.config.lp.lp_ft_features}, last epoch"}
  if solver == "adamw":
    out["probe_init"] = "text" if s.adamw_probe_init() is not None else "zero"
  return out


class GridResult:
  """A fine-tuning grid's entries, the validation's choice and its weights (device)."""

  def __init__(self, grid, best, best_weights, hyperparameters, by_epoch, head):
    self.grid, self.best, self.best_weights = grid, best, best_weights
    self.hyperparameters, self.by_epoch, self.head = hyperparameters, by_epoch, head

  @property
  def test_selected(self) -> float:
    """The best test accuracy over the grid (and its epochs): what the paper's numbers are."""
    return max(max(g.get("test_by_epoch") or [g["test_accuracy"]]) for g in self.grid)


def train_grid(s, head) -> GridResult:
  """Every point of the run's grid fine-tuned from ``head`` and scored on val and test; the
  best on validation (ties: the smaller lr) is chosen; only its weights are kept."""
  c = s.config
  points, grid_name = grid_points(c)
  by_epoch = bool(c.paper_grid)  # the authors' selection: best test over epochs too
  grid, best, best_weights = [], None, None
  for i, (point, w, info) in enumerate(s.finetune_grid(points, head, test_every_epoch=by_epoch)):
    lr, _, epochs = point
    g = {
      "lr": float(lr),
      "batch_size": info["batch_size"],
      "epochs": float(epochs) if epochs else round(info["epochs"], 3),
      "val_accuracy": s.accuracy(w, "val"),
      "test_accuracy": s.accuracy(w, "test"),
      "steps": info["steps"],
    }
    if by_epoch:
      g["test_by_epoch"] = info["test_by_epoch"]
    grid.append(g)
    if best is None or (g["val_accuracy"], -g["lr"]) > (best["val_accuracy"], -best["lr"]):
      best, best_weights = g, w  # only the best weights are kept (device memory)
    s.log(
      f"[{i + 1}/{len(points)}] lr {lr:g} batch {info['batch_size']} "
      f"{g['epochs']:g} epochs: val {g['val_accuracy']:.4f}"
    )
  hp = {
    "lr": best["lr"],
    "batch_size": best["batch_size"],
    "epochs": best["epochs"],
    "optimizer": c.optimizer.name,
    "weight_decay": c.optimizer.weight_decay,
    "schedule": c.optimizer.schedule,
    "schedule_rule": c.schedule_rule or "config",
    "mixup_alpha": c.mixup_alpha,
    "warmup_cap": c.warmup_cap,
    "grid": grid_name,
  }
  return GridResult(grid, best, best_weights, hp, by_epoch, head)


def refit(s, row: dict, result: GridResult) -> None:
  """Chosen on validation; then trained once more on train + val (all of the pool): the row's
  test accuracy becomes the refit's."""
  best, d = result.best, s.data
  w, info = s.finetune(
    best["lr"],
    result.head,
    batch_size=best["batch_size"],
    epochs=best["epochs"],
    train=d["refit"],
    name="refit",
  )
  row["refit"] = {
    "on": "train+val",
    "num_train": len(d["refit"]),
    "steps": info["steps"],
    "test_accuracy_before": best["test_accuracy"],
  }
  row["test_accuracy"] = s.accuracy(w, "test")
  s.log(
    f"refit on train+val ({len(d['refit'])} examples): test "
    f"{row['test_accuracy']:.4f} (before: {best['test_accuracy']:.4f})"
  )
