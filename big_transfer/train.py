r"""Pre-training entrypoint: one loop for every method.

  python -m big_transfer.train --config=configs/mini/supervised.py --workdir=/tmp/run \
      [--config.total_steps=200] [--config.data=tfds:cifar10]

Reads top to bottom: config → distributed → data → mesh → model and optimiser → shardings and
init → update step → restore → evaluators → loop. The method (supervised, ...) only supplies the
model, the loss and the eval metrics.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app as absl_app
from clu import parameter_overview
from flax import nnx
from jax.experimental import multihost_utils

from big_transfer import app, config_lib, identity, methods, optim, runlock, sharding, transfer
from big_transfer import checkpoint as ckpt_lib
from big_transfer import logging as log_lib
from big_transfer.app import UserError
from big_transfer.data import ops, pipeline, sources, tokenizer
from big_transfer.evaluators import common as evals_lib


def prepare(config, workdir: str | None, train_source=None) -> dict[str, Any]:
  """Validates the config and opens the data; raises ConfigError/DataError before compiling.
  ``train_source``: an already opened source instead of ``config.data`` (transfer runs pass
  their k-shot subsets). ``workdir`` None: a check only (``study --check``): nothing is written
  and a vocabulary to learn is not learnt."""

  config_lib.validate(config)
  sources.set_tfds_data_dir(config.data_dir)
  given = train_source is not None
  if not given:
    train_source = sources.open_source(config.data, config.train_split)
  if len(train_source) < config.batch_size and not given:
    raise config_lib.ConfigError(
        f"config.batch_size={config.batch_size} is larger than the {len(train_source)} "
        f"training examples of {config.data}")
  num_classes = config.num_classes
  class_names = getattr(train_source, "class_names", None)
  if num_classes is None and methods.traits(config.method).needs_labels:
    if not class_names:
      raise config_lib.ConfigError(f"config.num_classes: {config.data} has no class names; "
                                   f"set num_classes")
    num_classes = len(class_names)
  total_steps = config_lib.resolve_steps(
      config.total_steps, config.total_epochs, config.total_examples,
      batch_size=config.batch_size, num_examples=len(train_source))
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
    spec = config.eval_data or sources.spec_at_split(config.data, config.eval_split,
                                                     drop=sources.TRAINING_ONLY_OPTIONS)
    eval_source = sources.open_source(spec, config.eval_split)
  return dict(train_source=train_source, eval_source=eval_source, num_classes=num_classes,
              class_names=class_names, total_steps=total_steps, warmup_steps=warmup,
              num_examples=len(train_source), vocab=vocab)


def resolve_tokenizer(config, workdir: str, train_source) -> str | None:
  """The run's vocabulary file: ``config.text.tokenizer`` itself, or for 'train:SIZE' a BPE
  learnt from the training captions and kept in the workdir (a resumed run reuses it)."""
  spec = config.text.tokenizer
  if not spec:
    if config.method in methods.TEXT_METHODS:
      raise config_lib.ConfigError(f"config.method={config.method} needs a tokenizer: set "
                                   f"config.text.tokenizer (a merges file or 'train:SIZE')")
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
  path = os.path.join(workdir, "tokenizer_bpe.txt")
  if not os.path.exists(path):
    texts = tokenizer.captions_of(train_source, config.text.max_captions)
    if not texts:
      raise config_lib.ConfigError(f"config.text.tokenizer={spec}: {config.data} has no "
                                   f"captions to learn a vocabulary from")
    t0 = time.perf_counter()
    asked = int(spec[len("train:"):])
    tok = tokenizer.train(texts, asked)
    os.makedirs(workdir, exist_ok=True)
    tok.save(path, note=f"learnt from {len(texts)} captions of {config.data}")
    short = (f" ({asked} asked: no other pair of symbols occurs twice in these captions)"
             if tok.vocab_size < asked else "")
    log_lib.info(f"tokenizer: {tok.vocab_size} tokens learnt from {len(texts)} captions in "
                 f"{time.perf_counter() - t0:.1f}s -> {path}{short}")
  return path


def init_from_checkpoint(state, path: str, skip: str = ""):
  """A fresh train state's params and model_state from another checkpoint of the same model
  (e.g. one made by convert_checkpoint, to continue pre-training), by name; ``skip``: comma-
  separated name prefixes that keep their fresh values (e.g. 'head' for other classes). Every
  other difference is a CheckpointError listing it."""
  saved, _ = ckpt_lib.load_state(path)
  keep = [k.strip() for k in skip.split(",") if k.strip()]
  new = dict(state)
  for part in ("params", "model_state"):
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state[part])
    if not jax.tree.leaves(shapes):
      continue
    host, _ = transfer.load_by_name(shapes, saved.get(part, {}), keep=keep,
                                    what=f"checkpoint {path} ({part})")
    new[part] = jax.tree.map(
        lambda h, fresh: fresh if isinstance(h, jax.ShapeDtypeStruct)
        else transfer.put_like(h, fresh), host, state[part])
  if state.get("ema_params") is not None:
    new["ema_params"] = jax.tree.map(lambda x: x.copy(), new["params"])
  return new


def make_init_state(method, tx, ema_decay: float = 0.0):
  """key -> a fresh train state (params, model_state, opt_state, step, nonfinite_step, and
  ema_params when ``ema_decay``), as pure dicts."""

  def init_state(key):
    model = method.create_model(nnx.Rngs(params=key))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = params.to_pure_dict(), rest.to_pure_dict()
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": rest,
             "opt_state": tx.init(params),
             "nonfinite_step": jnp.full((), -1, jnp.int32)}
    if ema_decay:
      state["ema_params"] = params
    return state
  return init_state


def state_shardings(abstract, config, mesh, tx):
  """Shardings of a train state from the config's name rules (parameters and their optimiser
  state alike; scalars replicated)."""
  rules = [tuple(r) for r in config.param_sharding]
  min_size = config.param_sharding_min_size
  param_sh = sharding.tree_shardings(abstract["params"], rules, mesh, min_size)
  repl = sharding.replicated(mesh)
  out = {
      "step": repl, "nonfinite_step": repl,
      "params": param_sh,
      "model_state": sharding.tree_shardings(abstract["model_state"], rules, mesh, min_size),
      "opt_state": optax.tree_map_params(tx, lambda _, s: s, abstract["opt_state"], param_sh,
                                         transform_non_params=lambda _: repl),
  }
  if "ema_params" in abstract:
    out["ema_params"] = param_sh
  return out


def make_train_step(method, graphdef, tx, lr_schedule, *, seed: int, ema_decay: float = 0.0,
                    input_affine=()):
  """(state, batch) -> (state, metrics): one optimiser step of ``method``'s loss, with the
  gradient and parameter norms, a non-finite sentinel and the EMA update. Pure: the loop jits
  it with shardings (and bench times it bare). ``input_affine``: the preprocessing's trailing
  normalisation (``ops.split_device_affine``), applied here so uint8 images cross to the
  device."""
  base_key = jax.random.key(seed)

  def train_step(state, batch):
    batch = ops.apply_affine(batch, input_affine)
    step = state["step"]
    rng = jax.random.fold_in(base_key, step)

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state["model_state"])
      loss, aux = method.loss(model, batch, nnx.Rngs(dropout=rng))
      _, _, new_rest = nnx.split(model, nnx.Param, ...)
      return loss, (aux, new_rest.to_pure_dict())

    (loss, (aux, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm, param_norm = optax.global_norm(grads), optax.global_norm(params)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
    new = {"step": step + 1, "params": params, "model_state": new_rest,
           "opt_state": opt_state,
           "nonfinite_step": jnp.where((state["nonfinite_step"] < 0) & ~finite, step + 1,
                                       state["nonfinite_step"])}
    if ema_decay:
      d = ema_decay
      new["ema_params"] = jax.tree.map(lambda e, p: d * e + (1 - d) * p,
                                       state["ema_params"], params)
    metrics = {"loss": loss, "grad_norm": grad_norm, "param_norm": param_norm,
               "lr": lr_schedule(step), **aux}
    return new, metrics
  return train_step


def run_identity(config, data: dict) -> dict[str, Any]:
  """What this run is (identity.py): every config key and what the run resolved from them."""
  return {**config_lib.to_plain(config),
          "resolved": {"total_steps": data["total_steps"], "warmup_steps": data["warmup_steps"],
                       "num_classes": data["num_classes"],
                       "num_train_examples": data["num_examples"]}}


def run(config, workdir: str, *, devices=None, method=None, train_source=None,
        initialize=None, evaluators=(), accept_changes=()) -> dict[str, Any]:
  """Trains to ``config.total_steps`` (resuming from ``workdir``); returns the final state.

  Transfer runs (finetune.py) reuse this loop with their own ``method`` object, an opened
  ``train_source`` (a k-shot subset), ``initialize(state) -> state``, applied once to a fresh
  state (not to a resumed one) to load pre-trained weights, and more ``evaluators``
  ((evaluator, every N steps) pairs; ``evaluator.run(state)`` yields (name, value)).

  The workdir is locked for the run (one run per workdir) and holds one run: a restart with
  another config is refused (identity.py) unless the differing keys are neutral or in
  ``accept_changes``. SIGTERM / SIGINT finish the step, save a checkpoint and raise
  runlock.Preempted."""
  # Everything a user can get wrong is checked here, before any array exists.
  data = prepare(config, workdir, train_source)
  lock = runlock.WorkdirLock(workdir, log_lib.info).acquire() if jax.process_index() == 0 \
      else None
  try:
    identity.check(workdir, run_identity(config, data), kind="train", accept=accept_changes,
                   log=log_lib.info)
    return _train(config, workdir, data, devices=devices, method=method, initialize=initialize,
                  evaluators=evaluators)
  finally:
    if lock is not None:
      lock.release()


def _train(config, workdir: str, data: dict, *, devices, method, initialize, evaluators):
  total_steps = data["total_steps"]
  log_lib.info(f"data: {config.data} ({data['num_examples']} examples, "
               f"{data['num_classes'] or 'no'} classes); {total_steps} steps of batch "
               f"{config.batch_size} ({total_steps * config.batch_size / data['num_examples']:.2f}"
               f" epochs); workdir {workdir}")

  # ---------------------------------------------------------------- mesh
  mesh = make_mesh(config, devices)
  pid, pcount = jax.process_index(), jax.process_count()

  # ---------------------------------------------------------------- method, model, optimiser
  tok = tokenizer.load(data["vocab"]) if data["vocab"] else None
  # Run-level preprocessing arguments: the tokenizer's file and context length.
  bind = {"vocab": data["vocab"], "max_len": config.text.context_length} if tok else None
  if method is None:
    method = methods.get(config.method, config, {"num_classes": data["num_classes"],
                                                 "class_names": data["class_names"],
                                                 "tokenizer": tok})
  opt_cfg = ml_collections.ConfigDict(config.optimizer.to_dict())
  opt_cfg.warmup_steps = data["warmup_steps"]  # resolved from warmup_epochs when given
  tx, lr_schedule = optim.build(opt_cfg, total_steps)
  graphdef = abstract_model(method, config)
  init_state = make_init_state(method, tx, config.ema_decay)

  # ---------------------------------------------------------------- shardings
  # Shapes first, then shardings from name rules, then (restore or) a jitted init that creates
  # the parameters already sharded: nothing large is materialised on one device.
  abstract = jax.eval_shape(init_state, jax.random.key(0))
  state_sh = state_shardings(abstract, config, mesh, tx)

  # ---------------------------------------------------------------- update step
  # The chain's trailing value_range / normalize run inside the step: uint8 leaves the host.
  pp_host, affines = (ops.split_device_affine(config.pp_train) if config.normalize_on_device
                      else (config.pp_train, ()))
  train_step = jax.jit(make_train_step(method, graphdef, tx, lr_schedule, seed=config.seed,
                                       ema_decay=config.ema_decay, input_affine=affines),
                       in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                       out_shardings=(state_sh, sharding.replicated(mesh)),
                       donate_argnums=(0,))

  # ---------------------------------------------------------------- restore or init
  ckpt = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints,
                               keep_every=config.keep_every, log_fn=log_lib.info)
  start_step, state, loader_info = restore_or_init(
      ckpt, config, ckpt_lib.abstract_like(abstract, state_sh),
      lambda: jax.jit(init_state, out_shardings=state_sh, compiler_options=_init_options(
          mesh))(jax.random.key(config.seed)), initialize)
  # The run's records are written once it is known to be this run (identity, restore).
  app.write_config(config, workdir, {
      "total_steps": total_steps, "num_classes": data["num_classes"],
      "warmup_steps": data["warmup_steps"], "num_train_examples": data["num_examples"],
      "mesh": dict(mesh.shape), "process_count": pcount})
  write_parameter_overview(abstract["params"], workdir)
  if start_step < total_steps:
    clear_done(workdir)  # a marker from an earlier end of this workdir no longer holds

  # ---------------------------------------------------------------- input
  # Global batch b is a pure function of b: the loader resumes from the step alone, on any
  # number of processes, devices or data workers.
  skipped = pipeline.SkipCounter(config.pp_train, config.max_skip_fraction)  # as written
  train_iter = pipeline.train_dataset(
      data["train_source"], pp=pp_host, batch_size=config.batch_size, seed=config.seed,
      keys=method.batch_keys, process_index=pid, process_count=pcount,
      threads=config.data_threads, workers=config.data_workers, skipped=skipped, bind=bind,
      start_batch=start_step, num_classes=data["num_classes"])
  skipped_total = lambda: int(loader_info.get("skipped", 0)) + global_count(skipped.count)

  # ---------------------------------------------------------------- evaluators
  evaluators = list(evaluators) + make_evaluators(
      config, data, evals_lib.Context(
          method=method, mesh=mesh, state_shardings=state_sh, process_index=pid,
          process_count=pcount, threads=config.data_threads, bind=bind, tokenizer=tok,
          batch_size=config.eval_batch_size or config.batch_size, pp_eval=config.pp_eval,
          context_length=config.text.context_length,
          # The model evaluators see: the EMA weights when the run keeps them.
          eval_model=lambda state: nnx.merge(
              graphdef, state["ema_params"] if config.ema_decay else state["params"],
              state["model_state"])))

  # ---------------------------------------------------------------- loop
  writer = log_lib.MetricWriter(workdir, tensorboard=config.tensorboard,
                                resume_step=start_step, config=config_lib.to_plain(config))
  progress = log_lib.Progress(total_steps, start_step, config.batch_size)
  stopper = runlock.StopSignals(pcount > 1)
  pending, stopped, t_compile = [], None, time.perf_counter()
  t_loop, spent = time.perf_counter(), {"first": 0.0, "evaluation": 0.0, "checkpoints": 0.0}
  try:
    for step in range(start_step + 1, total_steps + 1):
      state, metrics = train_step(state, sharding.to_global(next(train_iter), mesh))
      pending.append(metrics)
      if step == start_step + 1:
        jax.block_until_ready(metrics)
        spent["first"] = time.perf_counter() - t_compile
        log_lib.info(f"first step done in {spent['first']:.1f}s (includes compile)")
        progress = log_lib.Progress(total_steps, step, config.batch_size)
      if stopper.stop_now(step) and step < total_steps:
        stopped = step  # a preemption notice: log, save and stop after this step
      last = step == total_steps or stopped is not None
      if step % config.log_every == 0 or last:
        check_finite(state, ckpt)
        ckpt.check()  # a failed background save stops the run now, not at the next save
        log_window(writer, step, total_steps, jax.device_get(pending), progress.update(step),
                   skipped_total())
        pending = []
      for ev, every in evaluators:
        if step % every == 0 or step == total_steps:
          t_ev = time.perf_counter()
          results = dict(ev.run(state))
          spent["evaluation"] += time.perf_counter() - t_ev
          writer.write(step, results)
          log_lib.info(f"step {step} " + " ".join(f"{k} {v:.4f}" for k, v in results.items()))
      if step % config.checkpoint_every == 0 or last:
        check_finite(state, ckpt)  # never save a state that has seen a non-finite value
        t_ck = time.perf_counter()
        ckpt.save(step, state, {"next_batch": step, "skipped": skipped_total()})
        spent["checkpoints"] += time.perf_counter() - t_ck
      if stopped is not None:
        break
  finally:
    stopper.restore()
    train_iter.close()
    t_ck = time.perf_counter()
    try:
      ckpt.close()  # waits for the last asynchronous save
    finally:
      writer.close()
      spent["checkpoints"] += time.perf_counter() - t_ck
      loop = time.perf_counter() - t_loop
      log_lib.add_time("compile", spent["first"])
      log_lib.add_time("evaluation", spent["evaluation"])
      log_lib.add_time("checkpoints", spent["checkpoints"])
      log_lib.add_time("steps", loop - sum(spent.values()))
  if stopped is not None:
    raise runlock.Preempted(stopped, stopper.signum, ckpt.directory)
  mark_done(workdir, total_steps)
  log_lib.info(f"done: {total_steps} steps; checkpoints in {ckpt.directory}; skipped "
               f"{skipped_total()} corrupt records over the run")
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
    raise UserError(f"config.batch_size={config.batch_size} is not divisible by {n_dev} "
                    f"devices (mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})")
  log_lib.info(f"mesh: data={mesh.shape['data']} fsdp={mesh.shape['fsdp']} over {n_dev} "
               f"{mesh.devices.flat[0].platform} devices, {jax.process_count()} process(es)")
  return mesh


def abstract_model(method, config):
  """The model's graph definition from shapes alone; a model that cannot be built from its
  config is one UserError line."""
  try:
    model = nnx.eval_shape(lambda: method.create_model(nnx.Rngs(0)))
  except (TypeError, ValueError) as e:
    raise UserError(f"config.model={config.model!r} with model_kwargs="
                    f"{config.model_kwargs.to_dict()}: {str(e).splitlines()[0]}") from None
  graphdef, params, _ = nnx.split(model, nnx.Param, ...)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  log_lib.info(f"model: {config.model} ({n_params / 1e6:.2f}M parameters), method "
               f"{config.method}, {config.optimizer.name} lr {config.optimizer.lr}")
  return graphdef


def write_parameter_overview(params, workdir: str) -> None:
  """``WORKDIR/parameters.txt``: every parameter's name, shape and size (clu's parameter
  overview), written by process 0."""
  if jax.process_index() != 0:
    return
  text = parameter_overview.get_parameter_overview(
      jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params),
      include_stats=False)
  path = os.path.join(workdir, "parameters.txt")
  with open(path + ".tmp", "w") as f:
    f.write(text + "\n")
  os.replace(path + ".tmp", path)


def clear_done(workdir: str) -> None:
  """Removes WORKDIR/done.json (process 0): the run is not finished."""
  if jax.process_index() == 0:
    try:
      os.remove(os.path.join(workdir, "done.json"))
    except FileNotFoundError:
      pass


def _init_options(mesh):
  # Random initialisers compile slowly on XLA:CPU (16s for a small ResNet); the init runs
  # once, so the CPU backend compiles it without optimisation (3s).
  return ({"xla_backend_optimization_level": 0} if mesh.devices.flat[0].platform == "cpu"
          else None)


def restore_or_init(ckpt, config, abstract, fresh, initialize=None):
  """(start step, state, the loader's bookkeeping): the newest checkpoint that restores, else
  ``fresh()`` — then ``initialize(state)`` or ``config.init_from``. A run that saved
  checkpoints before (in checkpoints/, moved to checkpoints_corrupt/, or finished: done.json)
  but none of which restores stops (naming each) unless ``config.allow_fresh_start``; then its
  earlier metrics and corrupt checkpoints are kept aside and the fresh start is said."""
  start_step, state, loader_info, problems = ckpt.restore_latest(abstract)
  if start_step is not None:
    log_lib.info(f"resumed from {ckpt.directory}/{start_step}")
  else:
    workdir = ckpt.workdir
    earlier = earlier_progress(workdir)
    if (problems or earlier) and not config.allow_fresh_start:
      what = "; ".join(problems + earlier)
      raise ckpt_lib.CheckpointError(
          f"no checkpoint in {ckpt.directory} restores ({what}); corrupt ones are in "
          f"checkpoints_corrupt/. Not starting again from step 0: set "
          f"config.allow_fresh_start=True for that")
    if problems or earlier:
      kept = set_aside_earlier_run(workdir)
      log_lib.info(f"starting again from step 0 (allow_fresh_start): no checkpoint restores "
                   f"({'; '.join(problems + earlier)}){kept}")
    elif last := _last_metric_step(workdir):
      log_lib.info(f"starting from step 0: no checkpoint was saved before the run stopped "
                   f"(metrics.jsonl reaches step {last}; checkpoint_every="
                   f"{config.checkpoint_every})")
    start_step, state = 0, fresh()
    if initialize is not None:
      state = initialize(state)
    elif config.get("init_from"):
      state = init_from_checkpoint(state, config.init_from, config.get("init_skip", ""))
      log_lib.info(f"initialised from {config.init_from}")
  if int(state["step"]) != start_step:
    raise RuntimeError(f"checkpoint step {start_step} holds state at step {int(state['step'])}")
  return start_step, state, loader_info


def _corrupt_steps(workdir: str) -> list[str]:
  d = os.path.join(workdir, "checkpoints_corrupt")
  return sorted((n for n in os.listdir(d) if n.isdigit()), key=int) if os.path.isdir(d) else []


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
  done = os.path.join(workdir, "done.json")
  if os.path.exists(done):
    try:
      with open(done) as f:
        out.append(f"done.json says the run finished at step {json.load(f).get('step')}")
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
  metrics = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics):
    dst = os.path.join(workdir, f"metrics.before_fresh_start_{tag}.jsonl")
    os.replace(metrics, dst)
    moved.append(os.path.basename(dst))
  corrupt = _corrupt_steps(workdir)
  if corrupt:
    dst = os.path.join(workdir, "checkpoints_corrupt", f"before_fresh_start_{tag}")
    os.makedirs(dst, exist_ok=True)
    for n in corrupt:
      os.replace(os.path.join(workdir, "checkpoints_corrupt", n), os.path.join(dst, n))
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
  if data["eval_source"] is not None and hasattr(ctx.method, "eval_metrics"):
    s = evals_lib.settings("eval", {"type": "classification", "split": config.eval_split})
    out.append((evals_lib.classification("eval", s, ctx, data["eval_source"]), every))
  return out + evals_lib.from_config(config.evals, ctx, every)


def check_finite(state, ckpt):
  bad = int(state["nonfinite_step"])
  if bad >= 0:
    last = ckpt.steps()[-1] if ckpt.steps() else None
    raise FloatingPointError(
        f"non-finite loss or gradient at step {bad}; stopping. Last good checkpoint: "
        f"{'step ' + str(last) if last is not None else 'none'} in {ckpt.directory}")


def log_window(writer, step: int, total_steps: int, rows: list[dict], rate: dict,
               skipped: int):
  """One metrics row for the steps since the last: their means (the learning rate: its value at
  this step, not the window's mean), the rate and ETA."""
  mean = {f"train/{k}": float(np.mean([r[k] for r in rows])) for k in rows[0]}
  mean["train/lr"] = float(rows[-1]["lr"])
  mean.update({"train/examples_per_sec": rate["examples_per_sec"],
               "train/steps_per_sec": rate["steps_per_sec"], "eta_s": rate["eta_s"],
               "train/skipped_records": skipped})
  writer.write(step, mean)
  log_lib.info(f"step {step}/{total_steps} loss {mean['train/loss']:.4f} "
               f"lr {mean['train/lr']:.3g} {rate['examples_per_sec']:.1f} img/s "
               f"eta {log_lib.format_duration(rate['eta_s'])}")


def mark_done(workdir: str, total_steps: int):
  """WORKDIR/done.json: the run finished and its last checkpoint is saved (process 0)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "done.json")
  with open(path + ".tmp", "w") as f:
    json.dump({"step": total_steps,
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f)
  os.replace(path + ".tmp", path)


def entry():
  app.define_flags()
  absl_app.run(app.main_of(run), flags_parser=config_lib.flags_parser)


if __name__ == "__main__":
  entry()
