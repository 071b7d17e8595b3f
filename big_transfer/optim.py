"""Optimisers and learning-rate schedules, built from config."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
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


def schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to ``lr``, then ``cosine`` / ``linear`` to ``end_factor * lr``,
  ``step`` (multiply by ``decay_factor`` at each of ``boundaries``: fractions of the run if < 1,
  else steps) or ``constant``."""
  lr, warmup = float(cfg.lr), int(cfg.get("warmup_steps", 0))
  name = cfg.get("schedule", "cosine")
  decay_steps = max(1, total_steps - warmup)
  end = lr * float(cfg.get("end_factor", 0.0))
  if name == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
  elif name == "linear":
    main = optax.linear_schedule(lr, end, decay_steps)
  elif name == "step":
    bounds = [b if b >= 1 else b * total_steps for b in cfg.get("boundaries", (0.3, 0.6, 0.9))]
    factor = float(cfg.get("decay_factor", 0.1))
    main = optax.piecewise_constant_schedule(
      lr, {int(b) - warmup: factor for b in bounds if int(b) > warmup}
    )
  elif name == "constant":
    main = optax.constant_schedule(lr)
  else:
    raise ValueError(f"optimizer.schedule {name!r} not in {SCHEDULES}")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def decay_mask(params):
  """Weight decay on kernels only: biases, norm scales and 1-D parameters are not decayed."""
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _mask_of(cfg):
  """``optimizer.decay``: 'kernels' (decay_mask) or 'all' (every parameter, as
  torch.optim.AdamW(model.parameters(), weight_decay=...) does)."""
  decay = cfg.get("decay", "kernels")
  if decay not in DECAY:
    raise ValueError(f"optimizer.decay {decay!r} not in {DECAY}")
  return decay_mask if decay == "kernels" else None


def build(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  name = cfg.name
  sched = schedule(cfg, total_steps)
  wd = float(cfg.get("weight_decay", 0.0))
  mask = _mask_of(cfg)
  parts = []
  if cfg.get("grad_clip_norm"):
    parts.append(optax.clip_by_global_norm(float(cfg.grad_clip_norm)))
  if name == "sgd":
    if wd:  # coupled L2, as torch.optim.SGD
      parts.append(optax.add_decayed_weights(wd, mask))
    parts.append(
      optax.sgd(
        sched, momentum=cfg.get("momentum", 0.9) or None, nesterov=bool(cfg.get("nesterov", False))
      )
    )
  elif name == "adamw":
    parts.append(
      optax.adamw(
        sched,
        b1=cfg.get("b1", 0.9),
        b2=cfg.get("b2", 0.999),
        eps=cfg.get("eps", 1e-8),
        weight_decay=wd,
        mask=mask,
      )
    )
  elif name == "lars":
    parts.append(
      optax.lars(
        sched,
        weight_decay=wd,
        weight_decay_mask=True if mask is None else mask,
        trust_coefficient=cfg.get("trust_coefficient", 0.001),
        momentum=cfg.get("momentum", 0.9),
        trust_ratio_mask=decay_mask,
      )
    )
  else:
    raise ValueError(f"optimizer.name {name!r} not in {OPTIMIZERS}")
  return optax.chain(*parts), sched
