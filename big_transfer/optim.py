"""Optimisers and learning-rate schedules, built from config."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import config_dict

from big_transfer import schema

OPTIMIZERS = ("sgd", "adamw", "lars")
DECAY = ("kernels", "all")  # what weight decay applies to (optimizer.decay)
SCHEDULES = ("cosine", "linear", "step", "constant")


def _check(config) -> None:
  o = config.optimizer
  for key, allowed in (("name", OPTIMIZERS), ("decay", DECAY), ("schedule", SCHEDULES)):
    if o.get(key, allowed[0]) not in allowed:
      raise schema.SectionError(
        f"config.optimizer.{key}={o[key]!r}: not one of {', '.join(allowed)}"
      )
  for key, value in o.items():
    if isinstance(value, float) and not math.isfinite(value):
      raise schema.SectionError(f"config.optimizer.{key}={value}: must be a finite number")
  if o.lr < 0:
    raise schema.SectionError(f"config.optimizer.lr={o.lr}: must not be negative")


SECTION = schema.Section(
  "optimizer",
  __name__,
  help="the optimiser and its schedule",
  keys=(
    schema.Key("name", "sgd", f"one of {', '.join(OPTIMIZERS)}"),
    schema.Key("lr", 0.1, "peak learning rate (after warm-up)"),
    schema.Key("momentum", 0.9, "SGD and LARS momentum"),
    schema.Key("nesterov", False, "Nesterov momentum (SGD)"),
    schema.Key(
      "weight_decay",
      1e-4,
      "decoupled for AdamW and LARS, added to the gradient for SGD; what it applies to: decay",
    ),
    schema.Key("b1", 0.9, "AdamW's first-moment decay"),
    schema.Key("b2", 0.999, "AdamW's second-moment decay"),
    schema.Key("eps", 1e-8, "AdamW's epsilon"),
    schema.Key("trust_coefficient", 0.001, "LARS trust ratio coefficient"),
    schema.Key("schedule", "cosine", f"after warm-up: one of {', '.join(SCHEDULES)}"),
    schema.Key("warmup_steps", 0, "linear warm-up from 0 to lr"),
    schema.Key(
      "warmup_epochs",
      config_dict.placeholder(float),
      "warm-up in epochs instead of steps (resolved from the training set's size)",
    ),
    schema.Key("end_factor", 0.0, "cosine / linear schedules end at end_factor * lr"),
    schema.Key(
      "boundaries",
      (0.3, 0.6, 0.9),
      "step schedule: where lr is multiplied by "
      "decay_factor (fractions of the run if < 1, else steps)",
    ),
    schema.Key("decay_factor", 0.1, "step schedule: the factor at each boundary"),
    schema.Key("grad_clip_norm", 0.0, "> 0: clip the gradient's global norm to this"),
    schema.Key(
      "decay",
      "kernels",
      "what weight decay applies to: 'kernels' (weight matrices "
      "and convolution kernels; not biases, norm scales or other 1-D parameters) or "
      "'all' (every parameter)",
    ),
  ),
  check=_check,
)


# ----------------------------------------------------------------------------- compiled vs runtime
# What the compiled step depends on is the optimiser's *structure* (which transforms, their static
# settings); what varies across a fine-tuning grid or between runs — the peak lr, warm-up, length,
# end factor, weight decay, clipping norm, step-schedule boundaries — is a runtime value
# (``hyperparams``) passed to the step as arrays, so one compiled program serves every grid point.


@dataclasses.dataclass(frozen=True)
class Structure:
  """The optimiser as compiled: its transforms and their static settings (hashable: part of a
  compiled program's key)."""

  name: str = "sgd"
  schedule: str = "cosine"
  decay: str = "kernels"
  clip: bool = False  # grad_clip_norm > 0
  sgd_decay: bool = False  # SGD with a non-zero weight decay (an extra transform)
  momentum: float = 0.9
  nesterov: bool = False
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  trust_coefficient: float = 0.001
  boundaries: int = 0  # how many step-schedule boundaries


def structure(cfg) -> Structure:
  """The compiled part of an ``optimizer`` section."""
  name = cfg.name
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name {name!r} not in {OPTIMIZERS}")
  sched = cfg.get("schedule", "cosine")
  if sched not in SCHEDULES:
    raise ValueError(f"optimizer.schedule {sched!r} not in {SCHEDULES}")
  decay = cfg.get("decay", "kernels")
  if decay not in DECAY:
    raise ValueError(f"optimizer.decay {decay!r} not in {DECAY}")
  return Structure(
    name=name,
    schedule=sched,
    decay=decay,
    clip=bool(cfg.get("grad_clip_norm")),
    sgd_decay=name == "sgd" and bool(float(cfg.get("weight_decay", 0.0))),
    momentum=float(cfg.get("momentum", 0.9) or 0.0),
    nesterov=bool(cfg.get("nesterov", False)),
    b1=float(cfg.get("b1", 0.9)),
    b2=float(cfg.get("b2", 0.999)),
    eps=float(cfg.get("eps", 1e-8)),
    trust_coefficient=float(cfg.get("trust_coefficient", 0.001)),
    boundaries=len(cfg.get("boundaries", ())) if sched == "step" else 0,
  )


def hyperparams(cfg, total_steps: int) -> dict[str, np.ndarray]:
  """The runtime values of an ``optimizer`` section for a run of ``total_steps``: float32
  scalars (and the step schedule's boundaries in steps, with whether each applies)."""
  lr, warmup = float(cfg.lr), int(cfg.get("warmup_steps", 0))
  out = {
    "lr": lr,
    "warmup_steps": max(0, warmup),
    "decay_steps": max(1, total_steps - warmup),
    "end_factor": float(cfg.get("end_factor", 0.0)),
    "weight_decay": float(cfg.get("weight_decay", 0.0)),
    "grad_clip_norm": float(cfg.get("grad_clip_norm", 0.0) or 0.0),
    "decay_factor": float(cfg.get("decay_factor", 0.1)),
  }
  out = {k: np.float32(v) for k, v in out.items()}
  bounds = cfg.get("boundaries", ()) if cfg.get("schedule", "cosine") == "step" else ()
  steps = [int(b if b >= 1 else b * total_steps) for b in bounds]
  # As optax's piecewise schedule after the warm-up: a boundary inside the warm-up is dropped,
  # and two boundaries on one step count once.
  seen, live = set(), []
  for b in steps:
    live.append(b > warmup and b not in seen)
    seen.add(b)
  out["boundaries"] = np.asarray([b - warmup for b in steps], np.float32)
  out["boundary_live"] = np.asarray(live, np.float32)
  return out


def placeholder_hyperparams(s: Structure) -> dict[str, np.ndarray]:
  """Hyperparameters of the right structure and no meaning: what building an optimiser only to
  lay out its state (``tx.init``) needs."""
  out = {k: np.float32(0) for k in HYPERPARAMS}
  out["boundaries"] = np.zeros(s.boundaries, np.float32)
  out["boundary_live"] = np.zeros(s.boundaries, np.float32)
  return out


HYPERPARAMS = (
  "lr",
  "warmup_steps",
  "decay_steps",
  "end_factor",
  "weight_decay",
  "grad_clip_norm",
  "decay_factor",
)


def schedule_value(s: Structure, hp, count):
  """The learning rate at step ``count`` (traceable; ``hp``: :func:`hyperparams`): linear
  warm-up from 0 to lr over warmup_steps, then ``cosine`` / ``linear`` to end_factor * lr over
  decay_steps, ``step`` (times decay_factor at each boundary) or ``constant`` — optax's
  schedules, written over runtime values."""
  lr, warmup = hp["lr"], hp["warmup_steps"]
  count = jnp.asarray(count, jnp.float32)
  t = count - warmup  # steps after the warm-up
  if s.schedule == "cosine":
    decay = hp["decay_steps"]
    c = jnp.minimum(jnp.maximum(t, 0.0), decay)
    cosine = 0.5 * (1 + jnp.cos(jnp.pi * c / decay))
    alpha = hp["end_factor"]
    main = lr * ((1 - alpha) * cosine + alpha)
  elif s.schedule == "linear":
    decay = hp["decay_steps"]
    frac = 1 - jnp.clip(t, 0.0, decay) / decay
    end = lr * hp["end_factor"]
    main = (lr - end) * frac + end
  elif s.schedule == "step":
    passed = (t >= hp["boundaries"]) * hp["boundary_live"]
    main = lr * jnp.prod(jnp.where(passed > 0, hp["decay_factor"], 1.0))
  else:
    main = lr * jnp.ones_like(count)
  frac = 1 - jnp.clip(count, 0.0, warmup) / jnp.maximum(warmup, 1.0)
  ramp = (0.0 - lr) * frac + lr  # optax.linear_schedule(0, lr, warmup)'s arithmetic
  return jnp.where(count < warmup, ramp, main)


def schedule(cfg, total_steps: int) -> optax.Schedule:
  """The schedule of a config section with its values fixed (see :func:`schedule_value`)."""
  s, hp = structure(cfg), hyperparams(cfg, total_steps)
  return lambda count: schedule_value(s, hp, count)


def decay_mask(params):
  """Weight decay on kernels only: biases, norm scales and 1-D parameters are not decayed."""
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def transform(s: Structure, hp) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimiser of structure ``s`` with runtime values ``hp``: built inside the jitted step
  (``hp`` traced), so the compiled program does not hold them. Its state's layout depends on
  ``s`` alone (what checkpoints hold)."""
  sched = lambda count: schedule_value(s, hp, count)
  wd = hp["weight_decay"]
  mask = decay_mask if s.decay == "kernels" else None
  parts = []
  if s.clip:
    parts.append(optax.clip_by_global_norm(hp["grad_clip_norm"]))
  if s.name == "sgd":
    if s.sgd_decay:  # coupled L2, as torch.optim.SGD
      parts.append(optax.add_decayed_weights(wd, mask))
    parts.append(optax.sgd(sched, momentum=s.momentum or None, nesterov=s.nesterov))
  elif s.name == "adamw":
    parts.append(optax.adamw(sched, b1=s.b1, b2=s.b2, eps=s.eps, weight_decay=wd, mask=mask))
  else:  # lars
    parts.append(
      optax.lars(
        sched,
        weight_decay=wd,
        weight_decay_mask=True if mask is None else mask,
        trust_coefficient=s.trust_coefficient,
        momentum=s.momentum,
        trust_ratio_mask=decay_mask,
      )
    )
  return optax.chain(*parts), sched


def build(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimiser and schedule of a config section with its values fixed."""
  hp = jax.tree.map(jnp.asarray, hyperparams(cfg, total_steps))
  return transform(structure(cfg), hp)
