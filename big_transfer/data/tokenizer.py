r"""Byte-level BPE tokenizer in CLIP's format, and a trainer for new vocabularies, offline.

A vocabulary is a merges file: a header line, then one merge per line ("a b"), the format of
OpenAI CLIP's ``bpe_simple_vocab_16e6.txt.gz`` (which OpenCLIP ships in its package). Token ids
follow CLIP's layout: 256 byte symbols, the same 256 with the end-of-word marker ``</w>``, one id
per merge, then ``<start_of_text>`` and ``<end_of_text>`` (the largest id; OpenCLIP's names:
written in a caption they are those tokens, as in OpenCLIP). Text is cleaned as
CLIP cleans it (ftfy when installed, HTML unescaping, whitespace collapsed, lower-cased).

  python -m big_transfer.data.tokenizer train 'builtin:glyphs?n=5000' --vocab_size=1000 \
      --out=/data/glyphs_bpe.txt
  python -m big_transfer.data.tokenizer encode /path/bpe_simple_vocab_16e6.txt.gz "a photo"

Encoding runs in Rust through Hugging Face ``tokenizers`` when it is installed (it is in
requirements.txt): the same merges, CLIP's pre-tokenising pattern and byte table, the same ids
(tested on a corpus of real-looking captions against the pure-Python encoder, which remains the
fallback; ``BT_TOKENIZER=python`` forces it). Cleaning skips ftfy for text it cannot change
(printable ASCII with no HTML entity).

Training counts words (pre-tokenised with CLIP's pattern) and merges the most frequent adjacent
pair until the vocabulary is full, keeping pair counts up to date incrementally (a heap with
lazy deletion), so a 10k vocabulary on 100k captions takes seconds, not hours. Ties break on
the pair itself: the same captions always give the same vocabulary.
"""

from __future__ import annotations

import collections
import functools
import gzip
import heapq
import html
import importlib.util
import os
import sys
from collections.abc import Iterable, Sequence

import numpy as np
import regex

from big_transfer import cli
from big_transfer.data import sources

SOT, EOT = "<start_of_text>", "<end_of_text>"
CLIP_VOCAB_SIZE = 49408
HEADER = "#version: 0.2"
_PATTERN = regex.compile(
  r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
  r"""[^\s\p{L}\p{N}]+""",
  regex.IGNORECASE,
)


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
  """Each byte as a printable character: printable Latin-1 bytes stand for themselves, the
  rest are shifted above 255 (so that BPE never sees whitespace or control characters)."""
  keep = (
    list(range(ord("!"), ord("~") + 1))
    + list(range(ord("¡"), ord("¬") + 1))
    + list(range(ord("®"), ord("ÿ") + 1))
  )
  # The order matters: it is the order of the first 512 token ids (printable bytes first).
  table = {b: chr(b) for b in keep}
  for b in range(256):
    if b not in table:
      table[b] = chr(256 + len(table) - len(keep))
  return table


_FTFY = importlib.util.find_spec("ftfy") is not None


def _needs_ftfy(text: str) -> bool:
  """Whether ftfy could change ``text``: anything beyond printable ASCII and whitespace (its
  fixes are for mojibake, Unicode forms and control characters), or an HTML entity."""
  return not (
    text.isascii()
    and "&" not in text
    and (text.isprintable() or all(c.isprintable() or c in " \t\n\r" for c in text))
  )


def clean(text: str) -> str:
  """CLIP's cleaning: ftfy (when installed; only mojibake repair is lost without it), HTML
  unescaped twice, whitespace collapsed, lower case."""
  if _FTFY and _needs_ftfy(text):
    import ftfy  # lazy: 0.1 s, and most captions never need it

    text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text)).strip()
  return " ".join(text.split()).lower()


def _words(text: str) -> list[str]:
  """Cleaned text -> pre-tokens, each as a string of byte symbols."""
  enc = bytes_to_unicode()
  return ["".join(enc[b] for b in tok.encode("utf-8")) for tok in _PATTERN.findall(clean(text))]


class Tokenizer:
  """Encodes text to CLIP-style token ids; ``tokenize`` gives fixed-length int32 rows."""

  def __init__(self, merges: Sequence[tuple[str, str]], backend: str | None = None):
    """``backend``: 'rust' or 'python'; default Rust when ``tokenizers`` is installed, unless
    ``BT_TOKENIZER=python``."""
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += [SOT, EOT]
    self.encoder = {t: i for i, t in enumerate(vocab)}
    if len(self.encoder) != len(vocab):
      raise ValueError("merges produce duplicate tokens")
    self.decoder = vocab
    self.ranks = {tuple(m): i for i, m in enumerate(merges)}
    self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
    self.vocab_size = len(vocab)
    self._cache: dict[str, list[str]] = {SOT: [SOT], EOT: [EOT]}  # never split
    if backend not in (None, "rust", "python"):
      raise ValueError(f"tokenizer backend {backend!r}: not rust or python")
    rust = _use_rust() if backend is None else backend == "rust"
    self._fast = _rust_bpe(self.encoder, merges) if rust else None

  @property
  def backend(self) -> str:
    return "rust" if self._fast is not None else "python"

  @classmethod
  def from_file(cls, path: str, vocab_size: int | None = None) -> Tokenizer:
    """Loads a merges file (``.gz`` or plain). ``vocab_size`` limits the merges used (CLIP's
    file holds more merges than its 49,408-token vocabulary uses); by default a file written
    by ``save`` uses all of its merges and any other file CLIP's 49,408."""
    if not os.path.exists(path):
      raise FileNotFoundError(f"tokenizer vocabulary {path}: no such file")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
      lines = f.read().split("\n")
    header, body = lines[0], [ln for ln in lines[1:] if ln.strip()]
    if vocab_size is None:
      vocab_size = len(body) + 514 if "big_transfer" in header else CLIP_VOCAB_SIZE
    n = vocab_size - 514
    if n > len(body) or n < 0:
      raise ValueError(
        f"tokenizer vocabulary {path}: {len(body)} merges, vocab_size {vocab_size} needs {n}"
      )
    merges = []
    for i, ln in enumerate(body[:n]):
      parts = ln.split()
      if len(parts) != 2:
        raise ValueError(f"tokenizer vocabulary {path}: line {i + 2} is not a merge: {ln!r}")
      merges.append((parts[0], parts[1]))
    return cls(merges)

  def save(self, path: str, note: str = "") -> None:
    merges = sorted(self.ranks, key=self.ranks.get)
    tmp = f"{path}.tmp{os.getpid()}"  # several hosts may write the same file
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(f"{HEADER} big_transfer vocab_size={self.vocab_size} {note}".rstrip() + "\n")
      f.writelines(f"{a} {b}\n" for a, b in merges)
    os.replace(tmp, path)

  def _bpe(self, word: str) -> list[str]:
    if word in self._cache:
      return self._cache[word]
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
      best, rank = None, None
      for i in range(len(parts) - 1):
        r = self.ranks.get((parts[i], parts[i + 1]))
        if r is not None and (rank is None or r < rank):
          best, rank = i, r
      if best is None:
        break
      a, b = parts[best], parts[best + 1]
      merged, i = [], 0
      while i < len(parts):  # merge every occurrence of the pair, left to right
        if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
          merged.append(a + b)
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    if len(self._cache) < 100_000:
      self._cache[word] = parts
    return parts

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text`` without start/end tokens."""
    if self._fast is not None:
      return self._fast.encode(clean(text), add_special_tokens=False).ids
    return self.encode_python(text)

  def encode_python(self, text: str) -> list[int]:
    """The pure-Python encoder (the reference the Rust one is tested against)."""
    return [self.encoder[t] for w in _words(text) for t in self._bpe(w)]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of token ids up to the end token (end-of-word markers become spaces)."""
    dec = {v: k for k, v in bytes_to_unicode().items()}
    ids = list(ids)
    if self.eot_id in ids:  # padding follows the end token
      ids = ids[: ids.index(self.eot_id)]
    text = "".join(self.decoder[i] for i in ids if i != self.sot_id)
    data = bytes(32 if c == " " else dec[c] for c in text.replace("</w>", " "))
    return data.decode("utf-8", "replace").strip()

  def tokenize(self, texts: str | Sequence[str], context_length: int = 77) -> np.ndarray:
    """[SOT] + ids + [EOT], truncated to ``context_length`` with EOT kept last, 0-padded."""
    if isinstance(texts, str):
      texts = [texts]
    out = np.zeros((len(texts), context_length), np.int32)
    for r, t in enumerate(texts):
      ids = [self.sot_id] + self.encode(t) + [self.eot_id]
      if len(ids) > context_length:
        ids = ids[:context_length]
        ids[-1] = self.eot_id
      out[r, : len(ids)] = ids
    return out


def _use_rust() -> bool:
  return (
    os.environ.get("BT_TOKENIZER", "") != "python"
    and importlib.util.find_spec("tokenizers") is not None
  )


def _rust_bpe(encoder: dict[str, int], merges: Sequence[tuple[str, str]]):
  """The same BPE in Hugging Face ``tokenizers``: CLIP's pattern splits the cleaned text into
  words (the pattern's matches kept, the rest dropped), each word's UTF-8 bytes become CLIP's
  byte symbols (ByteLevel, which uses the same table), and merges apply by rank within a word
  ending in ``</w>``."""
  # One caption at a time, in data workers that may fork: Rust's thread pool is never needed
  # (and, once used, makes tokenizers warn on every fork).
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  import tokenizers  # lazy: optional (the pure-Python encoder is the fallback)
  from tokenizers import models, pre_tokenizers

  bpe = models.BPE(
    vocab=dict(encoder),
    merges=[tuple(m) for m in merges],
    end_of_word_suffix="</w>",
    fuse_unk=False,
  )
  tok = tokenizers.Tokenizer(bpe)
  tok.add_special_tokens([SOT, EOT])  # whole, with their ids, wherever a caption has them
  pattern = _PATTERN.pattern
  tok.pre_tokenizer = pre_tokenizers.Sequence(
    [
      pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
  )
  return tok


def train(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
  """Learns ``vocab_size - 514`` merges (or fewer, when no pair occurs ``min_frequency``
  times) from ``texts``."""
  if vocab_size < 514:
    raise ValueError(
      f"vocab_size={vocab_size}: needs at least 514 (bytes, end-of-word "
      f"bytes, start and end tokens)"
    )
  counts = collections.Counter(w for t in texts for w in _words(t) if w not in (SOT, EOT))
  words = [list(w[:-1]) + [w[-1] + "</w>"] for w in counts]
  freq = list(counts.values())
  pairs: collections.Counter = collections.Counter()
  where: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
  for i, w in enumerate(words):
    for p in zip(w[:-1], w[1:]):
      pairs[p] += freq[i]
      where[p].add(i)
  # Max-heap on (count, pair); entries whose count changed are skipped when popped. Ties go
  # to the smallest pair, so heap entries are (-count, pair).
  heap = [(-c, p) for p, c in pairs.items()]
  heapq.heapify(heap)
  merges: list[tuple[str, str]] = []
  base = set(bytes_to_unicode().values())
  tokens = base | {s + "</w>" for s in base}
  while len(merges) < vocab_size - 514 and heap:
    c, p = heapq.heappop(heap)
    if pairs.get(p, 0) != -c or -c <= 0:
      continue
    if -c < min_frequency:
      break
    if p[0] + p[1] in tokens:  # would duplicate a token (e.g. 'a' + 'b</w>' twice)
      pairs[p] = 0
      continue
    merges.append(p)
    tokens.add(p[0] + p[1])
    changed = set()
    for i in list(where.pop(p, ())):
      w, f = words[i], freq[i]
      for q in zip(w[:-1], w[1:]):  # remove this word's old pairs
        pairs[q] -= f
        changed.add(q)
      new, j = [], 0
      while j < len(w):
        if j < len(w) - 1 and w[j] == p[0] and w[j + 1] == p[1]:
          new.append(p[0] + p[1])
          j += 2
        else:
          new.append(w[j])
          j += 1
      words[i] = new
      for q in zip(new[:-1], new[1:]):
        pairs[q] += f
        where[q].add(i)
        changed.add(q)
    pairs.pop(p, None)
    for q in changed:
      if pairs.get(q, 0) > 0:
        heapq.heappush(heap, (-pairs[q], q))
  return Tokenizer(merges)


def captions_of(source, limit: int = 200_000, key: str = "caption") -> list[str]:
  """Up to ``limit`` captions from a source, evenly spaced over it (deterministic)."""
  n = len(source)
  idx = np.unique(np.linspace(0, n - 1, min(n, limit)).astype(np.int64)) if n else []
  out = []
  for i in idx:
    text = source[int(i)].get(key)
    if isinstance(text, bytes):
      text = text.decode("utf-8", "replace")
    if text:
      out.append(str(text))
  return out


def sample_captions() -> list[str]:
  """Alt-text-like captions shipped with the package (URLs, prices, emoji, HTML entities,
  mojibake, many scripts): the corpus the Rust encoder is tested and benchmarked on."""
  path = os.path.join(os.path.dirname(__file__), "captions_sample.txt")
  with open(path, encoding="utf-8") as f:
    return [ln for ln in f.read().split("\n") if ln]


def packaged_clip_vocab() -> str | None:
  """The path of OpenAI's BPE vocabulary file as OpenCLIP ships it, when open_clip_torch is
  installed (found without importing it: that would import torch)."""
  spec = importlib.util.find_spec("open_clip")
  if spec is None or not spec.submodule_search_locations:
    return None
  for folder in spec.submodule_search_locations:
    path = os.path.join(folder, "bpe_simple_vocab_16e6.txt.gz")
    if os.path.exists(path):
      return path
  return None


def resolve(spec: str) -> str:
  """A vocabulary spec -> a file: 'clip' is OpenAI's (from the open_clip_torch package), else a
  path. Raises FileNotFoundError with what to do."""
  if spec == "clip":
    path = packaged_clip_vocab()
    if path is None:
      raise FileNotFoundError(
        "tokenizer 'clip': OpenAI's bpe_simple_vocab_16e6.txt.gz was not "
        "found; pip install open_clip_torch (no torch needed to read it) "
        "or give the file's path"
      )
    return path
  return spec


@functools.lru_cache(maxsize=8)
def load(path: str, vocab_size: int | None = None) -> Tokenizer:
  """A cached ``Tokenizer.from_file`` (one per preprocessing worker)."""
  return Tokenizer.from_file(path, vocab_size)


def command() -> cli.Command:
  module = "big_transfer.data.tokenizer"
  t = cli.Command(
    f"{module} train",
    "Learn a BPE vocabulary from a source's captions.",
    args=[cli.Arg("spec", "a data spec with captions (builtin:, tfds:, arrayrecord:)")],
    summary="learn a BPE vocabulary from a source's captions",
  )
  t.integer("vocab_size", 8192, "tokens")
  t.integer("max_captions", 200_000, "captions read, evenly spaced")
  t.string("out", None, "the merges file to write", required=True, metavar="FILE")
  e = cli.Command(
    f"{module} encode",
    "Print the token ids of a text.",
    args=[cli.Arg("vocab", "a merges file, or 'clip'"), cli.Arg("text", "the text")],
    summary="print the token ids of a text",
  )
  e.integer("context_length", 77, "tokens per text (padded or cut)")
  return cli.Command(module, __doc__, commands={"train": t, "encode": e})


def main(argv=None):
  args = command().parse(argv)
  try:
    if args.command == "train":
      texts = captions_of(sources.open_source(args.spec), args.max_captions)
      if not texts:
        raise ValueError(f"{args.spec}: no captions")
      tok = train(texts, args.vocab_size)
      tok.save(args.out, note=f"trained on {len(texts)} captions of {args.spec}")
      print(f"wrote {args.out}: {tok.vocab_size} tokens from {len(texts)} captions")
    else:
      print(" ".join(map(str, load(args.vocab).tokenize(args.text, args.context_length)[0])))
  except (ValueError, FileNotFoundError, sources.DataError) as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
