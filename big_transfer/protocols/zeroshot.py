"""Zero-shot: CLIP/SLIP's text-initialised head on the downstream classes, no training."""

from __future__ import annotations

from big_transfer.protocols import base


class Protocol(base.Protocol):
  name = "zeroshot"
  needs_text_tower = True

  def auto_head(self, text_tower: bool) -> str:
    return "text" if text_tower else "zero"

  def run(self, s, base_row: dict) -> list[dict]:
    w = s.to_device(s.initial_weights(s.start_head()))
    return [
      {
        **base_row,
        "hyperparameters": {"templates": s.config.templates},
        "val_accuracy": s.accuracy(w, "val"),
        "test_accuracy": s.accuracy(w, "test"),
        "steps": 0,
      }
    ]
