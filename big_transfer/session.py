"""The transfer engine: one Group per pre-trained checkpoint, one Session per transfer run.

  group = Group(pretrained, devices)          # the checkpoint, loaded once
  s = Session(config, workdir, group=group)   # one run: config resolved, data views, Trainer
  rows = s.protocol.run(s, base_row)          # protocols/: zeroshot, lp, ft, lp_ft, wise_ft

A study's transfer runs come in groups — every run of one (pre-trained arm, downstream set) —
and a Group is what they share: the restored checkpoint, the downstream data opened once (its
labels read once), each base split embedded once per checkpoint (the frozen features every
shots x seeds probe indexes), the text heads, the host weights with the tower loaded, and (in
programs.py, per process) every compiled program. A Session is one run of the group: its config
resolved into the protocol, head and class count it runs with, its own data views (the k-shot
draw, the validation split, a test subsample), and a Trainer — the pre-training side's — whose
shardings, init, eval context and compiled step it uses instead of deriving its own.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import inspect
import io
import json
import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from ml_collections import config_dict

from big_transfer import (
  config_lib,
  methods,
  models,
  optim,
  paths,
  protocols,
  schema,
  sharding,
  transfer,
)
from big_transfer import logging as log_lib
from big_transfer import train as train_lib
from big_transfer import trainer as trainer_lib
from big_transfer.data import fewshot, pipeline, sources
from big_transfer.evaluators import common as evals_lib
from big_transfer.evaluators.classification import gather_masked
from big_transfer.logging import read_metrics
from big_transfer.programs import program
from big_transfer.state import Weights
from big_transfer.transfer import TransferError, bit_hyperrule, put_like
from big_transfer.workdir import Workdir

SECTION = schema.Section(
  "",
  "big_transfer.finetune",  # the transfer entrypoint's keys, read here
  keys=(
    schema.Key("pretrained", "", "a pre-training workdir or checkpoint; '' = from scratch"),
    schema.Key("protocol", "ft", "the protocol plug-in (protocols.PROTOCOLS)"),
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
      "auto (the protocol's: text for CLIP/SLIP in ft, wise_ft and zeroshot; probe for lp_ft, "
      "and wise_ft otherwise; else zero), or zero, text, probe",
    ),
    schema.Key(
      "feature_norm",
      "auto",
      "features as the head sees them: 'auto' L2-normalises "
      "CLIP/SLIP towers' embeddings (what the text head needs) and SimCLR's features "
      "(the authors' wise_ft.py), others raw; 'l2' or 'none' for every method",
    ),
    schema.Key(
      "templates",
      "openai80",
      "prompt templates of CLIP text heads (zeroshot, and "
      "the head ft/wise_ft start from): 'openai80' (OpenAI's 80 ImageNet templates, "
      "the authors'), 'clip7', 'simple', or 'a {};the {}'",
    ),
    schema.Key(
      "class_names",
      "spaces",
      "how text heads say class names: 'spaces' (underscores as spaces: 'aquarium fish') or "
      "'underscores' (kept, as the authors' class lists: 'aquarium_fish')",
    ),
    schema.Key(
      "text_head_order",
      "labels",
      "which class name a text head's column i says: 'labels' (label i's own name) or a file of "
      "class names, one per line, in another code's order (the authors' class-name lists, "
      "against their sorted label ids: their wiring, reproduced on purpose and labelled)",
    ),
    schema.Key(
      "schedule_rule", "", "'bit': BiT-HyperRule (steps, schedule, batch, MixUp, resolution)"
    ),
    schema.Key("mixup_alpha", 0.0, "MixUp's Beta parameter (0: off)"),
    schema.Key(
      "eval_dtype",
      "",
      "evaluation and frozen-feature compute: '' (as dtype), float32, bfloat16, or float16 "
      "(the authors' fp16 autocast); parameters stay float32, cast on use",
    ),
    schema.Key("results_file", "", "also append rows here (the study's results table)"),
    schema.Key(
      "feature_cache",
      "",
      "a directory: frozen features per pre-trained model, shared by linear-probe runs",
    ),
    schema.Key("tags", "", "'k=v;k2=v2': labels copied into every row (study arm names, ...)"),
  ),
)

FEATURE_CACHE_VERSION = 2  # bumped when what a cache entry holds changes


# ----------------------------------------------------------------------------- config values


def parse_shots(shots) -> int | None:
  """``config.shots``: images per class (a positive integer), or None for 'full'."""
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


def protocol_of(config) -> protocols.Protocol:
  try:
    return protocols.get(config.protocol)
  except ValueError as e:
    raise TransferError(str(e)) from None


def check_protocol(config) -> None:
  protocol_of(config)


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


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass
class Opened:
  """A downstream set as a group opens it once: the pool (the training split, or the spec's own
  slice of it), the named validation split (None: carved from the pool), the test split, the
  class names and the pool's labels. No image is read."""

  pool: Any
  val: Any
  test: Any
  class_names: Any
  labels: np.ndarray | None = None

  def pool_labels(self) -> np.ndarray:
    if self.labels is None:
      self.labels = fewshot.labels_of(self.pool)
    return self.labels


def data_key(config) -> tuple:
  """What names a downstream set's opened sources."""
  return (config.data, config.train_split, config.val_split, config.test_split, config.data_dir)


def open_sources(config) -> Opened:
  """The pool, validation and test sources of ``config.data``, opened. The pool is the spec's
  own split and slice when it names one (``tfds:eurosat/rgb:train[:80%]`` with
  ``test_split=train[80%:]``): never the whole split the test slice comes from."""
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
  return Opened(pool, val, test, getattr(pool, "class_names", None))


def transfer_sources(config) -> dict[str, Any]:
  """:func:`open_sources` as a dict (pool, val, test, class_names)."""
  o = open_sources(config)
  return dict(pool=o.pool, val=o.val, test=o.test, class_names=o.class_names)


def views(config, opened: Opened) -> dict[str, Any]:
  """One run's views of an opened set: the k-shot training subset, the validation split (carved
  from the pool with the seed, stratified, unless named), the test split (subsampled to k per
  class with ``test_shots``), the pool for a full-data refit, and the class count. Seeded and
  model-independent: the same images for every pre-trained model."""
  pool, val, test, names = opened.pool, opened.val, opened.test, opened.class_names
  labels = opened.pool_labels()
  seed = config.seed if config.shot_seed is None else config.shot_seed
  if val is not None:
    train_idx = np.arange(len(pool))
  else:
    train_idx, val_idx = fewshot.train_val_split(labels, config.val_fraction, seed)
    val = sources.Subset(pool, val_idx)
  k = parse_shots(config.shots)
  # Full-data runs may retrain on train + val once the hyperparameters are chosen: the pool.
  refit = sources.Subset(pool, np.arange(len(pool))) if k is None and opened.val is None else None
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


def transfer_data(config) -> dict[str, Any]:
  """:func:`views` of a freshly opened set (a run outside a group)."""
  return views(config, open_sources(config))


# ----------------------------------------------------------------------------- resolving a run


def apply_bit_rule(config, num_train: int, image_size: int | None):
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


def resolve(config, pre_method: str | None, pre_model: str | None, data) -> tuple[Any, str]:
  """The run's config (model, BiT-HyperRule, class count filled in) and its head
  initialisation, checked: every user error here, before any weights are loaded. Used by
  Session and by ``study --check`` (which has no checkpoint yet, only the arm's config, and
  no data where it is not there yet: ``data`` then holds the declared sizes)."""
  protocol = protocol_of(config)
  config = with_model(config, pre_model)
  if config.schedule_rule == "bit":
    img = data["train"][0]["image"] if len(data["train"]) else None
    side = min(img.shape[:2]) if hasattr(img, "shape") and len(img.shape) >= 2 else None
    apply_bit_rule(config, len(data["train"]), side)
  elif config.schedule_rule:
    raise TransferError(f"config.schedule_rule={config.schedule_rule!r}: '' or 'bit'")
  config.num_classes = data["num_classes"]
  try:
    config_lib.validate(config, extra=sections())
  except config_lib.ConfigError as e:
    raise TransferError(str(e)) from None
  text_tower = methods.has_text_tower(pre_method)
  if protocol.needs_text_tower and not text_tower:
    raise TransferError(
      f"config.protocol={config.protocol} needs a CLIP/SLIP pre-trained run "
      f"(got {pre_method or 'none'})"
    )
  head = protocol.auto_head(text_tower) if config.head_init == "auto" else config.head_init
  if head == "text" and not text_tower:
    raise TransferError("config.head_init=text needs a CLIP/SLIP pre-trained run")
  if head not in ("zero", "text", "probe"):
    raise TransferError(f"config.head_init={config.head_init!r}: auto, zero, text or probe")
  if head == "text" and not data["class_names"]:
    raise sources.DataError(f"{config.data}: no class names for a text-initialised head")
  if config.eval_dtype not in ("", *transfer.COMPUTE_DTYPES):
    raise TransferError(
      f"config.eval_dtype={config.eval_dtype!r}: '' or one of {', '.join(transfer.COMPUTE_DTYPES)}"
    )
  if config.class_names not in ("spaces", "underscores"):
    raise TransferError(f"config.class_names={config.class_names!r}: spaces or underscores")
  try:
    transfer.normalizes_features(config.feature_norm, pre_method)
  except ValueError as e:
    raise TransferError(str(e)) from None
  protocol.check(config)
  return config, head


def head_names(config, data) -> list[str]:
  """The class names a text head's columns say, in column order: the labels' own, or
  ``text_head_order``'s file (another code's order, one name per line)."""
  if config.text_head_order == "labels":
    return list(data["class_names"])
  try:
    names = [l.strip() for l in paths.read_text(config.text_head_order).splitlines() if l.strip()]
  except OSError as e:
    raise TransferError(f"config.text_head_order={config.text_head_order!r}: {e}") from None
  if len(names) != data["num_classes"]:
    raise TransferError(
      f"config.text_head_order={config.text_head_order!r}: {len(names)} names for "
      f"{data['num_classes']} classes"
    )
  return names


def sections() -> list:
  """The transfer config's sections beyond the base config's: the transfer run's own keys
  (:data:`SECTION`) and every protocol's."""
  return [SECTION, *protocols.sections()]


# ----------------------------------------------------------------------------- the group


class Group:
  """What every transfer run of one pre-trained checkpoint shares (see the module docstring):
  built lazily, kept for the group's life. ``pretrained``: the checkpoint ('' from scratch)."""

  def __init__(self, pretrained: str = "", devices=None):
    self.pretrained, self.devices = pretrained, devices
    self._opened: dict[tuple, Opened] = {}
    self._features: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    self._text_heads: dict[tuple, tuple] = {}
    self._weights: dict[tuple, Weights] = {}
    self._meshes: dict[tuple, Any] = {}

  @functools.cached_property
  def pre(self) -> transfer.Pretrained | None:
    return transfer.load_pretrained(self.pretrained) if self.pretrained else None

  def opened(self, config) -> Opened:
    key = data_key(config)
    if key not in self._opened:
      self._opened[key] = open_sources(config)
    return self._opened[key]

  def mesh(self, config):
    key = (config.mesh.data, config.mesh.fsdp)
    if key not in self._meshes:
      self._meshes[key] = sharding.make_mesh(*key, devices=self.devices)
    return self._meshes[key]

  def memo(self, table: str, key, build):
    """``build()`` kept in the group's ``table`` under ``key``."""
    store = getattr(self, table)
    if key not in store:
      store[key] = build()
    return store[key]


# ----------------------------------------------------------------------------- the session


class Session:
  """One transfer run: the pre-trained run (its group's), its data views, its resolved config,
  protocol and head, its Trainer, and evaluation of weights on a split. ``group``: the run's
  group (a run outside a study makes its own)."""

  def __init__(self, config, workdir: str, devices=None, group: Group | None = None):
    self.workdir = workdir
    check_protocol(config)
    group = group if group is not None else Group(config.pretrained, devices)
    if group.pretrained != config.pretrained:
      raise ValueError(f"session of {config.pretrained!r} in the group of {group.pretrained!r}")
    self.group, self.pre = group, group.pre
    pre_model = self.pre and self.pre.config.model
    self.data = views(with_model(config, pre_model), group.opened(with_model(config, pre_model)))
    config, self.head_init = resolve(config, self.pre and self.pre.method, pre_model, self.data)
    self.config, self.protocol = config, protocol_of(config)
    self.classifier_spec = transfer.ClassifierSpec.of(config)
    self.method = transfer.TransferMethod(self.classifier_spec, self.pre)
    self.mesh = group.mesh(config)
    self.trainer = trainer_lib.Trainer(
      self.method,
      optimizer=optim.structure(config.optimizer),
      mesh=self.mesh,
      ema_decay=config.ema_decay,
      param_rules=config.param_sharding,
      param_min_size=config.param_sharding_min_size,
    )
    self.graphdef = self.trainer.graphdef
    self.shardings = self.trainer.weight_shardings
    self.abstract = Weights(self.trainer.abstract.params, self.trainer.abstract.model_state)
    self._evaluators: dict[str, Any] = {}
    self._head: Any = ()
    self.log = log_lib.info

  # --------------------------------------------------------------- weights
  def initial_weights(self, head=None) -> Weights:
    """Host Weights: the pre-trained tower loaded, head set (kernel, bias) or zero. Every
    weight of a transferred model but its zero head comes from the checkpoint (a missing one
    is a CheckpointError), so no random initialisation runs; a run from scratch is the model's
    initialisation with the run's seed."""

    def build():
      if self.pre is None:
        state = jax.device_get(self.trainer.init(self.config.seed))
        return Weights(state.params, state.model_state)
      zeros = lambda tree: jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), tree)
      abstract = self.trainer.abstract
      params, rest = zeros(abstract.params), zeros(abstract.model_state)
      return Weights(*transfer.initial_weights(self.method, params, rest))

    key = (self.method.program_key(), trainer_lib.mesh_key(self.mesh), self.config.seed)
    w = self.group.memo("_weights", key, build)
    if head is None:
      return w
    k, b = head
    head = {"kernel": np.asarray(k, np.float32), "bias": np.asarray(b, np.float32)}
    return Weights({**w.params, "head": head}, w.model_state)

  def to_device(self, host: Weights) -> Weights:
    """Host weights -> global arrays with this session's shardings."""
    like = jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
      self.abstract,
      self.shardings,
    )
    return put_like(host, like)

  def frozen_weights(self) -> Weights:
    """Device weights of the pre-trained tower with a zero head (built once, on demand)."""
    if getattr(self, "_frozen", None) is None:
      self._frozen = self.to_device(self.initial_weights())
    return self._frozen

  def start_head(self):
    """The head the run's network starts from, by ``head_init`` (computed once): CLIP's text
    head, a linear probe's (LP-FT's first stage), or None (zero)."""
    if self._head == ():
      self._head = None
      if self.head_init == "text":
        self._head = self.text_head()
      elif self.head_init == "probe":
        solver = self.probe_head_solver()
        kernel, bias, chosen, scores = self.probe(
          solver,
          init=self.adamw_probe_init() if solver == "adamw" else None,
          augmented=self.config.lp.lp_ft_features == "train_pp",
        )
        self._head = (kernel, bias)
        self.log(
          f"probe head ({solver}): {'lr' if solver == 'adamw' else 'l2'} {chosen:g}, "
          f"val {scores[chosen]:.4f}"
        )
    return self._head

  # --------------------------------------------------------------- evaluation
  def eval_batch_size(self) -> int:
    bs = self.config.eval_batch_size or self.config.batch_size
    n = self.mesh.devices.size
    return max(n, bs - bs % n)

  def evaluator(self, split: str):
    """The exact evaluator of Weights on 'val' or 'test' (the registry's classification type,
    on the trainer's eval context: its compiled program shared by every run of the model)."""
    if split not in self._evaluators:
      ctx = self.trainer.eval_context(
        batch_size=self.eval_batch_size(),
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

  # --------------------------------------------------------------- frozen features
  def _cache_key(self, identity: tuple) -> str:
    """The name of a cached feature tensor: everything that changes a feature — the weights
    (pre-trained checkpoint and its checksums, or the seed of a run from scratch), the
    architecture, how the head sees the tower, the base source the rows are read from, the
    evaluation preprocessing and the evaluation dtype. Shots, seeds and test subsampling pick
    rows of it (they are indices into the base, applied after the cache)."""
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
      c.eval_dtype or c.dtype,
    ]
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:20]

  def frozen_features(self, split: str):
    """``features`` of the pre-trained (initial) weights. Each base source (the dataset split a
    view's rows come from) is embedded once per pre-trained model — kept by the group, and on
    disk under ``config.feature_cache`` when set — and every run indexes its own rows of it,
    so every shots/seed/protocol run and test subsample on it shares one entry. Views whose
    rows cannot be named by a base source and indices (label noise, captions) are embedded
    directly."""
    source = self.data[split]
    base, idx = sources.provenance(source, see_through_wrappers=False)  # view[i] = base[idx[i]]
    identity = getattr(base, "identity", None)
    if identity is None:
      return self.features(self.frozen_weights(), split)
    key = self._cache_key(tuple(identity))
    x, y = self.group.memo("_features", key, lambda: self._base_features(key, base))
    return x[idx], y[idx]

  def _base_features(self, key: str, base):
    """(x, y) of a whole base source: from the disk cache when it holds a usable entry (one
    decision for every process), else computed (and stored there)."""
    if not self.config.feature_cache:
      return self.features(self.frozen_weights(), None, source=base)
    path = os.path.join(self.config.feature_cache, f"{key}.npz")
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
      return cached
    x, y = self.features(self.frozen_weights(), None, source=base)
    if jax.process_index() == 0:
      paths.makedirs(self.config.feature_cache)
      buf = io.BytesIO()
      np.savez(buf, x=x, y=y)
      paths.write_bytes(path, buf.getvalue())
    return x, y

  def _feature_program(self):
    """The jitted (weights, batch) -> features, labels, mask and index (replicated): one per
    model and mesh in the process."""
    graphdef, method = self.graphdef, self.method

    def feats(w, batch):
      model = nnx.merge(graphdef, w.params, w.model_state)
      return {
        "x": method.features(model, batch["image"]),
        "y": batch["label"],
        pipeline.MASK: batch[pipeline.MASK],
        pipeline.INDEX: batch[pipeline.INDEX],
      }

    key = self.trainer.eval_context(batch_size=1).program_key
    return program(
      None if key is None else ("features", key),
      lambda: jax.jit(
        feats,
        in_shardings=(self.shardings, sharding.batch_sharding(self.mesh)),
        out_shardings=sharding.replicated(self.mesh),
      ),
    )

  def features(self, weights: Weights, split: str | None, source=None, augmented: bool = False):
    """(features, labels) of a split (or ``source``) as the head sees them (frozen tower), host
    float32. Each process reads its share of every batch; the gathered rows come back in source
    order on every process (by _index), so a probe is the same on any number of hosts.
    ``augmented``: through ``pp_train`` instead, one pass whose randomness is the run's seed
    (the same images on any number of hosts and on a rerun)."""
    with log_lib.timed("features and probes"):
      batches = pipeline.eval_dataset(
        self.data[split] if source is None else source,
        pp=self.config.pp_train if augmented else self.config.pp_eval,
        seed=self.config.seed if augmented else 0,
        batch_size=self.eval_batch_size(),
        keys=("image", "label"),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        threads=self.config.data_threads,
      )
      out = gather_masked(self._feature_program(), weights, batches, self.mesh)
    return out["x"].astype(np.float32), out["y"]

  # --------------------------------------------------------------- probes and heads
  def probe(self, solver: str | None = None, init=None, augmented: bool = False):
    """The linear probe on the pre-trained tower's frozen features by ``solver`` (default
    ``lp.solver``): (kernel, bias, chosen value, {value: val accuracy}). ``init``: the
    (kernel, bias) the AdamW probe starts from (default zero). ``augmented``: its training
    features through ``pp_train`` (one pass, computed once; validation's stay evaluation's)."""
    c = self.config.lp
    solver = solver or c.solver
    if augmented:
      tx, ty = self.features(self.frozen_weights(), "train", augmented=True)
    else:
      tx, ty = self.frozen_features("train")
    vx, vy = self.frozen_features("val")
    n = self.data["num_classes"]
    with log_lib.timed("features and probes"):
      if solver == "closed_form":
        return transfer.ridge_probe(tx, ty, vx, vy, n, c.l2_grid)
      if solver == "sgd":
        return transfer.sgd_probe(
          tx, ty, vx, vy, n, c.l2_grid, steps=c.sgd_steps, lr=c.sgd_lr, seed=self.config.seed
        )
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

  def text_head(self):
    """CLIP/SLIP's zero-shot head on this run's class names and templates (computed once per
    group)."""
    names, templates = head_names(self.config, self.data), self.config.templates
    underscores = self.config.class_names == "underscores"
    return self.group.memo(
      "_text_heads",
      (tuple(names), str(templates), underscores),
      lambda: transfer.text_head(self.pre, names, templates, underscores),
    )

  def adamw_probe_init(self):
    """Where the authors' AdamW probe starts: CLIP/SLIP's zero-shot head (their LP and LP-FT
    load the zero-shot classifier first), else None (zero)."""
    clip = self.pre is not None and methods.has_text_tower(self.pre.method)
    return self.text_head() if clip and self.data["class_names"] else None

  def probe_head_solver(self) -> str:
    """The solver of a probe-initialised head (LP-FT's first stage): lp.lp_ft_solver."""
    return self.config.lp.solver if self.config.lp.lp_ft_solver == "lp" else "adamw"

  # --------------------------------------------------------------- fine-tuning
  def finetune_grid(self, points, head, *, test_every_epoch: bool = False):
    """Every grid point (lr, batch or None, epochs or None) fine-tuned from ``head``: yields
    (point, device weights, info) in the grid's order. Points that share their batch and length
    train as one fused program where ``fuse_grid`` says so (:meth:`_fused`); the rest one by
    one (:meth:`finetune`)."""
    runs = [self._point_run(lr, b, e) for lr, b, e in points]
    fusable = self._fuse() and not test_every_epoch
    i = 0
    while i < len(points):
      j = i + 1
      while fusable and j < len(points) and runs[j]["shape"] == runs[i]["shape"]:
        j += 1
      if j - i > 1 and not any(self._has_own_checkpoints(r["name"]) for r in runs[i:j]):
        for point, (w, info) in zip(points[i:j], self._fused(runs[i:j], head)):
          yield point, w, info
      else:
        for lr, batch, epochs in points[i:j]:
          w, info = self.finetune(
            lr, head, batch_size=batch, epochs=epochs, test_every_epoch=test_every_epoch
          )
          yield (lr, batch, epochs), w, info
      i = j

  def _fuse(self) -> bool:
    """``fuse_grid`` (auto: off on CPU, where bench --what=fuse measured the fused program no
    faster; on on accelerators)."""
    return self._auto(self.config.fuse_grid)

  def _has_own_checkpoints(self, name: str) -> bool:
    """A point an earlier (unfused) start of this run saved checkpoints for: it resumes from
    them, not from step 0 in a fused program."""
    return paths.isdir(Workdir(self.workdir).sub(name).checkpoints)

  def _point_run(self, lr, batch_size, epochs, train=None, name=None) -> dict:
    """How one fine-tuning run trains: its source, batch, steps, optimiser section, name."""
    c = self.config
    source = self.data["train"] if train is None else train
    n_train, n_dev = len(source), self.mesh.devices.size
    full = int(batch_size) if batch_size else c.batch_size
    # Few-shot sets can be smaller than a batch: shrink it (a multiple of the device count),
    # and pad it back to the full batch with masked rows where the model allows (one shape).
    batch = max(n_dev, min(full, n_train - n_train % n_dev or n_dev))
    pad_to = full if self._pads() and full % n_dev == 0 else 0
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
    name = name or (
      f"lr_{lr:g}" + (f"_b{batch_size}" if batch_size else "") + (f"_e{epochs:g}" if epochs else "")
    )
    return {
      "source": source,
      "batch": batch,
      "steps": steps,
      "optimizer": optimizer,
      "name": name,
      "lr": float(lr),
      "pad_to": pad_to,
      "shape": (batch, pad_to, steps, id(source), optim.structure(optimizer)),
    }

  def _pads(self) -> bool:
    """Whether fine-tuning batches are padded to the full batch (``pad_batches``) where the
    backbone takes per-example weights of its batch statistics (``mask``), and no MixUp
    would mix the padding into real rows."""
    cls, _ = models.parse(self.method.model_name)
    takes_mask = "mask" in inspect.signature(cls.__call__).parameters
    return self._auto(self.config.pad_batches) and takes_mask and not self.method.mixup

  def _auto(self, mode: str) -> bool:
    """An 'auto' / 'on' / 'off' switch: 'auto' is on on accelerators, off on CPU."""
    if mode == "auto":
      return self.mesh.devices.flat[0].platform != "cpu"
    return mode == "on"

  def _spec(self, runs: list[dict], head, per_epoch_test: bool) -> train_lib.RunSpec:
    """The RunSpec of one fine-tuning run, or of a fused grid of several sharing source, batch
    and steps (their optimiser sections one per point)."""
    c, r = self.config, runs[0]
    fused = len(runs) > 1

    steps, batch, n_train = r["steps"], r["batch"], len(r["source"])
    checkpoint_every = min(c.checkpoint_every, steps)
    optimizers = [x["optimizer"] for x in runs]
    resolved = {
      "lr": [x["lr"] for x in runs] if fused else r["lr"],
      "batch_size": batch,
      "padded_to": r["pad_to"],
      "total_steps": steps,
      "warmup_steps": r["optimizer"].warmup_steps,
      "num_train_examples": n_train,
      "num_classes": self.data["num_classes"],
      "mesh": dict(self.mesh.shape),
      "process_count": jax.process_count(),
      **({"points": [x["name"] for x in runs]} if fused else {}),
    }
    record = config_lib.to_plain(c)  # config.json: the session's config with this run's values
    record.update(
      batch_size=batch,
      total_steps=steps,
      total_epochs=None,
      total_examples=None,
      optimizer=[config_lib.to_plain(o) for o in optimizers]
      if fused
      else config_lib.to_plain(optimizers[0]),
      checkpoint_every=checkpoint_every,
      eval_data="none",
      evals={},
    )
    per_epoch = max(1, math.ceil(n_train / batch))
    return train_lib.RunSpec(
      method=self.method,
      source=r["source"],
      total_steps=steps,
      batch_size=batch,
      optimizer=optimizers if fused else optimizers[0],
      mesh=self.mesh,
      num_classes=self.data["num_classes"],
      **{**train_lib.run_settings(c), "checkpoint_every": checkpoint_every},
      initial_weights=self.to_device(self.initial_weights(head)),
      graphdef=self.graphdef,
      # A transfer run's fine-tuning runs evaluate after training, not during (except the
      # authors' per-epoch test accuracy).
      evaluators=((lambda _: [(self.evaluator("test"), per_epoch)]) if per_epoch_test else None),
      record={"config": record, "resolved": resolved},
      points=tuple(x["name"] for x in runs) if fused else (),
      pad_to=r["pad_to"],
    )

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
    r = self._point_run(lr, batch_size, epochs, train, name)
    workdir = os.path.join(self.workdir, r["name"])
    spec = self._spec([r], head, test_every_epoch)
    n_train = len(r["source"])
    self.log(
      f"fine-tuning {r['name']}: {r['steps']} steps of batch {r['batch']} "
      f"({r['steps'] * r['batch'] / n_train:.2f} epochs of {n_train}) at lr {lr:g}"
    )
    state = train_lib.fit(spec, workdir)
    info = self._info(r)
    if test_every_epoch:
      by_step = {
        m["step"]: m["test/accuracy"] for m in read_metrics(workdir) if "test/accuracy" in m
      }
      info["test_by_epoch"] = [by_step[k] for k in sorted(by_step)]
    return state.weights(), info

  def _fused(self, runs: list[dict], head) -> list[tuple[Weights, dict]]:
    """Grid points sharing source, batch and steps as one fused, resumable run in
    WORKDIR/<point>+<point>... (one state per point, stacked; each point's metrics in
    WORKDIR/<fused>/<point>/): [(device weights, info)] in the points' order."""
    name = "+".join(r["name"] for r in runs)
    workdir = os.path.join(self.workdir, name)
    spec = self._spec(runs, head, False)
    r = runs[0]
    n_train = len(r["source"])
    self.log(
      f"fine-tuning {len(runs)} grid points as one program ({name}): {r['steps']} steps of "
      f"batch {r['batch']} ({r['steps'] * r['batch'] / n_train:.2f} epochs of {n_train}) at lr "
      + ", ".join(f"{x['lr']:g}" for x in runs)
    )
    stacked = train_lib.fit(spec, workdir).weights()
    p = len(runs)
    unstack = program(
      ("unstack", self.trainer.key, p),
      lambda: jax.jit(
        lambda w: [jax.tree.map(lambda a, i=i: a[i], w) for i in range(p)],
        out_shardings=[self.shardings] * p,
      ),
    )
    return [(w, self._info(x)) for w, x in zip(unstack(stacked), runs)]

  @staticmethod
  def _info(r: dict) -> dict:
    n_train = len(r["source"])
    return {
      "steps": r["steps"],
      "batch_size": r["batch"],
      "epochs": r["steps"] * r["batch"] / n_train,
    }


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
