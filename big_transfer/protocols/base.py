"""What a transfer protocol is to the engine and the entrypoint: :class:`Protocol`.

A protocol reads the run's session (session.Session) — its resolved config, opened data,
pre-trained weights, evaluators, frozen features, text head and fine-tuning grid — and returns
its result rows. Everything around it (identity, lock, done marker, the rows' common fields,
results files) is the entrypoint's; what the study needs to know without running it is here as
class attributes.
"""

from __future__ import annotations

from typing import Any


class Protocol:
  """The base of every protocol; subclasses override what differs."""

  name: str = ""
  # The config keys this protocol reads beyond the transfer run's own (schema.Section): their
  # defaults, help and check join the transfer config (finetune.transfer_config).
  sections: tuple = ()
  trains: bool = False  # fine-tunes the network on a grid (the study's compute estimate)
  needs_text_tower: bool = False  # only for pre-trained runs with a text tower (CLIP, SLIP)

  def auto_head(self, text_tower: bool) -> str:
    """What ``head_init=auto`` means for this protocol: 'text' (CLIP's zero-shot head),
    'probe' (a linear probe's) or 'zero'."""
    return "zero"

  def check(self, config) -> None:
    """Protocol-specific checks of a resolved config (raise session.TransferError)."""

  def recipe(self, s) -> dict[str, Any]:
    """What this protocol's rows record of how they were made, beyond the common fields."""
    return {}

  def run(self, s, base: dict) -> list[dict]:
    """The result rows of session ``s``; ``base``: the fields every row carries."""
    raise NotImplementedError
