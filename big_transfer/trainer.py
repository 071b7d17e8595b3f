"""The Trainer: one training program built from explicit arguments, and the loop that runs it.

  trainer = Trainer(method, optimizer=optim.structure(cfg.optimizer), mesh=mesh)
  state = trainer.init(seed=0)                # sharded from the start
  values = run_values(cfg.optimizer, total_steps=1000, seed=0)   # runtime: lr, warm-up, seed
  state, stopped = trainer.fit(state, batches, values, start_step=0, total_steps=1000, hooks=[...])

It holds what every run shares — the model's graph definition, the TrainState's shapes and
shardings (parameter name rules over the mesh), the jitted init and update step (EMA, a
non-finite sentinel, the preprocessing's trailing normalisation on the device) and the named
predict functions evaluators use — and nothing about configs, workdirs or files: pre-training
(``train.run``), every fine-tuning run of a transfer protocol and the bench build it the same
way. What happens between steps (metrics, evaluation, checkpoints) is a list of hooks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from big_transfer import logging as log_lib
from big_transfer import optim, sharding
from big_transfer.data import ops
from big_transfer.evaluators import common as evals_lib
from big_transfer.programs import mesh_key, program
from big_transfer.state import TrainState, Weights

DEFAULT_PARAM_RULES = ((".*", "fsdp"),)


def run_values(optimizer_cfg, total_steps: int, seed: int) -> dict[str, Any]:
  """The runtime values of a run's compiled step: the optimiser's hyperparameters
  (``optim.hyperparams``) and the seed of its randomness."""
  return {"optimizer": optim.hyperparams(optimizer_cfg, total_steps), "seed": np.int32(seed)}


def make_init_state(method, opt: optim.Structure, ema_decay: float = 0.0):
  """key -> a fresh TrainState (ema_params only when ``ema_decay``)."""
  tx, _ = optim.transform(opt, optim.placeholder_hyperparams(opt))  # the state's layout only

  def init_state(key):
    model = method.create_model(nnx.Rngs(params=key))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = params.to_pure_dict(), rest.to_pure_dict()
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      model_state=rest,
      opt_state=tx.init(params),
      nonfinite_step=jnp.full((), -1, jnp.int32),
      ema_params=params if ema_decay else None,
    )

  return init_state, tx


def state_shardings(
  abstract: TrainState, mesh, tx, rules=DEFAULT_PARAM_RULES, min_size: int = 2**14
) -> TrainState:
  """Shardings of a train state from name rules (parameters and their optimiser state alike;
  scalars replicated)."""
  rules = [tuple(r) for r in rules]
  param_sh = sharding.tree_shardings(abstract.params, rules, mesh, min_size)
  repl = sharding.replicated(mesh)
  return TrainState(
    step=repl,
    nonfinite_step=repl,
    params=param_sh,
    model_state=sharding.tree_shardings(abstract.model_state, rules, mesh, min_size),
    opt_state=optax.tree_map_params(
      tx, lambda _, s: s, abstract.opt_state, param_sh, transform_non_params=lambda _: repl
    ),
    ema_params=param_sh if abstract.ema_params is not None else None,
  )


def make_train_step(
  method, graphdef, opt: optim.Structure, *, ema_decay: float = 0.0, input_affine=()
):
  """(state, batch, values) -> (state, metrics): one optimiser step of ``method``'s loss, with
  the gradient and parameter norms, a non-finite sentinel and the EMA update. Pure: the Trainer
  jits it with shardings (and the bench times it bare). ``values`` (:func:`run_values`): the
  optimiser's hyperparameters and the seed, runtime arrays, so the compiled step serves every
  learning rate, length and seed. ``input_affine``: the preprocessing's trailing normalisation
  (``ops.split_device_affine``), applied here so uint8 images cross to the device. The step's
  randomness is ``fold_in(key(seed), step)``."""

  def train_step(state: TrainState, batch, values):
    tx, lr_schedule = optim.transform(opt, values["optimizer"])
    batch = ops.apply_affine(batch, input_affine)
    step = state.step
    rng = jax.random.fold_in(jax.random.key(values["seed"]), step)

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state.model_state)
      loss, aux = method.loss(model, batch, nnx.Rngs(dropout=rng))
      _, _, new_rest = nnx.split(model, nnx.Param, ...)
      return loss, (aux, new_rest.to_pure_dict())

    (loss, (aux, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm, param_norm = optax.global_norm(grads), optax.global_norm(params)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
    ema = None
    if ema_decay:
      d = ema_decay
      ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state.ema_params, params)
    new = TrainState(
      step=step + 1,
      params=params,
      model_state=new_rest,
      opt_state=opt_state,
      nonfinite_step=jnp.where(
        (state.nonfinite_step < 0) & ~finite, step + 1, state.nonfinite_step
      ),
      ema_params=ema,
    )
    metrics = {
      "loss": loss,
      "grad_norm": grad_norm,
      "param_norm": param_norm,
      "lr": lr_schedule(step),
      **aux,
    }
    return new, metrics

  return train_step


def _init_options(mesh):
  # Random initialisers compile slowly on XLA:CPU (16s for a small ResNet); the init runs
  # once, so the CPU backend compiles it without optimisation (3s).
  return {"xla_backend_optimization_level": 0} if mesh.devices.flat[0].platform == "cpu" else None


def stacked_sharding(sh):
  """The sharding of a leaf stacked on a new leading axis (a fused grid's points): that axis
  unsharded, the rest as before."""
  return NamedSharding(sh.mesh, PartitionSpec(None, *sh.spec))


def stack_values(values: list[dict]) -> dict:
  """Runtime values of fused grid points, stacked on a leading axis."""
  return jax.tree.map(lambda *v: np.stack([np.asarray(x) for x in v]), *values)


def _affine_key(affines) -> str:
  return json.dumps(affines, default=lambda a: np.asarray(a).tolist())


class Trainer:
  """The training program of one run (see the module docstring). ``graphdef``: the model's
  graph definition when the caller already built it from shapes (else built here). Its compiled
  programs are shared with every Trainer of the same key when the method names one
  (``Method.program_key``: transfer runs), else its own."""

  def __init__(
    self,
    method,
    *,
    optimizer: optim.Structure,
    mesh,
    ema_decay: float = 0.0,
    input_affine=(),
    param_rules=DEFAULT_PARAM_RULES,
    param_min_size: int = 2**14,
    graphdef=None,
    points: int = 0,
  ):
    self.method, self.optimizer, self.mesh = method, optimizer, mesh
    self.ema_decay = float(ema_decay)
    self.points = int(points)
    rules = tuple(tuple(r) for r in param_rules)
    method_key = method.program_key()
    # The state's programs (shapes, shardings, init) depend on the model, optimiser, mesh and
    # points; the step also on the input's on-device normalisation.
    self.key = (
      None
      if method_key is None
      else (
        method_key,
        mesh_key(mesh),
        optimizer,
        self.ema_decay,
        rules,
        param_min_size,
        self.points,
      )
    )
    step_key = None if self.key is None else (*self.key, _affine_key(input_affine))
    part = lambda name, build, key=self.key: program(None if key is None else (name, *key), build)

    def model_graph():
      if graphdef is not None:
        return graphdef
      model = nnx.eval_shape(lambda: method.create_model(nnx.Rngs(0)))
      return nnx.split(model, nnx.Param, ...)[0]

    self.graphdef = part("graphdef", model_graph)
    self.init_fn, self.tx = make_init_state(method, optimizer, self.ema_decay)
    # Shapes first, then shardings from name rules, then a jitted init that creates the
    # parameters already sharded: nothing large is materialised on one device.
    self.abstract = part("abstract", lambda: jax.eval_shape(self.init_fn, jax.random.key(0)))
    self.shardings = part(
      "shardings", lambda: state_shardings(self.abstract, mesh, self.tx, rules, param_min_size)
    )
    self.weight_shardings = Weights(self.shardings.params, self.shardings.model_state)
    self.step_fn = make_train_step(
      method, self.graphdef, optimizer, ema_decay=self.ema_decay, input_affine=input_affine
    )
    repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    init_fn, step_fn, state_sh = self.init_fn, self.step_fn, self.shardings
    if self.points:
      # A fused grid: ``points`` states stacked on a leading axis, trained by one vmapped step
      # on the same batches, each with its own runtime values (learning rate, ...).
      p = self.points
      self.abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((p, *x.shape), x.dtype), self.abstract
      )
      state_sh = jax.tree.map(stacked_sharding, self.shardings)
      init_fn = lambda key: jax.tree.map(
        lambda x: jnp.broadcast_to(x, (p, *x.shape)), self.init_fn(key)
      )
      step_fn = jax.vmap(self.step_fn, in_axes=(0, None, 0))
    self.state_shardings = state_sh
    self.step = part(
      "step",
      key=step_key,
      build=lambda: jax.jit(
        step_fn,
        in_shardings=(state_sh, batch_sh, repl),
        out_shardings=(state_sh, repl),
        donate_argnums=(0,),
      ),
    )
    self._init = part(
      "init", lambda: jax.jit(init_fn, out_shardings=state_sh, compiler_options=_init_options(mesh))
    )
    tx, ema = self.tx, self.ema_decay

    def from_weights(w: Weights) -> TrainState:
      state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=w.params,
        model_state=w.model_state,
        opt_state=tx.init(w.params),
        nonfinite_step=jnp.full((), -1, jnp.int32),
        ema_params=w.params if ema else None,
      )
      if self.points:
        state = jax.tree.map(lambda x: jnp.broadcast_to(x, (self.points, *x.shape)), state)
      return state

    self._from_weights = part(
      "from_weights",
      lambda: jax.jit(from_weights, in_shardings=(self.weight_shardings,), out_shardings=state_sh),
    )

  # --------------------------------------------------------------- state
  def init(self, seed: int = 0) -> TrainState:
    """A fresh state, created sharded (the model's random initialisation)."""
    return self._init(jax.random.key(seed))

  def state_from(self, weights: Weights) -> TrainState:
    """A fresh state (step 0, the optimiser's state initialised) holding ``weights`` — device
    arrays with this trainer's weight shardings; a fused grid's points all start from them. No
    random initialisation runs (what fine-tuning from a pre-trained tower needs)."""
    return self._from_weights(weights)

  def abstract_state(self) -> TrainState:
    """ShapeDtypeStructs with this trainer's shardings (what a checkpoint restores into)."""
    return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      self.abstract,
      self.state_shardings,
    )

  def model_of(self, weights: Weights) -> nnx.Module:
    return nnx.merge(self.graphdef, weights.params, weights.model_state)

  def eval_context(self, **kwargs) -> evals_lib.Context:
    """What evaluators of this trainer's models share: the method's named predict functions,
    the model from Weights, the mesh and the weights' shardings (``kwargs``: the rest of
    :class:`evaluators.common.Context`). Its ``program_key`` lets evaluators of the same model
    share their compiled programs."""
    return evals_lib.Context(
      predict=self.method.predictions(),
      model_of=self.model_of,
      mesh=self.mesh,
      weight_shardings=self.weight_shardings,
      method_name=getattr(self.method, "name", ""),
      batch_keys=tuple(self.method.batch_keys),
      program_key=None if self.key is None else self.key[:2],
      **kwargs,
    )

  # --------------------------------------------------------------- loop
  def fit(
    self,
    state: TrainState,
    batches: Iterator[dict],
    values: dict,
    *,
    start_step: int,
    total_steps: int,
    hooks: Sequence[Hook] = (),
    stop=None,
  ) -> tuple[TrainState, int | None]:
    """Steps from ``start_step`` to ``total_steps`` with the runtime ``values``
    (:func:`run_values`); after each step every hook runs (in order); ``stop.stop_now(step)``
    (a preemption notice) ends the loop after that step's hooks see it as the last. Returns
    (state, the step it stopped at early, or None). Every hook is closed at the end, whatever
    happened; the loop's wall time is split into each hook's phase and steps
    (``log_lib.add_time``; compiling, wherever it happens, is counted as "compile")."""
    stopped, t_loop, c_loop = None, time.perf_counter(), log_lib.compile_seconds()
    spent: dict[str, float] = {}
    values = jax.device_put(values, sharding.replicated(self.mesh))

    def timed_hook(h, fn, *args):
      t0, c0 = time.perf_counter(), log_lib.compile_seconds()
      try:
        fn(*args)
      finally:
        took = time.perf_counter() - t0 - (log_lib.compile_seconds() - c0)
        spent[h.phase] = spent.get(h.phase, 0.0) + took

    try:
      for step in range(start_step + 1, total_steps + 1):
        state, metrics = self.step(state, sharding.to_global(next(batches), self.mesh), values)
        if step == start_step + 1:
          jax.block_until_ready(metrics)
          first = time.perf_counter() - t_loop
          log_lib.info(f"first step done in {first:.1f}s (includes any compile)")
          for h in hooks:
            h.first_step_done(step)
        if stop is not None and stop.stop_now(step) and step < total_steps:
          stopped = step  # a preemption notice: the hooks save, then the loop stops
        last = step == total_steps or stopped is not None
        for h in hooks:
          timed_hook(h, h.after_step, step, state, metrics, last)
        if stopped is not None:
          break
    finally:
      for h in hooks:
        timed_hook(h, h.close)
      loop = time.perf_counter() - t_loop - (log_lib.compile_seconds() - c_loop)
      for phase, seconds in spent.items():
        if phase != "steps":
          log_lib.add_time(phase, seconds)
      log_lib.add_time("steps", loop - sum(v for k, v in spent.items() if k != "steps"))
    return state, stopped


# ------------------------------------------------------------------ hooks


class Hook:
  """Runs between steps. ``phase``: where its time is counted (the study's breakdown)."""

  phase = "steps"

  def first_step_done(self, step: int) -> None:
    pass

  def after_step(self, step: int, state: TrainState, metrics: dict, last: bool) -> None:
    pass

  def close(self) -> None:
    pass


def check_finite(state: TrainState, ckpt) -> None:
  """A FloatingPointError naming the first non-finite step and the last good checkpoint."""
  steps = np.asarray(jax.device_get(state.nonfinite_step)).reshape(-1)  # one per fused point
  bad = steps[steps >= 0]
  if bad.size:
    last = ckpt.steps()[-1] if ckpt is not None and ckpt.steps() else None
    where = f" in {ckpt.directory}" if ckpt is not None else ""
    raise FloatingPointError(
      f"non-finite loss or gradient at step {int(bad.min())}; stopping. Last good checkpoint: "
      f"{'step ' + str(last) if last is not None else 'none'}{where}"
    )


class LogMetrics(Hook):
  """Every ``every`` steps and at the run's last: the window's mean metrics, rate and ETA to
  the writer and the log; checks the state is finite and that no background save failed. A
  fused grid's metrics (one value per point) go to one writer per point (``writer``: a list).

  The window in progress (the steps since the last row) is part of every checkpoint
  (:meth:`window`, restored as ``pending``): a run stopped between two rows — preempted, or
  killed after a checkpoint — logs, once resumed, exactly the rows an uninterrupted run
  logs (no row at the stop, and the next row's means over all of its steps)."""

  def __init__(
    self,
    writer,
    *,
    every: int,
    total_steps: int,
    start_step: int,
    batch_size: int,
    skipped: Callable[[], int],
    ckpt=None,
    pending: list[dict] | None = None,
  ):
    self.writers = list(writer) if isinstance(writer, (list, tuple)) else [writer]
    self.every, self.total_steps = every, total_steps
    self.batch_size, self.skipped, self.ckpt = batch_size, skipped, ckpt
    self.progress = log_lib.Progress(total_steps, start_step, batch_size)
    self.pending: list[dict] = [
      {k: np.asarray(v, np.float32) for k, v in row.items()} for row in pending or []
    ]

  def first_step_done(self, step: int) -> None:
    self.progress = log_lib.Progress(self.total_steps, step, self.batch_size)

  def window(self) -> list[dict]:
    """The steps' metrics since the last row, as JSON (what a checkpoint keeps of them)."""
    rows = jax.device_get(self.pending)
    return [{k: np.asarray(v).tolist() for k, v in row.items()} for row in rows]

  def after_step(self, step, state, metrics, last):
    self.pending.append(metrics)
    if step % self.every == 0 or step == self.total_steps:
      check_finite(state, self.ckpt)
      if self.ckpt is not None:
        self.ckpt.check()  # a failed background save stops the run now, not at the next save
      log_window(
        self.writers,
        step,
        self.total_steps,
        jax.device_get(self.pending),
        self.progress.update(step),
        self.skipped(),
      )
      self.pending = []


def log_window(writers, step: int, total_steps: int, rows: list[dict], rate: dict, skipped: int):
  """One metrics row for the steps since the last, per writer (a fused grid's metrics hold one
  value per point, one writer each): their means (the learning rate: its value at this step,
  not the window's mean), the rate and ETA."""
  writers = writers if isinstance(writers, (list, tuple)) else [writers]
  fused = len(writers) > 1
  losses = []
  for i, writer in enumerate(writers):
    pick = (lambda v, i=i: np.asarray(v)[i]) if fused else (lambda v: v)
    mean = {f"train/{k}": float(np.mean([pick(r[k]) for r in rows])) for k in rows[0]}
    mean["train/lr"] = float(pick(rows[-1]["lr"]))
    mean.update(
      {
        "train/examples_per_sec": rate["examples_per_sec"],
        "train/steps_per_sec": rate["steps_per_sec"],
        "eta_s": rate["eta_s"],
        "train/skipped_records": skipped,
      }
    )
    writer.write(step, mean)
    losses.append((mean["train/loss"], mean["train/lr"]))
  loss = "|".join(f"{a:.4f}" for a, _ in losses)
  lr = "|".join(f"{b:.3g}" for _, b in losses)
  log_lib.info(
    f"step {step}/{total_steps} loss {loss} lr {lr} {rate['examples_per_sec']:.1f} img/s "
    f"eta {log_lib.format_duration(rate['eta_s'])}"
  )


class Evaluate(Hook):
  """Every ``every`` steps and at the last: ``evaluator.run(state.weights())`` to the writer
  and the log."""

  phase = "evaluation"

  def __init__(self, evaluator, every: int, writer, total_steps: int):
    self.evaluator, self.every, self.writer = evaluator, every, writer
    self.total_steps = total_steps

  def after_step(self, step, state, metrics, last):
    if step % self.every == 0 or step == self.total_steps:
      results = dict(self.evaluator.run(state.weights()))
      self.writer.write(step, results)
      log_lib.info(f"step {step} " + " ".join(f"{k} {v:.4f}" for k, v in results.items()))


class SaveCheckpoints(Hook):
  """Every ``every`` steps and at the last: a checkpoint of a state that is finite, with the
  loader's bookkeeping (``loader()``); ``before_save()`` first (the metric writer's flush: the
  rows up to a checkpoint are stored before it); waits for the last save when closed."""

  phase = "checkpoints"

  def __init__(self, ckpt, every: int, loader: Callable[[int], dict], before_save=None):
    self.ckpt, self.every, self.loader, self.before_save = ckpt, every, loader, before_save

  def after_step(self, step, state, metrics, last):
    if step % self.every == 0 or last:
      check_finite(state, self.ckpt)  # never save a state that has seen a non-finite value
      if self.before_save is not None:
        try:
          self.before_save()
        except Exception as e:  # noqa: BLE001  the rows up to a checkpoint belong before it
          raise self.ckpt.failed_before_save(step, "its metrics could not be stored", e) from None
      self.ckpt.save(step, state.to_dict(), self.loader(step))

  def close(self):
    self.ckpt.close()  # waits for the last asynchronous save
