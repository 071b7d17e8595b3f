r"""Transfer entrypoint: restore a pre-training checkpoint, run one protocol, append one results row.

  python -m big_transfer.finetune --config=configs/finetune/default.py:pretrained=/runs/clip,data=tfds:cifar100,protocol=ft,shots=5 \
      --workdir=/runs/clip/ft_cifar100_5shot_s0

Protocols (``config.protocol``):
  ft        full fine-tuning, one run per learning rate in ``config.lrs``, chosen on validation
  lp        linear probe on frozen features: closed-form ridge over an L2 grid (or SGD), chosen on
            validation
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
stopped midway, finished learning rates are kept
and an unfinished one resumes from its checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app as absl_app
from flax import nnx
from jax.experimental import multihost_utils
from ml_collections import config_dict

from big_transfer import (
  app,
  config_lib,
  identity,
  methods,
  paths,
  published,
  runlock,
  schema,
  sharding,
  transfer,
)
from big_transfer import logging as log_lib
from big_transfer import train as train_lib
from big_transfer.config_lib import PROTOCOLS
from big_transfer.data import fewshot, pipeline, sources
from big_transfer.evaluators import common as evals_lib
from big_transfer.evaluators.classification import gather_masked
from big_transfer.logging import read_metrics
from big_transfer.state import Weights
from big_transfer.transfer import bit_hyperrule, put_like


class TransferError(ValueError):
  """A transfer config that cannot run; printed as one line."""


SECTION = schema.Section(
  "",
  __name__,
  keys=(
    schema.Key("pretrained", "", "a pre-training workdir or checkpoint; '' = from scratch"),
    schema.Key("protocol", "ft", f"one of {', '.join(PROTOCOLS)}"),
    schema.Key("shots", "full", "training images per class, or 'full'"),
    schema.Key(
      "shot_seed",
      config_dict.placeholder(int),
      "the k-shot draw's seed (default: seed): the same images for every pre-trained model",
    ),
    schema.Key(
      "val_fraction",
      0.1,
      "the stratified share of the pool held out for every "
      "choice (learning rate, L2, alpha) unless val_split names a split",
    ),
    schema.Key("val_split", "", "a named validation split instead of carving one from train"),
    schema.Key("test_split", "test", "evaluated once per candidate, never used for a choice"),
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
      "test_shots",
      False,
      "few-shot runs: subsample the test split to k images per "
      "class, as the authors' code did on DomainNet, Cassava, EuroSAT and Camera Traps "
      "(rows are marked test_subsampled)",
    ),
    schema.Key(
      "head_init",
      "auto",
      "auto: text for CLIP/SLIP (ft, wise_ft), probe for lp_ft, else zero; or zero, text, probe",
    ),
    schema.Key(
      "lp",
      {
        "solver": "closed_form",
        "l2_grid": (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0),
        "sgd_steps": 500,
        "sgd_lr": 0.1,
        "adamw_epochs": 128.0,
        "adamw_lr": 3e-3,
        "lp_ft_solver": "adamw",
      },
      "linear probes on frozen features. solver: 'closed_form' (ridge over l2_grid, "
      "chosen on validation), 'sgd' (softmax regression, one run per l2_grid value) "
      "or 'adamw' (the authors': a softmax head trained by AdamW for adamw_epochs at "
      "adamw_lr, batch_size, weight decay optimizer.weight_decay on weight and bias, "
      "optimizer.warmup_steps of warm-up and cosine, gradient clipping "
      "optimizer.grad_clip_norm). lp_ft_solver: LP-FT's first stage, 'adamw' "
      "(theirs) or 'lp' (lp.solver)",
    ),
    schema.Key(
      "feature_norm",
      "auto",
      "features as the head sees them: 'auto' L2-normalises "
      "CLIP/SLIP towers' embeddings (what the text head needs) and SimCLR's features "
      "(the authors' wise_ft.py), others raw; 'l2' or 'none' for every method",
    ),
    schema.Key(
      "wise_ft",
      {"alphas": (0.0, 0.25, 0.5, 0.75, 1.0)},
      "WiSE-FT's interpolation weights of the fine-tuned model",
    ),
    schema.Key(
      "templates",
      "openai80",
      "prompt templates of CLIP text heads (zeroshot, and "
      "the head ft/wise_ft start from): 'openai80' (OpenAI's 80 ImageNet templates, "
      "the authors'), 'clip7', 'simple', or 'a {};the {}'",
    ),
    schema.Key(
      "schedule_rule", "", "'bit': BiT-HyperRule (steps, schedule, batch, MixUp, resolution)"
    ),
    schema.Key("mixup_alpha", 0.0, "MixUp's Beta parameter (0: off)"),
    schema.Key("results_file", "", "also append rows here (the study's results table)"),
    schema.Key(
      "feature_cache",
      "",
      "a directory: frozen features per pre-trained model, shared by linear-probe runs",
    ),
    schema.Key("tags", "", "'k=v;k2=v2': labels copied into every row (study arm names, ...)"),
  ),
)

FINETUNING = ("ft", "lp_ft", "wise_ft")  # the protocols that train on a grid
LP_SOLVERS = ("closed_form", "sgd", "adamw")


def parse_shots(shots) -> int | None:
  if isinstance(shots, int):
    k = shots
  elif str(shots).strip().lower() == "full":
    return None
  else:
    try:
      k = int(str(shots).strip())
    except ValueError:
      raise TransferError(f"config.shots={shots!r}: an integer per class or 'full'") from None
  if k <= 0:
    raise TransferError(f"config.shots={shots!r}: must be positive")
  return k


def parse_tags(text: str) -> dict[str, str]:
  """'arm=related;source=glyphs' -> {'arm': 'related', 'source': 'glyphs'}."""
  out = {}
  for item in filter(None, (t.strip() for t in str(text).split(";"))):
    k, eq, v = item.partition("=")
    if not eq or not k.strip():
      raise TransferError(f"config.tags={text!r}: expected 'key=value;key=value'")
    out[k.strip()] = v.strip()
  return out


def transfer_sources(config) -> dict[str, Any]:
  """The pool, the named validation split (None: carved from the pool) and the test split,
  opened; no record is read. The pool is the spec's own split and slice when it names one
  (``tfds:eurosat/rgb:train[:80%]`` with ``test_split=train[80%:]``): never the whole split the
  test slice comes from."""
  sources.set_tfds_data_dir(config.data_dir)
  pool = sources.open_source(sources.spec_with_default_split(config.data, config.train_split))
  val = None
  if config.val_split:
    val = sources.open_source(
      sources.spec_at_split(config.data, config.val_split, drop=sources.TRAINING_ONLY_OPTIONS)
    )
  test = sources.open_source(
    sources.spec_at_split(config.data, config.test_split, drop=sources.TRAINING_ONLY_OPTIONS)
  )
  return dict(pool=pool, val=val, test=test, class_names=getattr(pool, "class_names", None))


def transfer_data(config) -> dict[str, Any]:
  """Pool, validation, k-shot training subset and test sources (seeded, model-independent)."""
  opened = transfer_sources(config)
  pool, val, test, names = opened["pool"], opened["val"], opened["test"], opened["class_names"]
  labels = fewshot.labels_of(pool)
  seed = config.seed if config.shot_seed is None else config.shot_seed
  if val is not None:
    train_idx = np.arange(len(pool))
  else:
    train_idx, val_idx = fewshot.train_val_split(labels, config.val_fraction, seed)
    val = sources.Subset(pool, val_idx)
  k = parse_shots(config.shots)
  # Full-data runs may retrain on train + val once the hyperparameters are chosen: the pool.
  refit = (
    sources.Subset(pool, np.arange(len(pool))) if k is None and opened["val"] is None else None
  )
  if k is not None:
    train_idx = train_idx[fewshot.sample_shots(labels[train_idx], k, seed)]
  test_subsampled = None
  if k is not None and config.test_shots:  # as the authors' five sets: k test images per class
    test = sources.Subset(test, fewshot.sample_shots(fewshot.labels_of(test), k, seed + 1))
    test_subsampled = k
  num_classes = config.num_classes or (len(names) if names else int(labels.max()) + 1)
  outside = (labels < 0) | (labels >= num_classes)
  if outside.any():
    raise sources.DataError(
      f"{config.data}: {int(outside.sum())} of {len(labels)} records have a label outside "
      f"[0, {num_classes}) (e.g. {int(labels[outside][0])}); a class the data does not name "
      f"cannot be trained or sampled: fix the data (convert counts such records as bad_label)"
    )
  return dict(
    train=sources.Subset(pool, train_idx),
    val=val,
    test=test,
    class_names=names,
    num_classes=num_classes,
    shots=k,
    shot_seed=seed,
    refit=refit,
    test_subsampled=test_subsampled,
  )


def _apply_bit_rule(config, num_train: int, image_size: int | None):
  r = bit_hyperrule(num_train, image_size)
  config.total_steps, config.total_epochs, config.total_examples = r["total_steps"], None, None
  config.batch_size = r["batch_size"]
  config.mixup_alpha = r["mixup_alpha"]
  config.optimizer.update(**r["optimizer"])
  config.lrs = (r["optimizer"]["lr"],)
  config.pp_train = (
    f"decode|to_rgb|resize({r['resize']})|random_crop({r['crop']})|flip_lr|value_range(-1, 1)"
  )
  config.pp_eval = f"decode|to_rgb|resize({r['crop']})|value_range(-1, 1)"


def check_protocol(config) -> None:
  if config.protocol not in PROTOCOLS:
    raise TransferError(f"config.protocol={config.protocol!r}: not one of {', '.join(PROTOCOLS)}")


def with_model(config, pre_model: str | None):
  """A copy of ``config`` whose ``model`` is set: its own, else the pre-trained run's."""
  config = copy.deepcopy(config)
  config.unlock()
  if not config.model:
    if not pre_model:
      raise TransferError(
        "config.model: empty and no config.pretrained to take it from (a run "
        "from scratch names its architecture)"
      )
    config.model = pre_model
  return config


def resolve(config, pre_method: str | None, pre_model: str | None, data) -> tuple[Any, str]:
  """The run's config (model, BiT-HyperRule, class count filled in) and its head
  initialisation, checked: every user error here, before any weights are loaded. Used by
  Session and by ``study --check`` (which has no checkpoint yet, only the arm's config)."""
  check_protocol(config)
  config = with_model(config, pre_model)
  if config.schedule_rule == "bit":
    img = data["train"][0]["image"]
    side = min(img.shape[:2]) if hasattr(img, "shape") and len(img.shape) >= 2 else None
    _apply_bit_rule(config, len(data["train"]), side)
  elif config.schedule_rule:
    raise TransferError(f"config.schedule_rule={config.schedule_rule!r}: '' or 'bit'")
  config.num_classes = data["num_classes"]
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    raise TransferError(str(e)) from None
  is_clip = methods.has_text_tower(pre_method)
  if config.protocol == "zeroshot" and not is_clip:
    raise TransferError(
      f"config.protocol=zeroshot needs a CLIP/SLIP pre-trained run (got {pre_method or 'none'})"
    )
  head = config.head_init
  if head == "auto":
    head = (
      "text"
      if is_clip and config.protocol in ("ft", "wise_ft", "zeroshot")
      else "probe"
      if config.protocol in ("lp_ft", "wise_ft")
      else "zero"
    )
  if head == "text" and not is_clip:
    raise TransferError("config.head_init=text needs a CLIP/SLIP pre-trained run")
  if head not in ("zero", "text", "probe"):
    raise TransferError(f"config.head_init={config.head_init!r}: auto, zero, text or probe")
  if head == "text" and not data["class_names"]:
    raise sources.DataError(f"{config.data}: no class names for a text-initialised head")
  if config.lp.solver not in LP_SOLVERS:
    raise TransferError(f"config.lp.solver={config.lp.solver!r}: one of {', '.join(LP_SOLVERS)}")
  if config.lp.lp_ft_solver not in ("adamw", "lp"):
    raise TransferError(f"config.lp.lp_ft_solver={config.lp.lp_ft_solver!r}: adamw or lp")
  try:
    transfer.normalizes_features(config.feature_norm, pre_method)
  except ValueError as e:
    raise TransferError(str(e)) from None
  if config.protocol in FINETUNING:
    grid_points(config)  # a grid that cannot be built fails here, not after the probe
  return config, head


class Session:
  """One invocation: the pre-trained run, data, mesh, and evaluation of weights on a split."""

  def __init__(self, config, workdir: str, devices=None):
    self.workdir = workdir
    check_protocol(config)
    self.pre = transfer.load_pretrained(config.pretrained) if config.pretrained else None
    self.data = transfer_data(with_model(config, self.pre and self.pre.config.model))
    config, self.head_init = resolve(
      config, self.pre and self.pre.method, self.pre and self.pre.config.model, self.data
    )
    self.config = config
    self.method = transfer.TransferMethod(config, self.pre, self.data["num_classes"])
    self.mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, devices=devices)
    self.devices = devices
    abstract = nnx.eval_shape(lambda: self.method.create_model(nnx.Rngs(0)))
    self.graphdef, abs_params, abs_rest = nnx.split(abstract, nnx.Param, ...)
    self.abstract = Weights(abs_params.to_pure_dict(), abs_rest.to_pure_dict())
    rules = [tuple(r) for r in config.param_sharding]
    self.shardings = jax.tree.map(
      lambda t: sharding.tree_shardings(t, rules, self.mesh, config.param_sharding_min_size),
      self.abstract,
      is_leaf=lambda x: isinstance(x, dict),
    )
    self._evaluators = {}
    self._features = None

  # --------------------------------------------------------------- weights
  def initial_weights(self, head=None) -> Weights:
    """Host Weights: fresh init, pre-trained tower loaded, head set."""
    opts = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None

    def init(key):
      _, p, r = nnx.split(self.method.create_model(nnx.Rngs(params=key)), nnx.Param, ...)
      return p.to_pure_dict(), r.to_pure_dict()

    params, rest = jax.device_get(
      jax.jit(init, compiler_options=opts)(jax.random.key(self.config.seed))
    )
    params, rest = transfer.initial_weights(self.method, params, rest, head)
    return Weights(params, rest)

  def to_device(self, host: Weights) -> Weights:
    """Host weights -> global arrays with this session's shardings."""
    like = jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
      self.abstract,
      self.shardings,
    )
    return put_like(host, like)

  # --------------------------------------------------------------- evaluation
  def evaluator(self, split: str):
    """The (cached) exact evaluator of Weights on 'val' or 'test': the registry's
    classification type on this session's split."""
    if split not in self._evaluators:
      bs = self.config.eval_batch_size or self.config.batch_size
      ctx = evals_lib.Context(
        predict=self.method.predictions(),
        mesh=self.mesh,
        weight_shardings=self.shardings,
        model_of=lambda w: nnx.merge(self.graphdef, w.params, w.model_state),
        method_name=self.method.name,
        batch_keys=self.method.batch_keys,
        batch_size=max(self.mesh.devices.size, bs - bs % self.mesh.devices.size),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        threads=self.config.data_threads,
        pp_eval=self.config.pp_eval,
      )
      self._evaluators[split] = evals_lib.build(
        split, {"type": "classification"}, ctx, source=self.data[split]
      )
    return self._evaluators[split]

  def accuracy(self, weights: Weights, split: str) -> float:
    """Top-1 accuracy of device ``weights`` on 'val' or 'test'."""
    with log_lib.timed("evaluation"):
      return dict(self.evaluator(split).run(weights))[f"{split}/accuracy"]

  def _cache_key(self, identity: tuple) -> str:
    """The name of a cached feature tensor: everything that changes a feature — the weights
    (pre-trained checkpoint and its checksums, or the seed of a run from scratch), the
    architecture, how the head sees the tower, the base source the rows are read from, the
    evaluation preprocessing and the dtype. Shots, seeds and test subsampling pick rows of it
    (they are indices into the base, applied after the cache)."""
    c, m = self.config, self.method
    weights = (
      [paths.resolve(self.pre.path), self.pre.step, self.pre.fingerprint]
      if self.pre
      else ["scratch", c.seed]
    )
    if identity[0] == "tfds":  # the same name and split under another data_dir is other data
      identity = (*identity, sources.tfds_data_dir())
    parts = [
      FEATURE_CACHE_VERSION,
      weights,
      c.model,
      m.model_kwargs,
      m.projection_dim,
      m.normalize,
      list(identity),
      c.pp_eval,
      c.dtype,
    ]
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:20]

  def frozen_weights(self) -> Weights:
    """Device weights of the pre-trained tower with a zero head (built once, on demand)."""
    if getattr(self, "_frozen", None) is None:
      self._frozen = self.to_device(self.initial_weights())
    return self._frozen

  def frozen_features(self, split: str):
    """``features`` of the pre-trained (initial) weights, through ``config.feature_cache``
    when set: each base source (the dataset split a view's rows come from) is embedded once per
    pre-trained model and every run indexes its own rows of it, so every shots/seed/protocol
    run and test subsample on it shares one entry. Views whose rows cannot be named by a base
    source and indices (label noise, captions) are embedded directly."""
    source = self.data[split]
    base, idx = sources.provenance(source, see_through_wrappers=False)  # view[i] = base[idx[i]]
    identity = getattr(base, "identity", None)
    if not self.config.feature_cache or identity is None:
      return self.features(self.frozen_weights(), split)
    path = os.path.join(self.config.feature_cache, f"{self._cache_key(tuple(identity))}.npz")
    cached = None
    if jax.process_index() == 0 and paths.exists(path):
      cached = _read_cached_features(path, len(base))
    usable = cached is not None
    if jax.process_count() > 1:  # one decision for every process: computing is a collective
      usable = bool(multihost_utils.broadcast_one_to_all(np.int32(usable)))
      if usable and cached is None:
        cached = _read_cached_features(path, len(base))
        if cached is None:
          raise TransferError(
            f"{path}: process {jax.process_index()} cannot read the feature "
            f"cache entry process 0 read"
          )
    if usable:
      x, y = cached
    else:
      x, y = self.features(self.frozen_weights(), split, source=base)
      if jax.process_index() == 0:
        paths.makedirs(self.config.feature_cache)
        buf = io.BytesIO()
        np.savez(buf, x=x, y=y)
        paths.write_bytes(path, buf.getvalue())
    return x[idx], y[idx]

  def features(self, weights: Weights, split: str, source=None):
    """(features, labels) of a split as the head sees them (frozen tower), host float32."""
    if self._features is None:

      def feats(w, batch):
        model = nnx.merge(self.graphdef, w.params, w.model_state)
        return {
          "x": self.method.features(model, batch["image"]),
          "y": batch["label"],
          pipeline.MASK: batch[pipeline.MASK],
          pipeline.INDEX: batch[pipeline.INDEX],
        }

      self._features = jax.jit(
        feats,
        in_shardings=(self.shardings, sharding.batch_sharding(self.mesh)),
        out_shardings=sharding.replicated(self.mesh),
      )
    bs = self.config.eval_batch_size or self.config.batch_size
    bs = max(self.mesh.devices.size, bs - bs % self.mesh.devices.size)
    source = self.data[split] if source is None else source
    # Each process reads its share of every batch; the gathered rows come back in source
    # order on every process (by _index), so a probe is the same on any number of hosts.
    batches = pipeline.eval_dataset(
      source,
      pp=self.config.pp_eval,
      batch_size=bs,
      keys=("image", "label"),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      threads=self.config.data_threads,
    )
    out = gather_masked(self._features, weights, batches, self.mesh)
    return out["x"].astype(np.float32), out["y"]

  # --------------------------------------------------------------- protocols
  def probe(self, solver: str | None = None, init=None):
    """:meth:`_probe`, timed (log_lib: 'features and probes')."""
    with log_lib.timed("features and probes"):
      return self._probe(solver, init)

  def _probe(self, solver: str | None = None, init=None):
    """The linear probe on the pre-trained tower's frozen features by ``solver`` (default
    ``lp.solver``): (kernel, bias, chosen value, {value: val accuracy}). ``init``: the
    (kernel, bias) the AdamW probe starts from (default zero)."""
    c = self.config.lp
    solver = solver or c.solver
    tx, ty = self.frozen_features("train")
    vx, vy = self.frozen_features("val")
    n = self.data["num_classes"]
    if solver == "closed_form":
      return transfer.ridge_probe(tx, ty, vx, vy, n, c.l2_grid)
    if solver == "sgd":
      return transfer.sgd_probe(
        tx, ty, vx, vy, n, c.l2_grid, steps=c.sgd_steps, lr=c.sgd_lr, seed=self.config.seed
      )
    if solver == "adamw":
      o = self.config.optimizer
      return transfer.adamw_probe(
        tx,
        ty,
        vx,
        vy,
        n,
        epochs=c.adamw_epochs,
        lr=c.adamw_lr,
        batch=self.config.batch_size,
        weight_decay=o.weight_decay,
        warmup_steps=o.warmup_steps,
        clip_norm=o.grad_clip_norm,
        seed=self.config.seed,
        init=init,
      )
    raise TransferError(f"config.lp.solver={solver!r}: one of {', '.join(LP_SOLVERS)}")

  def text_head(self):
    """CLIP/SLIP's zero-shot head on this run's class names and templates (computed once)."""
    if getattr(self, "_text_head", None) is None:
      self._text_head = transfer.text_head(
        self.pre, self.data["class_names"], self.config.templates
      )
    return self._text_head

  def adamw_probe_init(self):
    """Where the authors' AdamW probe starts: CLIP/SLIP's zero-shot head (their LP and LP-FT
    load the zero-shot classifier first), else None (zero)."""
    clip = self.pre is not None and methods.has_text_tower(self.pre.method)
    return self.text_head() if clip and self.data["class_names"] else None

  def probe_head_solver(self) -> str:
    """The solver of a probe-initialised head (LP-FT's first stage): lp.lp_ft_solver."""
    return self.config.lp.solver if self.config.lp.lp_ft_solver == "lp" else "adamw"

  def finetune(
    self,
    lr: float,
    head,
    *,
    batch_size: int | None = None,
    epochs: float | None = None,
    train=None,
    name: str | None = None,
    test_every_epoch: bool = False,
  ) -> tuple[Weights, dict]:
    """One fine-tuning run (resumable) at ``lr`` — and ``batch_size`` / ``epochs`` when given,
    else the config's — on ``train`` (default: the k-shot training subset), in
    WORKDIR/``name`` (default ``lr_<lr>[_b<batch>_e<epochs>]``). Returns (device weights,
    {steps, batch_size, epochs, test_by_epoch}); ``test_by_epoch`` (test accuracy after every
    epoch, the authors' selection) only with ``test_every_epoch``. The run is a
    ``train.RunSpec`` of explicit values (the session's config is read, never rewritten); the
    session's identity (run.json of WORKDIR) covers what it derives from."""
    c = self.config
    source = self.data["train"] if train is None else train
    n_train, n_dev = len(source), self.mesh.devices.size
    batch = int(batch_size) if batch_size else c.batch_size
    # Few-shot sets can be smaller than a batch: shrink it (a multiple of the device count).
    batch = max(n_dev, min(batch, n_train - n_train % n_dev or n_dev))
    if epochs:
      steps = config_lib.resolve_steps(
        None, float(epochs), None, batch_size=batch, num_examples=n_train
      )
    else:
      steps = config_lib.resolve_steps(
        c.total_steps, c.total_epochs, c.total_examples, batch_size=batch, num_examples=n_train
      )
    optimizer = ml_collections.ConfigDict(c.optimizer.to_dict())
    optimizer.lr, optimizer.warmup_epochs = float(lr), None
    # The published 500 warm-up steps are most of a few-shot run: capped at warmup_cap of it
    # (0: uncapped, as the authors ran; their short runs never reach the peak lr).
    if c.warmup_cap > 0:
      optimizer.warmup_steps = min(optimizer.warmup_steps, int(steps * c.warmup_cap))
    init = self.initial_weights(head)

    def initialize(state):
      return state.replace(
        params=put_like(init.params, state.params),
        model_state=put_like(init.model_state, state.model_state),
        ema_params=(None if state.ema_params is None else put_like(init.params, state.ema_params)),
      )

    name = name or (
      f"lr_{lr:g}" + (f"_b{batch_size}" if batch_size else "") + (f"_e{epochs:g}" if epochs else "")
    )
    workdir = os.path.join(self.workdir, name)
    per_epoch = max(1, math.ceil(n_train / batch))
    resolved = {
      "lr": float(lr),
      "batch_size": batch,
      "total_steps": steps,
      "warmup_steps": optimizer.warmup_steps,
      "num_train_examples": n_train,
      "num_classes": self.data["num_classes"],
      "mesh": dict(self.mesh.shape),
      "process_count": jax.process_count(),
    }
    checkpoint_every = min(c.checkpoint_every, steps)
    record = config_lib.to_plain(c)  # config.json: the session's config with this run's values
    record.update(
      batch_size=batch,
      total_steps=steps,
      total_epochs=None,
      total_examples=None,
      optimizer=config_lib.to_plain(optimizer),
      checkpoint_every=checkpoint_every,
      eval_data="none",
      evals={},
    )
    spec = train_lib.RunSpec(
      method=self.method,
      source=source,
      total_steps=steps,
      batch_size=batch,
      optimizer=optimizer,
      mesh=self.mesh,
      num_classes=self.data["num_classes"],
      **{**train_lib.run_settings(c), "checkpoint_every": checkpoint_every},
      initialize=initialize,
      graphdef=self.graphdef,
      # A transfer run's fine-tuning runs evaluate after training, not during (except the
      # authors' per-epoch test accuracy).
      evaluators=((lambda _: [(self.evaluator("test"), per_epoch)]) if test_every_epoch else None),
      record={"config": record, "resolved": resolved},
    )
    log_lib.info(
      f"fine-tuning {name}: {steps} steps of batch {batch} "
      f"({steps * batch / n_train:.2f} epochs of {n_train}) at lr {lr:g}"
    )
    state = train_lib.fit(spec, workdir)
    info = {"steps": steps, "batch_size": batch, "epochs": steps * batch / n_train}
    if test_every_epoch:
      by_step = {
        r["step"]: r["test/accuracy"] for r in read_metrics(workdir) if "test/accuracy" in r
      }
      info["test_by_epoch"] = [by_step[k] for k in sorted(by_step)]
    return state.weights(), info


FEATURE_CACHE_VERSION = 2  # bumped when what a cache entry holds changes


def _read_cached_features(path: str, rows: int):
  """(x, y) of a feature cache entry, or None (with a warning) when it cannot be read or does
  not hold one row per example of its source."""
  try:
    with np.load(io.BytesIO(paths.read_bytes(path))) as f:
      x, y = f["x"], f["y"]
  except (OSError, ValueError, KeyError) as e:
    log_lib.info(f"warning: feature cache {path}: unreadable ({e}); recomputing")
    return None
  if x.ndim != 2 or len(x) != rows or y.shape != (rows,):
    log_lib.info(
      f"warning: feature cache {path}: holds {x.shape}/{y.shape} for a source of "
      f"{rows} examples; recomputing"
    )
    return None
  return x, y


def recipe_of(s: Session) -> dict[str, Any]:
  """How a run's numbers were made where the authors' recipe and the text's differ (the report
  names every value that is not theirs)."""
  c = s.config
  out = {
    "feature_norm": "l2" if s.method.normalize else "none",
    "normalize": "clip"
    if "normalize('clip')" in c.pp_eval
    else ("imagenet" if "normalize('imagenet')" in c.pp_eval else "other"),
    "pp_train": c.pp_train,
  }
  if c.protocol in FINETUNING:
    out.update(
      decay=c.optimizer.decay, grad_clip_norm=c.optimizer.grad_clip_norm, warmup_cap=c.warmup_cap
    )
  if s.head_init == "text":
    out["templates"] = c.templates
  solver = (
    s.probe_head_solver() if s.head_init == "probe" else c.lp.solver if c.protocol == "lp" else None
  )
  if s.head_init == "probe":
    out["probe_solver"] = solver
  if solver == "adamw":
    out["probe_init"] = "text" if s.adamw_probe_init() is not None else "zero"
  return out


def grid_points(config) -> tuple[list[tuple[float, int | None, float | None]], str]:
  """The hyperparameter grid of a fine-tuning protocol: (lr, batch or None, epochs or None)
  points (None: the config's) and its description."""
  return grid_of(config.paper_grid, config.protocol, config.lrs)


def grid_of(paper_grid: str, protocol: str, lrs) -> tuple[list[tuple], str]:
  """``paper_grid`` '' : one point per learning rate in ``lrs``. Else a downstream set of the
  authors' log: every (lr, batch, epochs) they ran on it with this protocol. Their log has no
  LP-FT runs on some sets (EuroSAT, Cassava, Camera Traps): LP-FT's fine-tuning stage there
  runs their fine-tuning grid of the same set, and the description says so."""
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


def _pretrain_fields(pre) -> dict[str, Any]:
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


def run(config, workdir: str, devices=None, accept_changes=()) -> list[dict]:
  """Runs the configured protocol; returns (and appends, exactly once) the result rows. The
  workdir is locked for the run and holds one run: a rerun with another protocol, shots, seed,
  data or pre-trained checkpoint is refused (identity.py) unless accepted (``accept_changes``),
  even when the run has finished."""
  done_path = os.path.join(workdir, "done.json")
  lock = runlock.WorkdirLock(workdir, log_lib.info).acquire() if jax.process_index() == 0 else None
  try:
    # Everything is checked (config, data, checkpoint) before anything is frozen or written.
    s = Session(config, workdir, devices)
    accepted = identity.check(
      workdir, run_identity(config, s), kind="finetune", accept=accept_changes, log=log_lib.info
    )
    if accepted:
      if paths.exists(done_path):  # the rows of another run: this one is computed anew
        paths.move(done_path, done_path + ".before_change")
    if paths.exists(done_path):
      rows = paths.read_json(done_path)["rows"]
      log_lib.info(f"already done: {done_path} ({len(rows)} rows)")
    else:
      rows = _run(s, workdir, done_path)
    if jax.process_index() == 0:  # idempotent: also heals a stop between done.json and here
      transfer.append_results(rows, os.path.join(workdir, "results.jsonl"), config.results_file)
    return rows
  finally:
    if lock is not None:
      lock.release()


def _run(s: Session, workdir: str, done_path: str) -> list[dict]:
  t0 = time.time()
  c, d = s.config, s.data
  log_lib.info(
    f"transfer: {c.protocol} of {c.model} "
    f"({s.pre.method + ' ' + s.pre.path if s.pre else 'from scratch'}) on {c.data}: "
    f"{len(d['train'])} train ({'full' if d['shots'] is None else d['shots']} shots), "
    f"{len(d['val'])} val, {len(d['test'])} test, {d['num_classes']} classes"
  )
  base = {
    "time": transfer.now(),
    **_pretrain_fields(s.pre),
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
    base["test_subsampled"] = d["test_subsampled"]  # k test images per class (the authors')

  head = None
  if s.head_init == "text":
    head = s.text_head()
  rows = []
  if c.protocol == "zeroshot":
    w = s.to_device(s.initial_weights(head))
    rows.append(
      {
        **base,
        "hyperparameters": {"templates": c.templates},
        "val_accuracy": s.accuracy(w, "val"),
        "test_accuracy": s.accuracy(w, "test"),
        "steps": 0,
      }
    )
  elif c.protocol == "lp":
    kernel, bias, chosen, scores = s.probe(
      init=s.adamw_probe_init() if c.lp.solver == "adamw" else None
    )
    with log_lib.timed("features and probes"):
      tx, ty = s.frozen_features("test")
    test = float(np.mean(np.argmax(tx @ kernel + bias, -1) == ty))
    what = "lr" if c.lp.solver == "adamw" else "l2"  # the value the probe chose
    rows.append(
      {
        **base,
        "hyperparameters": {"solver": c.lp.solver, what: chosen},
        "grid": [{what: k, "val_accuracy": v} for k, v in scores.items()],
        "val_accuracy": scores[chosen],
        "test_accuracy": test,
        "steps": 0,
      }
    )
  else:  # ft, lp_ft, wise_ft
    if s.head_init == "probe":
      solver = s.probe_head_solver()
      kernel, bias, chosen, scores = s.probe(
        solver, init=s.adamw_probe_init() if solver == "adamw" else None
      )
      head = (kernel, bias)
      log_lib.info(
        f"probe head ({solver}): {'lr' if solver == 'adamw' else 'l2'} {chosen:g}, "
        f"val {scores[chosen]:.4f}"
      )
    points, grid_name = grid_points(c)
    by_epoch = bool(c.paper_grid)  # the authors' selection: best test over epochs too
    grid, best, best_weights = [], None, None
    for i, (lr, batch, epochs) in enumerate(points, 1):
      w, info = s.finetune(lr, head, batch_size=batch, epochs=epochs, test_every_epoch=by_epoch)
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
      log_lib.info(
        f"[{i}/{len(points)}] lr {lr:g} batch {info['batch_size']} "
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
    test_selected = max(max(g.get("test_by_epoch") or [g["test_accuracy"]]) for g in grid)
    if c.protocol != "wise_ft":
      row = {
        **base,
        "hyperparameters": hp,
        "grid": grid,
        "val_accuracy": best["val_accuracy"],
        "test_accuracy": best["test_accuracy"],
        "test_selected_accuracy": test_selected,
        "test_selected_by": "best test over the grid" + (" and epochs" if by_epoch else ""),
        "steps": best["steps"],
      }
      if c.refit_full and d["refit"] is not None:
        # Chosen on validation; then trained once more on train + val (all of the pool).
        w, info = s.finetune(
          best["lr"],
          head,
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
        log_lib.info(
          f"refit on train+val ({len(d['refit'])} examples): test "
          f"{row['test_accuracy']:.4f} (before: {best['test_accuracy']:.4f})"
        )
      rows.append(row)
    else:  # WiSE-FT: theta(alpha) = (1 - alpha) theta_0 + alpha theta_ft, each alpha reported
      init_host = s.initial_weights(head)
      ft = jax.device_get(best_weights)
      for alpha in c.wise_ft.alphas:
        mixed = jax.tree.map(
          lambda a, b, alpha=alpha: (
            (1 - alpha) * np.asarray(a, np.float32) + alpha * np.asarray(b, np.float32)
          ),
          init_host,
          ft,
        )
        w = s.to_device(mixed)
        rows.append(
          {
            **base,
            "hyperparameters": {**hp, "alpha": float(alpha)},
            "grid": grid,
            "val_accuracy": s.accuracy(w, "val"),
            "test_accuracy": s.accuracy(w, "test"),
            "steps": best["steps"],
          }
        )
      chosen = max(rows, key=lambda r: (r["val_accuracy"], r["hyperparameters"]["alpha"]))
      for r in rows:  # the alpha validation chooses (ties: more of the fine-tuned weights)
        r["chosen"] = r is chosen
  wall = time.time() - t0
  run_id = paths.resolve(workdir)
  for i, r in enumerate(rows):
    r["wall_time_s"] = round(wall, 2)
    r["row_id"] = f"{run_id}#{i}"  # results files hold each row once, whatever reruns happen
  if jax.process_index() == 0:  # the done marker first: the rows are appended from it
    paths.makedirs(workdir)
    paths.write_json(done_path, {"rows": rows}, indent=1, default=transfer._json_default)
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
  absl_app.run(app.main_of(run, (TransferError,)), flags_parser=config_lib.flags_parser)


if __name__ == "__main__":
  entry()
