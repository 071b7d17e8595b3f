"""One run per workdir: a lock file held by the run's process 0, and graceful preemption.

``WORKDIR/.lock`` holds the holder's pid, host and start time, and its modification time is a
heartbeat (touched every ``HEARTBEAT_S``). A second run on the same workdir refuses with one line
naming the holder. A lock left by a process that is gone is taken over with a line saying so:
on the same host when its pid is dead, from any host when its heartbeat is older than
``STALE_S`` (a preempted VM cannot release its lock).

The workdir may be a bucket (``gs://``): the lock is then created with GCS's create-if-absent
precondition (:func:`paths.create_exclusive`; object stores have no ``O_EXCL`` and no rename),
and the heartbeat rewrites it (after checking it is still this process's: a lock taken over
meanwhile is not overwritten). Its age is the object's last write on the store's clock.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

from jax.experimental import multihost_utils

from big_transfer import paths

HEARTBEAT_S = 30.0
STALE_S = 300.0
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped cleanly on a signal, checkpoint saved; run again


class LockError(RuntimeError):
  """The workdir is in use by another run."""


class Preempted(Exception):
  """SIGTERM / SIGINT: the run finished its step, saved, and stops (exit PREEMPTED_EXIT)."""

  def __init__(self, step: int | None, signum: int, workdir: str):
    name = signal.Signals(signum).name if signum else "a preemption notice"
    if step is None:
      text = (
        f"{name} outside a training loop (start-up, evaluation or a probe): what was "
        f"saved in {workdir} so far is kept; run the same command again to go on"
      )
    else:
      text = (
        f"{name} at step {step}: checkpoint {step} saved in {workdir}; run the same "
        f"command again to resume from it"
      )
    super().__init__(text)
    self.step, self.signum = step, signum


class OutsideLoopSignals:
  """SIGTERM (and a first SIGINT) while no training loop is running — start-up, compiling,
  evaluation, a probe — stop at once with :class:`Preempted` (exit PREEMPTED_EXIT): nothing is
  in the middle of a save there (every file is written whole and renamed), and the loop's own
  :class:`StopSignals` takes over while it runs."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self._old = {}
    if threading.current_thread() is threading.main_thread():
      for s in (signal.SIGTERM, signal.SIGINT):
        self._old[s] = signal.signal(s, self._handle)

  def _handle(self, signum, frame):
    del frame
    raise Preempted(None, signum, self.workdir)

  def restore(self):
    for s, h in self._old.items():
      signal.signal(s, h)
    self._old = {}


def pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """Held by one process (a run's process 0); ``release()`` or the context manager frees it."""

  def __init__(self, workdir: str, log=print, name: str = ".lock"):
    """``name``: the lock file (a study worker's claim on a run is ``.claim``, beside the run's
    own ``.lock``)."""
    self.path = paths.join(paths.resolve(workdir), name)
    self.log = log
    self.me = {
      "pid": os.getpid(),
      "host": socket.gethostname(),
      "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "token": os.urandom(6).hex(),  # this holder, whatever its pid and host
    }
    self._stop = threading.Event()
    self._thread = None
    self._warned: set[str] = set()
    self.held = False

  def _read(self) -> dict | None:
    try:
      return paths.read_json(self.path)
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}

  def _stale(self, holder: dict) -> str | None:
    """Why the holder is gone, or None when it may be alive."""
    try:
      age = time.time() - paths.mtime(self.path)
    except FileNotFoundError:
      return "released meanwhile"
    if holder.get("host") == self.me["host"] and isinstance(holder.get("pid"), int):
      if not pid_alive(holder["pid"]):
        return f"pid {holder['pid']} on this host is not running"
      return None
    if age > STALE_S:
      return f"no heartbeat for {age:.0f}s"
    return None

  def acquire(self):
    paths.makedirs(paths.dirname(self.path))
    for _ in range(3):
      if not paths.create_exclusive(self.path, json.dumps(self.me).encode()):
        holder = self._read()
        if holder is None:
          continue
        why = self._stale(holder) if holder else None
        if why is None:
          who = (
            f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
            if holder
            else "another run (lock unreadable)"
          )
          raise LockError(
            f"workdir {paths.dirname(self.path)} is in use by {who} "
            f"({self.path}); stop that run or use another --workdir"
          ) from None
        self.log(f"taking over the lock of a run that is gone ({why}): {holder}")
        paths.remove(self.path)
        continue
      self.held = True
      self._thread = threading.Thread(target=self._heartbeat, daemon=True)
      self._thread.start()
      return self
    raise LockError(f"could not take the lock {self.path} (another run keeps taking it)")

  def _heartbeat(self):
    while not self._stop.wait(HEARTBEAT_S):
      self.beat()

  def beat(self) -> bool:
    """Marks the lock alive; False (said once, in a warning line) when the heartbeat fails or
    the lock is no longer this holder's (taken over after missed heartbeats)."""
    holder = self.me
    try:
      if paths.is_url(self.path):
        holder = self._read() or {}
        if holder.get("token") == self.me["token"]:
          paths.write_json(self.path, self.me)
      else:
        os.utime(self.path)
    except Exception as e:  # noqa: BLE001  retried at the next heartbeat
      self._warn_once(
        "failed", f"warning: heartbeat of the lock {self.path} failed ({type(e).__name__}: {e})"
      )
      return False
    if holder.get("token") != self.me["token"]:
      self._warn_once(
        "taken",
        f"warning: the lock {self.path} was taken over by {holder or 'another run'}: that run "
        f"and this one may both write {paths.dirname(self.path)}",
      )
      return False
    return True

  def _warn_once(self, kind: str, line: str) -> None:
    if kind not in self._warned:
      self._warned.add(kind)
      self.log(line)

  def release(self):
    """Frees the lock (only this holder's: one taken over meanwhile is left to its new holder).
    When the store cannot be reached the lock stays, said in one line: the next run on the
    workdir takes it over once its heartbeat is older than STALE_S."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    try:
      holder = self._read() or {}
      mine = holder.get("pid") == self.me["pid"]
      if self.held and mine and holder.get("token", self.me["token"]) == self.me["token"]:
        paths.remove(self.path)
    except Exception as e:  # noqa: BLE001  said, and the lock's way out named
      self.log(
        f"warning: the lock {self.path} could not be released ({type(e).__name__}: "
        f"{str(e)[:200]}); it stays: the next run on {paths.dirname(self.path)} takes it over "
        f"once its heartbeat is older than {STALE_S:.0f}s"
      )
    finally:
      self.held = False

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


class StopSignals:
  """SIGTERM and SIGINT ask the loop to stop after the current step (a second SIGINT
  interrupts at once). With several JAX processes, JAX's preemption service carries the notice
  (SIGTERM on any host, or SIGINT turned into one) so every process stops at the same step."""

  def __init__(self, multi_process: bool):
    self.multi = multi_process
    self.signum = 0
    self._old = {}
    if threading.current_thread() is not threading.main_thread():
      return  # handlers can only be installed from the main thread
    if self.multi:
      self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._to_sigterm)
    else:
      for s in (signal.SIGTERM, signal.SIGINT):
        self._old[s] = signal.signal(s, self._handle)

  def _handle(self, signum, frame):
    del frame
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt  # the second Ctrl-C
    self.signum = signum
    print(
      f"received {signal.Signals(signum).name}: finishing this step, then saving and "
      f"stopping (exit {PREEMPTED_EXIT})",
      flush=True,
    )

  def _to_sigterm(self, signum, frame):
    del signum, frame
    self.signum = signal.SIGINT
    os.kill(os.getpid(), signal.SIGTERM)

  def stop_now(self, step: int) -> bool:
    if self.multi:
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.signum = self.signum or signal.SIGTERM
          return True
      except RuntimeError:  # the preemption service is off: Python handlers only
        return False
      return False
    return bool(self.signum)

  def restore(self):
    for s, h in self._old.items():
      signal.signal(s, h)
    self._old = {}
