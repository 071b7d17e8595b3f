"""Text ops: ``tokenize`` (CLIP's BPE; the trainer binds ``vocab`` and ``max_len``)."""

from __future__ import annotations

import numpy as np

from big_transfer.data import tokenizer
from big_transfer.data.pp.registry import PreprocessError, register


@register("tokenize", run_args=("vocab", "max_len"), deterministic=True)
def _tokenize(
  max_len: int | None = None, vocab: str | None = None, key: str = "caption", out: str = "text"
):
  """Caption text -> ``max_len`` int32 BPE ids ([SOT] ids [EOT], truncated with EOT kept,
  0-padded). ``vocab``: a merges file; the trainer binds ``vocab`` and ``max_len`` from
  ``config.text`` when the op string leaves them out."""
  if max_len is not None and max_len < 2:
    raise ValueError(f"max_len={max_len} leaves no room for the start and end tokens")
  if vocab is not None and not isinstance(vocab, str):
    raise ValueError(f"vocab must be a path, got {vocab!r}")

  def op(example, rng):
    if vocab is None or max_len is None:
      raise PreprocessError(
        "tokenize: no vocabulary or length (set config.text.tokenizer "
        "and config.text.context_length, or tokenize(77, vocab='PATH'))"
      )
    text = example.pop(key) if key != out else example[key]
    if isinstance(text, (bytes, np.bytes_)):
      text = bytes(text).decode("utf-8", "replace")
    text = str(text)
    if not text.strip():
      raise ValueError(f"empty {key!r}")
    example[out] = tokenizer.load(vocab).tokenize(text, max_len)[0]
    return example

  return op
