r"""Transfer entrypoint: restore a pre-training checkpoint, run one protocol, append its result rows.

  python -m big_transfer.finetune --config=configs/finetune/default.py:pretrained=/runs/clip,data=tfds:cifar100,protocol=ft,shots=5 \
      --workdir=/runs/clip/ft_cifar100_5shot_s0

Protocols (``config.protocol``; plug-ins under protocols/, one file each):
  ft        full fine-tuning, one run per learning rate in ``config.lrs``, chosen on validation
  lp        linear probe on frozen features: closed-form ridge over an L2 grid (or SGD, or the
            authors' AdamW head), chosen on validation
  lp_ft     the probe, then fine-tuning from it (head initialised by the probe)
  zeroshot  CLIP/SLIP only: the text-initialised head, no training
  wise_ft   fine-tune, then interpolate initial and fine-tuned weights over ``wise_ft.alphas``

Data: ``config.data`` at ``train_split`` is the pool; a stratified ``val_fraction`` of it is held
out for every choice (learning rate, L2, alpha) unless ``val_split`` names a split; ``shots``
(an integer per class, or 'full') are drawn from the rest with ``shot_seed`` (default: ``seed``),
the same images for every pre-trained model. The test split is evaluated once per candidate and
is never used for a choice: rows report the validation-selected run's ``test_accuracy``, and the
best test accuracy over the grid beside it as ``test_selected_accuracy`` (what the paper's numbers
are), labelled as such.

Every invocation appends one row per result to ``WORKDIR/results.jsonl`` (and to
``config.results_file``, the study's table), and writes ``WORKDIR/done.json``: run again with
the same config, it returns the finished rows without recomputing (with another protocol,
shots, seed, data or pre-trained checkpoint it is refused: identity.py, ``--accept_changes``);
stopped midway, finished learning rates are kept and an unfinished one resumes from its
checkpoint. The engine under it (session.py) shares the restored checkpoint, opened data,
frozen features and compiled programs between the runs of a study's group.
"""

from __future__ import annotations

import time
from typing import Any

import jax
from absl import app as absl_app

from big_transfer import app, checkpoint, config_lib, identity, paths, protocols, schema, transfer
from big_transfer import logging as log_lib
from big_transfer.protocols.ft import grid_of, grid_points
from big_transfer.session import (
  SECTION,
  Group,
  Session,
  TransferError,
  check_protocol,
  parse_shots,
  parse_tags,
  resolve,
  transfer_data,
  transfer_sources,
  with_model,
)
from big_transfer.workdir import Workdir

__all__ = [
  "SECTION",
  "Group",
  "Session",
  "TransferError",
  "check_protocol",
  "grid_of",
  "grid_points",
  "parse_shots",
  "parse_tags",
  "resolve",
  "run",
  "transfer_config",
  "transfer_data",
  "transfer_sources",
  "with_model",
]


def sections() -> list[schema.Section]:
  """Every section of the transfer config: the base config's, this entrypoint's, each
  protocol's."""
  return schema.unique(config_lib.sections() + [SECTION, *protocols.sections()])


def transfer_config():
  """Transfer defaults: the recipe that made the published numbers, as the authors' code ran
  it (their finetune.py/wise_ft.py/args.py): AdamW with weight decay 0.1 on every parameter,
  gradient clipping at norm 1.0, cosine with 500 warm-up steps never capped, batch 128, 128
  epochs, lr grid {1e-4, 3e-4, 1e-3, 3e-3} (``paper_grid``: their real grid), 224px bicubic,
  timm 0.4.12's RandAugment rand-m9-mstd0.5-inc1 (each op with probability 0.5), random
  erasing 0.25; CLIP heads from OpenAI's 80 ImageNet templates,
  SimCLR features L2-normalised before a zero head, LP-FT's probe an AdamW head (128 epochs,
  lr 3e-3). The text's description differs in a few places, each one config value away:
  ``optimizer.decay=kernels``, ``optimizer.grad_clip_norm=0``, ``warmup_cap=0.2``,
  ``templates=clip7``, ``feature_norm=none``, ``lp.lp_ft_solver=lp``; the text's colour
  jitter 0.4, which timm 0.4.12 does not apply under RandAugment, is ``color_jitter(0.4, 0.4,
  0.4, 0.0)`` added to ``pp_train``."""
  c = schema.build(sections())
  c.method = "supervised"  # the transfer loss is supervised cross-entropy
  c.model = ""  # '' = the pre-trained run's model
  c.eval_data = "none"
  c.batch_size = 128
  c.total_epochs = 128.0
  c.optimizer.update(
    name="adamw",
    lr=1e-3,
    weight_decay=0.1,
    b1=0.9,
    b2=0.999,
    schedule="cosine",
    warmup_steps=500,
    grad_clip_norm=1.0,
    decay="all",
  )
  # timm 0.4.12's create_transform as the authors called it: with RandAugment on, the colour
  # jitter they set (0.4) is not applied.
  c.pp_train = (
    "decode|inception_crop(224, method='bicubic')|flip_lr|randaugment(2, 9, 0.5)"
    "|normalize('imagenet')|random_erasing(0.25)"
  )
  c.pp_eval = "decode|resize_small(256, method='bicubic')|central_crop(224)|normalize('imagenet')"
  c.checkpoint_every = 1000
  c.log_every = 50
  c.keep_checkpoints = 1
  return c


def declared_defaults() -> dict[str, Any]:
  """{dotted key: default} of the transfer config (identity.py: keys added since a run froze)."""
  return config_lib.dotted(config_lib.to_plain(transfer_config()))


# ----------------------------------------------------------------------------- rows


def recipe_of(s: Session) -> dict[str, Any]:
  """How a run's numbers were made where the authors' recipe and the text's differ (the report
  names every value that is not theirs): what every row records, then the protocol's own."""
  c = s.config
  out = {
    "feature_norm": "l2" if s.method.normalize else "none",
    "normalize": "clip"
    if "normalize('clip')" in c.pp_eval
    else ("imagenet" if "normalize('imagenet')" in c.pp_eval else "other"),
    "pp_train": c.pp_train,
    "dtype": c.dtype,  # training compute
    "eval_dtype": c.eval_dtype or c.dtype,  # evaluation and frozen-feature compute
    "resize": resize_recipe(c.pp_eval),
  }
  if s.head_init == "text":
    out["templates"] = c.templates
    out["class_names"] = c.class_names
    out["text_head_order"] = c.text_head_order
  return {**out, **s.protocol.recipe(s)}


def resize_recipe(pp: str) -> str:
  """How an evaluation chain resizes, in the words the report compares with the authors'."""
  method = "bicubic" if "bicubic" in pp else "bilinear"
  if "antialias=False" in pp.replace(" ", ""):
    return f"{method} without antialiasing (OpenCV)"
  return f"PIL {method}, antialiased"


def pretrain_fields(pre) -> dict[str, Any]:
  """What a row says of the pre-trained run it started from."""
  if pre is None:
    return {
      "pretrain_method": "scratch",
      "pretrain_data": "",
      "pretrain_size": "",
      "pretrain_steps": 0,
      "pretrained": "",
    }
  base, _, query = pre.config.data.partition("?")
  opts = dict(kv.split("=", 1) for kv in query.split("&") if "=" in kv) if query else {}
  return {
    "pretrain_method": pre.method,
    "pretrain_data": base,
    "pretrain_size": opts.get("size", ""),
    "pretrain_options": opts,
    "pretrain_steps": pre.step,
    "pretrained": pre.path,
  }


def base_row(s: Session, workdir: str) -> dict[str, Any]:
  """The fields every row of a run carries: what was transferred, to what, how."""
  c, d = s.config, s.data
  row = {
    "time": transfer.now(),
    **pretrain_fields(s.pre),
    "model": c.model,
    "data": c.data,
    "protocol": c.protocol,
    "shots": "full" if d["shots"] is None else d["shots"],
    "seed": c.seed,
    "shot_seed": d["shot_seed"],
    "num_train": len(d["train"]),
    "num_val": len(d["val"]),
    "num_test": len(d["test"]),
    "head_init": s.head_init,
    "num_classes": d["num_classes"],
    "val_split": c.val_split,
    "recipe": recipe_of(s),
    "selection": "val",
    "tags": parse_tags(c.tags),
    "workdir": paths.resolve(workdir),
  }
  if d["test_subsampled"]:
    row["test_subsampled"] = d["test_subsampled"]  # k test images per class (the authors')
  return row


def run_identity(config, s: Session) -> dict[str, Any]:
  """What a transfer run is (identity.py): its config (protocol, shots, seeds, data, grid...),
  the pre-trained checkpoint it starts from, and the sizes of its data."""
  d = s.data
  return {
    **config_lib.to_plain(config),
    "pretrained_checkpoint": (
      {"step": s.pre.step, "fingerprint": s.pre.fingerprint} if s.pre else None
    ),
    "resolved": {
      "num_train": len(d["train"]),
      "num_val": len(d["val"]),
      "num_test": len(d["test"]),
      "num_classes": d["num_classes"],
    },
  }


# ----------------------------------------------------------------------------- the run


def run(config, workdir: str, devices=None, accept_changes=(), group: Group | None = None):
  """Runs the configured protocol; returns (and appends, exactly once) the result rows. The
  workdir is locked for the run and holds one run: a rerun with another protocol, shots, seed,
  data or pre-trained checkpoint is refused (identity.py) unless accepted (``accept_changes``),
  even when the run has finished. ``group``: what the run shares with the other runs of its
  (pre-trained checkpoint, downstream set) in this process (a study's; default: its own)."""
  for key in ("pretrained", "results_file", "feature_cache"):
    if config[key]:
      paths.check_location(config[key], f"config.{key}")
  if config.pretrained:  # before anything is written: a mistyped run is one line, no workdir
    checkpoint.find_checkpoints(config.pretrained)
  wd = Workdir(workdir)
  lock = wd.lock(log_lib.info).acquire() if jax.process_index() == 0 else None
  try:
    # Everything is checked (config, data, checkpoint) before anything is frozen or written.
    s = Session(config, workdir, devices, group=group)
    accepted = identity.check(
      workdir,
      run_identity(config, s),
      kind="finetune",
      defaults=declared_defaults,
      accept=accept_changes,
      log=log_lib.info,
    )
    if accepted and paths.exists(wd.done):  # the rows of another run: computed anew
      paths.move(wd.done, wd.done + ".before_change")
    rows = wd.transfer_rows()
    if rows is not None:
      log_lib.info(f"already done: {wd.done} ({len(rows)} rows)")
    else:
      rows = _rows(s, wd)
    if jax.process_index() == 0:  # idempotent: also heals a stop between done.json and here
      transfer.append_results(rows, wd.results, config.results_file)
    return rows
  finally:
    if lock is not None:
      log_lib.cleanup(lock.release)


def _rows(s: Session, wd: Workdir) -> list[dict]:
  """The protocol's rows, each with the run's common fields, its wall time and its id; the done
  marker is written (from it the rows reach every results file)."""
  t0 = time.time()
  c, d = s.config, s.data
  log_lib.info(
    f"transfer: {c.protocol} of {c.model} "
    f"({s.pre.method + ' ' + s.pre.path if s.pre else 'from scratch'}) on {c.data}: "
    f"{len(d['train'])} train ({'full' if d['shots'] is None else d['shots']} shots), "
    f"{len(d['val'])} val, {len(d['test'])} test, {d['num_classes']} classes"
  )
  rows = s.protocol.run(s, base_row(s, wd.path))
  wall = time.time() - t0
  run_id = paths.resolve(wd.path)
  for i, r in enumerate(rows):
    r["wall_time_s"] = round(wall, 2)
    r["row_id"] = f"{run_id}#{i}"  # results files hold each row once, whatever reruns happen
  if jax.process_index() == 0:  # the done marker first: the rows are appended from it
    wd.write_transfer_rows(rows)
  for r in rows:
    extra = f" alpha {r['hyperparameters']['alpha']}" if "alpha" in r["hyperparameters"] else ""
    extra += " <- chosen on validation" if r.get("chosen") else ""
    log_lib.info(
      f"result: {r['protocol']}{extra} val {r['val_accuracy']:.4f} test "
      f"{r['test_accuracy']:.4f} ({log_lib.format_duration(wall)})"
    )
  return rows


def entry():
  # The same flags as the pre-training entrypoint (--config, --workdir, multi-process flags).
  app.define_flags("Config file (configs/finetune/...py[:args]).")
  absl_app.run(
    app.main_of(run, (TransferError,), sections=sections), flags_parser=config_lib.flags_parser
  )


if __name__ == "__main__":
  entry()
