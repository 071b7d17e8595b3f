"""The train state and the weights evaluators see, as typed pytrees.

``TrainState``: step, params, model_state (batch statistics and other non-parameter variables),
opt_state, nonfinite_step (the first step whose loss or gradient was not finite, -1 while none
was) and ema_params (None unless the run keeps an exponential moving average). There is no rng
field: a step's randomness is ``fold_in(key(seed), step)``, a pure function of the step, which
is what makes a resumed run bitwise equal to an uninterrupted one.

``Weights``: what a model is evaluated with — params and model_state. ``TrainState.weights()``
gives the EMA parameters when the run keeps them: the one place that rule lives
(:func:`eval_params` applies it to a host state loaded from a checkpoint as well).

Checkpoints hold ``TrainState.to_dict()``: string keys, ``ema_params`` absent when None — the
layout every checkpoint has had, so each one written before this type existed restores into it.
"""

from __future__ import annotations

from typing import Any

from flax import struct


@struct.dataclass
class Weights:
  params: Any
  model_state: Any

  def to_dict(self) -> dict[str, Any]:
    return {"params": self.params, "model_state": self.model_state}


@struct.dataclass
class TrainState:
  step: Any
  params: Any
  model_state: Any
  opt_state: Any
  nonfinite_step: Any
  ema_params: Any = None

  def eval_params(self):
    """The parameters a model is evaluated, transferred and exported with."""
    return eval_params(self)

  def weights(self) -> Weights:
    return Weights(self.eval_params(), self.model_state)

  def to_dict(self) -> dict[str, Any]:
    """The checkpoint layout (``ema_params`` only when kept)."""
    out = {
      "step": self.step,
      "params": self.params,
      "model_state": self.model_state,
      "opt_state": self.opt_state,
      "nonfinite_step": self.nonfinite_step,
    }
    if self.ema_params is not None:
      out["ema_params"] = self.ema_params
    return out

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> TrainState:
    unknown = sorted(set(d) - FIELDS)
    if unknown:
      raise ValueError(f"train state: unknown field(s) {', '.join(unknown)}")
    return cls(
      step=d["step"],
      params=d["params"],
      model_state=d["model_state"],
      opt_state=d["opt_state"],
      nonfinite_step=d["nonfinite_step"],
      ema_params=d.get("ema_params"),
    )


FIELDS = frozenset(("step", "params", "model_state", "opt_state", "nonfinite_step", "ema_params"))


def eval_params(state):
  """The EMA parameters when ``state`` (a TrainState or a checkpoint's dict) keeps them, else
  its parameters."""
  if isinstance(state, dict):
    ema = state.get("ema_params")
    return state["params"] if ema is None else ema
  return state.params if state.ema_params is None else state.ema_params


def eval_weights(state) -> Weights:
  """:meth:`TrainState.weights` of a TrainState or of a checkpoint's dict."""
  if isinstance(state, dict):
    return Weights(eval_params(state), state.get("model_state", {}))
  return state.weights()
