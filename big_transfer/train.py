r"""Pre-training entrypoint: one loop for every method.

  python -m big_transfer.train --config=configs/mini/supervised.py --workdir=/tmp/run \
      [--config.total_steps=200] [--config.data=tfds:cifar10]

Reads top to bottom: config → data (``prepare``) → lock and identity → mesh and method → a
RunSpec of explicit arguments (``spec_of``) → ``fit``: the Trainer (trainer.py: shardings, init,
update step), restore or init, input, hooks (metrics, evaluators, checkpoints), the loop. The
method (supervised, ...) only supplies the model, the loss and its predict functions.
Fine-tuning runs build their own RunSpec and call ``fit`` the same way.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app as absl_app
from clu import parameter_overview
from flax import nnx
from jax.experimental import multihost_utils

from big_transfer import (
  app,
  config_lib,
  identity,
  methods,
  optim,
  paths,
  runlock,
  sharding,
  transfer,
)
from big_transfer import checkpoint as ckpt_lib
from big_transfer import logging as log_lib
from big_transfer import trainer as trainer_lib
from big_transfer.app import UserError
from big_transfer.data import ops, pipeline, sources, tokenizer
from big_transfer.evaluators import common as evals_lib
from big_transfer.state import TrainState
from big_transfer.workdir import Workdir


def prepare(config, workdir: str | None) -> dict[str, Any]:
  """Validates the config and opens the data; raises ConfigError/DataError before compiling.
  ``workdir`` None: a check only (``study --check``): nothing is written and a vocabulary to
  learn is not learnt."""

  config_lib.validate(config)
  sources.set_tfds_data_dir(config.data_dir)
  train_source = sources.open_source(config.data, config.train_split)
  if len(train_source) < config.batch_size:
    raise config_lib.ConfigError(
      f"config.batch_size={config.batch_size} is larger than the {len(train_source)} "
      f"training examples of {config.data}"
    )
  num_classes = config.num_classes
  class_names = getattr(train_source, "class_names", None)
  if num_classes is None and methods.traits(config.method).needs_labels:
    if not class_names:
      raise config_lib.ConfigError(
        f"config.num_classes: {config.data} has no class names; set num_classes"
      )
    num_classes = len(class_names)
  total_steps = config_lib.resolve_steps(
    config.total_steps,
    config.total_epochs,
    config.total_examples,
    batch_size=config.batch_size,
    num_examples=len(train_source),
  )
  warmup = config.optimizer.warmup_steps
  if config.optimizer.warmup_epochs is not None:
    warmup = int(round(config.optimizer.warmup_epochs * len(train_source) / config.batch_size))
  vocab = resolve_tokenizer(config, workdir, train_source)
  for spec in evals_lib.data_specs(config.evals):  # evaluators' data: there, or say so now
    sources.open_source(spec)
  eval_source = None
  if config.eval_data != "none":
    # The training source at the eval split, without training-only options (subset size,
    # label noise, template captions); filters are kept.
    spec = config.eval_data or sources.spec_at_split(
      config.data, config.eval_split, drop=sources.TRAINING_ONLY_OPTIONS
    )
    eval_source = sources.open_source(spec, config.eval_split)
  return dict(
    train_source=train_source,
    eval_source=eval_source,
    num_classes=num_classes,
    class_names=class_names,
    total_steps=total_steps,
    warmup_steps=warmup,
    num_examples=len(train_source),
    vocab=vocab,
  )


def resolve_tokenizer(config, workdir: str, train_source) -> str | None:
  """The run's vocabulary file: ``config.text.tokenizer`` itself, or for 'train:SIZE' a BPE
  learnt from the training captions and kept in the workdir (a resumed run reuses it)."""
  spec = config.text.tokenizer
  if not spec:
    if methods.has_text_tower(config.method):
      raise config_lib.ConfigError(
        f"config.method={config.method} needs a tokenizer: set "
        f"config.text.tokenizer (a merges file or 'train:SIZE')"
      )
    return None
  if not spec.startswith("train:"):
    try:
      path = tokenizer.resolve(spec)
      tokenizer.load(path)
    except (OSError, ValueError) as e:
      raise config_lib.ConfigError(f"config.text.tokenizer: {e}") from None
    return path
  if workdir is None:  # a check: the vocabulary is learnt when the run starts
    return None
  path = Workdir(workdir).tokenizer
  if not paths.exists(path):
    texts = tokenizer.captions_of(train_source, config.text.max_captions)
    if not texts:
      raise config_lib.ConfigError(
        f"config.text.tokenizer={spec}: {config.data} has no captions to learn a vocabulary from"
      )
    t0 = time.perf_counter()
    asked = int(spec[len("train:") :])
    tok = tokenizer.train(texts, asked)
    paths.makedirs(workdir)
    tok.save(path, note=f"learnt from {len(texts)} captions of {config.data}")
    short = (
      f" ({asked} asked: no other pair of symbols occurs twice in these captions)"
      if tok.vocab_size < asked
      else ""
    )
    log_lib.info(
      f"tokenizer: {tok.vocab_size} tokens learnt from {len(texts)} captions in "
      f"{time.perf_counter() - t0:.1f}s -> {path}{short}"
    )
  return path


def init_from_checkpoint(state: TrainState, path: str, skip: str = "") -> TrainState:
  """A fresh train state's params and model_state from another checkpoint of the same model
  (e.g. one made by convert_checkpoint, to continue pre-training), by name; ``skip``: comma-
  separated name prefixes that keep their fresh values (e.g. 'head' for other classes). Every
  other difference is a CheckpointError listing it."""
  saved, _ = ckpt_lib.load_state(path)
  keep = [k.strip() for k in skip.split(",") if k.strip()]
  new = {}
  for part in ("params", "model_state"):
    fresh_part = getattr(state, part)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fresh_part)
    if not jax.tree.leaves(shapes):
      new[part] = fresh_part
      continue
    host, _ = transfer.load_by_name(
      shapes, saved.get(part, {}), keep=keep, what=f"checkpoint {path} ({part})"
    )
    new[part] = jax.tree.map(
      lambda h, fresh: (
        fresh if isinstance(h, jax.ShapeDtypeStruct) else transfer.put_like(h, fresh)
      ),
      host,
      fresh_part,
    )
  if state.ema_params is not None:
    new["ema_params"] = jax.tree.map(lambda x: x.copy(), new["params"])
  return state.replace(**new)


def run_identity(config, data: dict) -> dict[str, Any]:
  """What this run is (identity.py): every config key and what the run resolved from them."""
  return {
    **config_lib.to_plain(config),
    "resolved": {
      "total_steps": data["total_steps"],
      "warmup_steps": data["warmup_steps"],
      "num_classes": data["num_classes"],
      "num_train_examples": data["num_examples"],
    },
  }


def run(config, workdir: str, *, devices=None, accept_changes=()) -> TrainState:
  """Pre-trains to the config's total steps (resuming from ``workdir``); returns the final
  state.

  The workdir is locked for the run (one run per workdir) and holds one run: a restart with
  another config is refused (identity.py) unless the differing keys are neutral or in
  ``accept_changes``. SIGTERM / SIGINT finish the step, save a checkpoint and raise
  runlock.Preempted."""
  # Everything a user can get wrong is checked here, before any array exists.
  data = prepare(config, workdir)
  lock = runlock.WorkdirLock(workdir, log_lib.info).acquire() if jax.process_index() == 0 else None
  try:
    identity.check(
      workdir, run_identity(config, data), kind="train", accept=accept_changes, log=log_lib.info
    )
    return _pretrain(config, workdir, data, devices=devices)
  finally:
    if lock is not None:
      log_lib.cleanup(lock.release)


@dataclasses.dataclass
class RunSpec:
  """Everything one resumable training run in a workdir needs, as explicit arguments:
  pre-training builds it from its config (:func:`spec_of`), each fine-tuning run of a transfer
  protocol from its own values (finetune.Session.finetune); :func:`fit` runs it."""

  method: Any
  source: Any  # the opened training source
  total_steps: int
  batch_size: int
  optimizer: Any  # optim.build's section, warm-up resolved to steps
  pp_train: str
  mesh: Any
  seed: int = 0
  ema_decay: float = 0.0
  normalize_on_device: bool = True
  num_classes: int | None = None  # labels outside [0, n) are skipped and counted
  bind: dict | None = None  # run-level preprocessing arguments (the tokenizer)
  data_threads: int = 8
  data_workers: int = 0
  max_skip_fraction: float = 0.5
  log_every: int = 50
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  keep_every: int | None = None
  tensorboard: bool = False
  param_rules: tuple = trainer_lib.DEFAULT_PARAM_RULES
  param_min_size: int = 2**14
  allow_fresh_start: bool = False
  # A fresh state's weights: ``initial_weights`` (device Weights, the trainer's weight
  # shardings: transfer's pre-trained tower and head), else the random initialisation, then
  # ``init_from`` (a checkpoint, by name) with ``init_skip``.
  initial_weights: Any = None
  init_from: str = ""
  init_skip: str = ""
  # (evaluator, every N steps) pairs built once the trainer exists (they jit on its shardings).
  evaluators: Callable | None = None
  graphdef: Any = None
  record: dict = dataclasses.field(default_factory=dict)  # config.json: config + resolved
  # Batches padded to this many rows with a mask (0: unpadded): a few-shot set smaller than the
  # batch trains at the shape of its model's other runs (transfer: see TransferMethod.loss).
  pad_to: int = 0
  # A fused grid: the points' names (their metrics go to WORKDIR/<name>/); ``optimizer`` is then
  # one section per point, and the returned state holds every point's on a leading axis.
  points: tuple = ()
  name: str = ""  # for the log: model, method, optimiser


def run_settings(config) -> dict[str, Any]:
  """The RunSpec fields every run reads from its config as they are (input, cadence, sharding,
  seed, EMA, fresh-start policy): what pre-training and each fine-tuning run share; each adds
  the values it decides itself (length, batch, optimiser, source, initialisation, record)."""
  return dict(
    pp_train=config.pp_train,
    seed=config.seed,
    ema_decay=config.ema_decay,
    normalize_on_device=config.normalize_on_device,
    data_threads=config.data_threads,
    data_workers=config.data_workers,
    max_skip_fraction=config.max_skip_fraction,
    log_every=config.log_every,
    checkpoint_every=config.checkpoint_every,
    keep_checkpoints=config.keep_checkpoints,
    keep_every=config.keep_every,
    tensorboard=config.tensorboard,
    param_rules=tuple(tuple(r) for r in config.param_sharding),
    param_min_size=config.param_sharding_min_size,
    allow_fresh_start=config.allow_fresh_start,
  )


def spec_of(config, data: dict, mesh, method, tok) -> RunSpec:
  """The RunSpec of a pre-training config (``data``: what :func:`prepare` resolved)."""
  opt_cfg = ml_collections.ConfigDict(config.optimizer.to_dict())
  opt_cfg.warmup_steps = data["warmup_steps"]  # resolved from warmup_epochs when given
  bind = {"vocab": data["vocab"], "max_len": config.text.context_length} if tok else None

  def evaluators(trainer):
    return make_evaluators(
      config,
      data,
      trainer.eval_context(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        threads=config.data_threads,
        bind=bind,
        tokenizer=tok,
        batch_size=config.eval_batch_size or config.batch_size,
        pp_eval=config.pp_eval,
        context_length=config.text.context_length,
      ),
    )

  return RunSpec(
    method=method,
    source=data["train_source"],
    total_steps=data["total_steps"],
    batch_size=config.batch_size,
    optimizer=opt_cfg,
    mesh=mesh,
    num_classes=data["num_classes"],
    bind=bind,
    **run_settings(config),
    init_from=config.get("init_from", ""),
    init_skip=config.get("init_skip", ""),
    evaluators=evaluators,
    graphdef=abstract_model(method, config),
    record={
      "config": config_lib.to_plain(config),
      "resolved": {
        "total_steps": data["total_steps"],
        "num_classes": data["num_classes"],
        "warmup_steps": data["warmup_steps"],
        "num_train_examples": data["num_examples"],
        "mesh": dict(mesh.shape),
        "process_count": jax.process_count(),
      },
    },
  )


def _pretrain(config, workdir: str, data: dict, *, devices) -> TrainState:
  total_steps = data["total_steps"]
  log_lib.info(
    f"data: {config.data} ({data['num_examples']} examples, "
    f"{data['num_classes'] or 'no'} classes); {total_steps} steps of batch "
    f"{config.batch_size} ({total_steps * config.batch_size / data['num_examples']:.2f}"
    f" epochs); workdir {workdir}"
  )
  mesh = make_mesh(config, devices)
  tok = tokenizer.load(data["vocab"]) if data["vocab"] else None
  method = methods.get(
    config.method,
    config,
    {"num_classes": data["num_classes"], "class_names": data["class_names"], "tokenizer": tok},
  )
  return fit(spec_of(config, data, mesh, method, tok), workdir)


def fit(spec: RunSpec, workdir: str) -> TrainState:
  """Runs ``spec`` in ``workdir``: restores its newest good checkpoint (or initialises), writes
  config.json and parameters.txt, trains to ``spec.total_steps`` with metrics, evaluators and
  checkpoints, writes done.json; returns the final state. SIGTERM / SIGINT finish the step,
  save and raise runlock.Preempted. The caller holds the workdir's lock and has checked what
  the workdir holds (identity.py)."""
  total_steps, mesh = spec.total_steps, spec.mesh
  pid, pcount = jax.process_index(), jax.process_count()

  # ---------------------------------------------------------------- the training program
  # The chain's trailing value_range / normalize run inside the step: uint8 leaves the host.
  pp_host, affines = (
    ops.split_device_affine(spec.pp_train) if spec.normalize_on_device else (spec.pp_train, ())
  )
  # A fused grid (``spec.points``): one optimiser section per point, one compiled structure.
  optimizers = list(spec.optimizer) if spec.points else [spec.optimizer]
  structures = {optim.structure(o) for o in optimizers}
  if len(structures) != 1:
    raise ValueError(f"fused grid points differ in their optimiser's structure: {structures}")
  trainer = trainer_lib.Trainer(
    spec.method,
    optimizer=structures.pop(),
    mesh=mesh,
    ema_decay=spec.ema_decay,
    input_affine=affines,
    param_rules=spec.param_rules,
    param_min_size=spec.param_min_size,
    graphdef=spec.graphdef,
    points=len(spec.points),
  )
  # What varies between runs of one program (lr, warm-up, length, seed): runtime values.
  values = [trainer_lib.run_values(o, total_steps, spec.seed) for o in optimizers]
  values = trainer_lib.stack_values(values) if spec.points else values[0]

  # ---------------------------------------------------------------- restore or init
  ckpt = ckpt_lib.Checkpointer(
    workdir, keep=spec.keep_checkpoints, keep_every=spec.keep_every, log_fn=log_lib.info
  )
  start_step, state, loader_info = restore_or_init(ckpt, spec, trainer)
  # The run's records are written once it is known to be this run (identity, restore).
  app.write_record(spec.record, workdir)
  write_parameter_overview(trainer.abstract.params, workdir)
  if start_step < total_steps:
    clear_done(workdir)  # a marker from an earlier end of this workdir no longer holds

  # ---------------------------------------------------------------- input
  # Global batch b is a pure function of b: the loader resumes from the step alone, on any
  # number of processes, devices or data workers.
  skipped = pipeline.SkipCounter(spec.pp_train, spec.max_skip_fraction)  # as written
  train_iter = pipeline.train_dataset(
    spec.source,
    pp=pp_host,
    batch_size=spec.batch_size,
    seed=spec.seed,
    keys=spec.method.batch_keys,
    process_index=pid,
    process_count=pcount,
    threads=spec.data_threads,
    workers=spec.data_workers,
    skipped=skipped,
    bind=spec.bind,
    start_batch=start_step,
    num_classes=spec.num_classes,
  )
  if spec.pad_to:
    train_iter = pipeline.PaddedBatches(train_iter, spec.pad_to // pcount)
  skipped_total = lambda: int(loader_info.get("skipped", 0)) + global_count(skipped.count)

  # ---------------------------------------------------------------- loop
  # A fused grid's points log to their own directories (WORKDIR/<point>/metrics.jsonl).
  writers = [
    log_lib.MetricWriter(
      os.path.join(workdir, name) if name else workdir,
      tensorboard=spec.tensorboard,
      resume_step=start_step,
      config=spec.record.get("config"),
    )
    for name in (spec.points or ("",))
  ]
  writer = writers[0]
  evaluators = spec.evaluators(trainer) if spec.evaluators is not None else []
  if evaluators and spec.points:
    raise ValueError("a fused grid runs no evaluator during training")
  log_hook = trainer_lib.LogMetrics(
    writers,
    every=spec.log_every,
    total_steps=total_steps,
    start_step=start_step,
    batch_size=spec.batch_size,
    skipped=skipped_total,
    ckpt=ckpt,
    pending=loader_info.get("metrics_window"),  # the window the checkpoint was saved in
  )
  hooks = [log_hook]
  hooks += [trainer_lib.Evaluate(ev, every, writer, total_steps) for ev, every in evaluators]
  hooks.append(
    trainer_lib.SaveCheckpoints(
      ckpt,
      spec.checkpoint_every,
      lambda step: {
        "next_batch": step,
        "skipped": skipped_total(),
        "metrics_window": log_hook.window(),
      },
      before_save=lambda: [w.flush() for w in writers],
    )
  )
  stopper = runlock.StopSignals(pcount > 1)
  try:
    state, stopped = trainer.fit(
      state,
      train_iter,
      values,
      start_step=start_step,
      total_steps=total_steps,
      hooks=hooks,
      stop=stopper,
    )
  finally:
    log_lib.cleanup(stopper.restore, train_iter.close, *[w.close for w in writers])
  if stopped is not None:
    raise runlock.Preempted(stopped, stopper.signum, ckpt.directory)
  mark_done(workdir, total_steps)
  log_lib.info(
    f"done: {total_steps} steps; checkpoints in {ckpt.directory}; skipped "
    f"{skipped_total()} corrupt records over the run"
  )
  return state


# ------------------------------------------------------------------ the loop's building blocks


def make_mesh(config, devices=None):
  """The (data, fsdp) mesh of ``config.mesh``; a mesh or batch that does not fit the devices is
  one UserError line."""
  try:
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, devices=devices)
  except ValueError as e:
    raise UserError(f"config.mesh: {str(e).removeprefix('mesh: ')}") from None
  n_dev = mesh.devices.size
  if config.batch_size % n_dev:
    raise UserError(
      f"config.batch_size={config.batch_size} is not divisible by {n_dev} "
      f"devices (mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})"
    )
  log_lib.info(
    f"mesh: data={mesh.shape['data']} fsdp={mesh.shape['fsdp']} over {n_dev} "
    f"{mesh.devices.flat[0].platform} devices, {jax.process_count()} process(es)"
  )
  return mesh


def abstract_model(method, config):
  """The model's graph definition from shapes alone; a model that cannot be built from its
  config is one UserError line."""
  try:
    model = nnx.eval_shape(lambda: method.create_model(nnx.Rngs(0)))
  except (TypeError, ValueError) as e:
    raise UserError(
      f"config.model={config.model!r} with model_kwargs="
      f"{config.model_kwargs.to_dict()}: {str(e).splitlines()[0]}"
    ) from None
  graphdef, params, _ = nnx.split(model, nnx.Param, ...)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  log_lib.info(
    f"model: {config.model} ({n_params / 1e6:.2f}M parameters), method "
    f"{config.method}, {config.optimizer.name} lr {config.optimizer.lr}"
  )
  return graphdef


def write_parameter_overview(params, workdir: str) -> None:
  """``WORKDIR/parameters.txt``: every parameter's name, shape and size (clu's parameter
  overview), written by process 0."""
  if jax.process_index() != 0:
    return
  text = parameter_overview.get_parameter_overview(
    jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params), include_stats=False
  )
  paths.write_text(Workdir(workdir).parameters, text + "\n")


def clear_done(workdir: str) -> None:
  """Removes WORKDIR/done.json (process 0): the run is not finished."""
  if jax.process_index() == 0:
    paths.remove(Workdir(workdir).done)


def restore_or_init(ckpt, spec: RunSpec, trainer) -> tuple[int, TrainState, dict]:
  """(start step, state, the loader's bookkeeping): the newest checkpoint that restores, else
  a fresh state — from ``spec.initial_weights``, else initialised (then ``spec.init_from``
  when given). A run that saved
  checkpoints before (in checkpoints/, moved to checkpoints_corrupt/, or finished: done.json)
  but none of which restores stops (naming each) unless ``spec.allow_fresh_start``; then its
  earlier metrics and corrupt checkpoints are kept aside and the fresh start is said.
  Checkpoints hold ``TrainState.to_dict()`` (the layout of every earlier version)."""
  start_step, saved, loader_info, problems = ckpt.restore_latest(trainer.abstract_state().to_dict())
  state = TrainState.from_dict(saved) if saved is not None else None
  if start_step is not None:
    log_lib.info(f"resumed from {ckpt.directory}/{start_step}")
  else:
    workdir = ckpt.workdir
    earlier = earlier_progress(workdir)
    if (problems or earlier) and not spec.allow_fresh_start:
      what = "; ".join(problems + earlier)
      raise ckpt_lib.CheckpointError(
        f"no checkpoint in {ckpt.directory} restores ({what}); corrupt ones are in "
        f"checkpoints_corrupt/. Not starting again from step 0: set "
        f"config.allow_fresh_start=True for that"
      )
    if problems or earlier:
      kept = set_aside_earlier_run(workdir)
      log_lib.info(
        f"starting again from step 0 (allow_fresh_start): no checkpoint restores "
        f"({'; '.join(problems + earlier)}){kept}"
      )
    elif last := _last_metric_step(workdir):
      log_lib.info(
        f"starting from step 0: no checkpoint was saved before the run stopped "
        f"(metrics.jsonl reaches step {last}; checkpoint_every="
        f"{spec.checkpoint_every})"
      )
    if spec.initial_weights is not None:
      start_step, state = 0, trainer.state_from(spec.initial_weights)
    else:
      start_step, state = 0, trainer.init(spec.seed)
    if spec.init_from:
      state = init_from_checkpoint(state, spec.init_from, spec.init_skip)
      log_lib.info(f"initialised from {spec.init_from}")
  steps = set(np.asarray(jax.device_get(state.step)).reshape(-1).tolist())  # fused: per point
  if steps != {start_step}:
    raise RuntimeError(f"checkpoint step {start_step} holds state at step {sorted(steps)}")
  return start_step, state, loader_info


def _corrupt_steps(workdir: str) -> list[str]:
  d = Workdir(workdir).checkpoints_corrupt
  return sorted((n for n in paths.listdir(d) if n.isdigit()), key=int) if paths.isdir(d) else []


def _last_metric_step(workdir: str) -> int:
  try:
    return max((r.get("step", 0) for r in log_lib.read_metrics(workdir)), default=0)
  except (OSError, ValueError):
    return 0


def earlier_progress(workdir: str) -> list[str]:
  """What says this workdir's run saved checkpoints before (when none restores now)."""
  out = []
  corrupt = _corrupt_steps(workdir)
  if corrupt:
    out.append(f"checkpoints {', '.join(corrupt)} were moved to checkpoints_corrupt/ earlier")
  done = Workdir(workdir).done
  if paths.exists(done):
    try:
      out.append(f"done.json says the run finished at step {paths.read_json(done).get('step')}")
    except (OSError, ValueError):
      out.append("done.json says the run finished")
  return out


def set_aside_earlier_run(workdir: str) -> str:
  """Before a fresh start: the earlier run's metrics and corrupt checkpoints are moved under
  ``*before_fresh_start_<time>`` names (nothing is deleted; its done.json is removed by
  ``_train`` as for any run that starts below its total)."""
  if jax.process_index() != 0:
    return ""
  tag = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
  moved = []
  wd = Workdir(workdir)
  metrics = wd.metrics
  if paths.exists(metrics):
    dst = os.path.join(workdir, f"metrics.before_fresh_start_{tag}.jsonl")
    paths.move(metrics, dst)
    moved.append(os.path.basename(dst))
  corrupt = _corrupt_steps(workdir)
  if corrupt:
    dst = os.path.join(wd.checkpoints_corrupt, f"before_fresh_start_{tag}")
    paths.makedirs(dst)
    for n in corrupt:
      paths.move(os.path.join(wd.checkpoints_corrupt, n), os.path.join(dst, n))
    moved.append(os.path.relpath(dst, workdir))
  return f"; the earlier run's records are kept: {', '.join(moved)}" if moved else ""


def global_count(n: int) -> int:
  """``n`` summed over the processes (a collective when there are several)."""
  if jax.process_count() == 1:
    return int(n)
  return int(np.sum(multihost_utils.process_allgather(np.int64(n))))


def make_evaluators(config, data, ctx: evals_lib.Context) -> list[tuple[Any, int]]:
  """(evaluator, every N steps): the held-out 'eval' of eval_data, then config.evals by type
  (evaluators/common.py)."""
  every = config.eval_every or config.checkpoint_every
  out = []
  if data["eval_source"] is not None and "metrics" in ctx.predict:
    out.append(
      (
        evals_lib.build(
          "eval",
          {"type": "classification", "split": config.eval_split},
          ctx,
          source=data["eval_source"],
        ),
        every,
      )
    )
  return out + evals_lib.from_config(config.evals, ctx, every)


def mark_done(workdir: str, total_steps: int):
  """WORKDIR/done.json: the run finished and its last checkpoint is saved (process 0)."""
  if jax.process_index() != 0:
    return
  Workdir(workdir).write_done_step(total_steps)


def entry():
  app.define_flags()
  absl_app.run(app.main_of(run), flags_parser=config_lib.flags_parser)


if __name__ == "__main__":
  entry()
