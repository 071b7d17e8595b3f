"""A workdir is one run: what the run is, frozen at its first start and compared at every restart.

``WORKDIR/run.json`` holds the run's identity — every key of its config and what it resolved
from it (pre-training: the step count, warm-up, example and class counts; transfer: also the
pre-trained checkpoint's step and fingerprint) — and the history of accepted changes. A restart
whose identity differs is refused in one line listing each differing key with both values,
before anything is written to the workdir, except:

  - changes that cannot alter the result (:data:`NEUTRAL`: data workers and threads, process
    count, device mesh and parameter sharding, logging, checkpoint and evaluation cadence,
    evaluators, where results and caches are written): accepted, recorded;
  - keys the code added to the config after the run started, at their declared defaults
    (a newer version, a method registered since): accepted, recorded;
  - changes the user accepts explicitly (``--accept_changes=KEY[,KEY...]`` or ``all``):
    accepted, recorded in run.json's ``changes`` with the old and new values.

After an accepted change the identity in run.json is the new one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax

from big_transfer import config_lib, paths
from big_transfer import workdir as workdir_lib
from big_transfer.app import UserError

RUN_FILE = workdir_lib.RUN

# Keys whose change cannot alter what the run computes (prefixes of dotted keys).
NEUTRAL = (
  "data_workers",
  "data_threads",
  "log_every",
  "checkpoint_every",
  "keep_checkpoints",
  "keep_every",
  "tensorboard",
  "wandb",
  "eval_every",
  "eval_batch_size",
  "evals",
  "eval_data",
  "eval_split",
  "allow_fresh_start",
  "max_skip_fraction",
  "mesh",
  "param_sharding",
  "param_sharding_min_size",
  "results_file",
  "feature_cache",
)


class IdentityError(UserError):
  """A restart whose config differs from the run in the workdir; printed as one line."""


def _plain(v):
  return json.loads(json.dumps(v, sort_keys=True, default=str))


def _matches(key: str, prefixes: Iterable[str]) -> bool:
  """``key`` is one of ``prefixes`` or under one; a resolved value ('resolved.total_steps') is
  matched by its config key ('total_steps')."""
  keys = (key, key.removeprefix("resolved."))
  return any(k == p or k.startswith(p + ".") for k in keys for p in prefixes)


def is_neutral(key: str) -> bool:
  return _matches(key, NEUTRAL)


_ABSENT = "(absent)"


def differences(frozen: dict, now: dict) -> list[tuple[str, Any, Any]]:
  """(key, frozen value, new value) for every dotted key that differs."""
  a, b = config_lib.dotted(_plain(frozen)), config_lib.dotted(_plain(now))
  return [
    (k, a.get(k, _ABSENT), b.get(k, _ABSENT))
    for k in sorted(set(a) | set(b))
    if a.get(k, _ABSENT) != b.get(k, _ABSENT)
  ]


def declared_defaults() -> dict[str, Any]:
  """{dotted key: default} of the config a pre-training run starts from (a transfer run's:
  finetune.declared_defaults)."""
  return config_lib.dotted(config_lib.to_plain(config_lib.base_config()))


def parse_accept(accept) -> tuple[str, ...]:
  """'batch_size,optimizer.lr' / 'all' / a sequence -> a tuple of key prefixes."""
  if not accept:
    return ()
  if isinstance(accept, str):
    accept = accept.split(",")
  return tuple(a.strip() for a in accept if a and a.strip())


def _show(v) -> str:
  text = json.dumps(v, default=str) if not isinstance(v, str) or v == _ABSENT else repr(v)
  return text if len(text) <= 60 else text[:57] + "..."


def describe(diffs) -> str:
  return "; ".join(f"{k} {_show(a)} -> {_show(b)}" for k, a, b in diffs)


def read(workdir: str) -> dict | None:
  path = workdir_lib.Workdir(workdir).run
  if not paths.exists(path):
    return None
  try:
    record = paths.read_json(path)
    record["identity"]  # noqa: B018  (a record without one is unreadable)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise IdentityError(
      f"{path} is unreadable ({type(e).__name__}: {e}); it records what run "
      f"this workdir holds: restore it or use another --workdir"
    ) from None
  return record


def _write(workdir: str, record: dict) -> None:
  if jax.process_index() != 0:
    return
  paths.makedirs(workdir)
  paths.write_json(workdir_lib.Workdir(workdir).run, record, indent=1, sort_keys=True, default=str)


def check(
  workdir: str,
  identity: dict,
  *,
  kind: str,
  defaults: Callable[[], dict] = declared_defaults,
  accept=(),
  log=print,
  flag: str = "--accept_changes",
) -> list[tuple[str, Any, Any]]:
  """Freezes ``identity`` at a workdir's first start; at a restart compares it with the frozen
  one and raises IdentityError (one line) for differences that are neither neutral nor
  accepted. ``defaults()``: {dotted key: default} of the config the run's kind starts from
  (keys added to it since the run froze are accepted at their defaults). Returns the accepted
  differences (recorded in run.json)."""
  accept = parse_accept(accept)
  identity = _plain(identity)
  record = read(workdir)
  now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
  if record is None:
    wd = workdir_lib.Workdir(workdir)
    if paths.exists(wd.config) or paths.exists(wd.done):
      log(
        f"{workdir} has no {RUN_FILE} (a workdir of an older version): this run's identity "
        f"is frozen from now on"
      )
    _write(workdir, {"kind": kind, "created": now, "identity": identity, "changes": []})
    return []
  if record.get("kind", kind) != kind:
    raise IdentityError(
      f"workdir {workdir} holds a {record.get('kind')} run ({RUN_FILE}), not "
      f"a {kind} run: use another --workdir"
    )
  diffs = differences(record["identity"], identity)
  # Keys the code declared after this run froze its identity (a newer version, a method
  # registered since), at their declared defaults: the run could not have set them otherwise.
  absent = any(a == _ABSENT for _, a, _ in diffs)
  defaults = _plain(defaults()) if absent else {}  # built only when a key is new
  added = [
    d for d in diffs if d[1] == _ABSENT and d[0] in defaults and _plain(defaults[d[0]]) == d[2]
  ]
  diffs = [d for d in diffs if d not in added]
  if added:
    log(
      f"resuming with keys added to the config since this run started, at their defaults: "
      f"{', '.join(k for k, _, _ in added)}"
    )
  if not diffs:
    if added:
      record["changes"] = list(record.get("changes", [])) + [
        {"time": now, "key": k, "from": a, "to": b, "why": "added at its default"}
        for k, a, b in added
      ]
      record["identity"] = identity
      _write(workdir, record)
    return []
  # Resolved values (step and example counts) follow the config: when config keys differ they
  # are their consequence and go with them; alone, they say the data changed under the run.
  substantive = [d for d in diffs if not d[0].startswith("resolved.") and not is_neutral(d[0])]
  candidates = substantive or [d for d in diffs if d[0].startswith("resolved.")]
  all_ok = "all" in accept
  refused = [d for d in candidates if not all_ok and not _matches(d[0], accept)]
  if refused:
    keys = sorted(
      {
        "pretrained_checkpoint"
        if k.startswith("pretrained_checkpoint.")
        else k.removeprefix("resolved.")
        for k, _, _ in refused
      }
    )
    raise IdentityError(
      f"workdir {workdir} holds a run with another config ({len(refused)} key(s) differ: "
      f"{describe(refused[:6])}{' ...' if len(refused) > 6 else ''}); rerun with the run's "
      f"own config, use another --workdir, or accept the change (recorded in {RUN_FILE}): "
      f"{flag}={','.join(keys)}"
    )
  neutral = [d for d in diffs if is_neutral(d[0])]
  accepted = [d for d in diffs if not is_neutral(d[0])]
  if neutral:
    log(f"resuming with changes that cannot alter the result: {describe(neutral)}")
  if accepted:
    log(
      f"resuming with accepted changes (recorded in {workdir_lib.Workdir(workdir).run}): "
      f"{describe(accepted)}"
    )
  record["changes"] = (
    list(record.get("changes", []))
    + [
      {"time": now, "key": k, "from": a, "to": b, "why": "added at its default"}
      for k, a, b in added
    ]
    + [
      {"time": now, "key": k, "from": a, "to": b, "why": "neutral" if is_neutral(k) else "accepted"}
      for k, a, b in diffs
    ]
  )
  record["identity"] = identity
  _write(workdir, record)
  return accepted
