"""Test setup: 8 simulated CPU devices, quiet logs, helpers for runs of the mini config."""

import os
import subprocess
import sys
import tempfile

# Before JAX is imported anywhere: 8 host devices for the sharding tests (the other tests use
# a one-device mesh through train.run(devices=...)).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Many tests compile the same small programs (in this process and in the CLI subprocesses):
# a compilation cache shared by the session cuts the suite's time (XLA:CPU compiles slowly).
# It is the session's own (removed at exit), unless the caller names one to keep across runs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile

  _cache = tempfile.mkdtemp(prefix="bt_jax_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = os.path.join(ROOT, "configs", "mini", "supervised.py")

# A small, fast variant of the mini config: ResNet-18 at 1/8 width, 32px digits, batch 32.
FAST_ARG = "steps=6,batch=32,width=0.125"


def mini_config(arg=FAST_ARG, **overrides):
  from big_transfer import config_lib

  c = config_lib.load(f"{MINI}:{arg}")
  c.log_every = 1
  c.tensorboard = False
  c.eval_data = "none"
  c.optimizer.warmup_steps = 0
  return override(c, **overrides)


def override(config, **overrides):
  """Sets dotted keys: override(c, **{"optimizer.lr": 0.1})."""
  for k, v in overrides.items():
    node = config
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return config


def one_device():
  import jax

  return jax.devices()[:1]


def run_cli(args, *, env=None, timeout=600, check=False):
  """Runs ``python -m big_transfer.train ARGS`` with the test environment."""
  full_env = {**os.environ, **(env or {})}
  return subprocess.run(
    [sys.executable, "-m", "big_transfer.train", *args],
    cwd=ROOT,
    env=full_env,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=check,
  )


def popen_train(args, wd, env=None):
  """``python -m big_transfer.train ARGS --workdir=WD`` started in the background (pipes)."""
  return subprocess.Popen(
    [sys.executable, "-m", "big_transfer.train", *args, f"--workdir={wd}"],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, **(env or {})},
  )


def wait_until(cond, proc=None, timeout=300, poll=0.02):
  """Polls ``cond()`` until true; fails when ``proc`` (if given) ends first or on timeout."""
  import time

  t0 = time.time()
  while not cond():
    if proc is not None and proc.poll() is not None:
      raise AssertionError(f"run ended early: {proc.stderr.read()[-2000:]}")
    if time.time() - t0 > timeout:
      raise AssertionError("timeout")
    time.sleep(poll)


def leaves_equal(a, b):
  """Bitwise equality of two pytrees' leaves, in order."""
  import jax
  import numpy as np

  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(
    np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)
  )


def flip_a_byte(step_dir):
  """Corrupts a checkpoint as a bad disk would: one bit of its largest array file."""
  import glob

  files = [
    f
    for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
    if os.path.isfile(f)
  ]
  biggest = max(files, key=os.path.getsize)
  data = bytearray(open(biggest, "rb").read())
  data[len(data) // 2] ^= 0x40
  open(biggest, "wb").write(bytes(data))


def losses(workdir):
  from big_transfer.logging import read_metrics

  return [r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r]


@pytest.fixture
def config_factory():
  return mini_config


@pytest.fixture(scope="session")
def gcs_emulator():
  """A local GCS API (tests/gcs_emulator.py: PyPI's gcp-storage-emulator, with GCS's object
  preconditions) for the session: its bucket's URL. Clients in this process and every
  subprocess find it through the environment (gcsfs: STORAGE_EMULATOR_HOST; tensorstore:
  TENSORSTORE_GCS_HTTP_URL)."""
  import importlib.util
  import socket
  import time

  if importlib.util.find_spec("gcp_storage_emulator") is None:
    pytest.fail("gcp-storage-emulator is not installed (it is in requirements.txt)")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  faults = os.path.join(tempfile.mkdtemp(prefix="bt-gcs-"), "faults.json")  # store_outage's
  proc = subprocess.Popen(
    [sys.executable, os.path.join(ROOT, "tests", "gcs_emulator.py"), str(port), "bt-test"],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    env={**os.environ, "BT_GCS_FAULTS": faults},
  )
  deadline = time.time() + 30
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      if proc.poll() is not None or time.time() > deadline:
        proc.kill()
        pytest.fail(f"the GCS emulator did not start (exit {proc.poll()})")
      time.sleep(0.2)
  host = f"http://127.0.0.1:{port}"
  env = {
    "STORAGE_EMULATOR_HOST": host,
    "TENSORSTORE_GCS_HTTP_URL": host,
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # a Google API the emulator does not serve
    "NO_GCE_CHECK": "true",  # not on a GCE VM: no metadata-server probe for credentials
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: a token, not a credentials hunt
  }
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  GCS_FAULTS["path"] = faults
  yield "gs://bt-test"
  for k, v in old.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  proc.kill()
  proc.wait()


GCS_FAULTS: dict = {}


class StoreOutage:
  """The emulated bucket's outages (tests/gcs_emulator.py, BT_GCS_FAULTS): ``start(ops=...,
  match=..., seconds=...)`` answers matching requests 503 Service Unavailable until ``stop()``
  (or for ``seconds``)."""

  def start(self, ops=("read", "write", "list", "delete", "bucket"), match="", seconds=None):
    import json
    import time

    fault = {"status": 503, "ops": list(ops), "match": match}
    if seconds:
      fault["until"] = time.time() + seconds
    with open(GCS_FAULTS["path"] + ".tmp", "w") as f:
      json.dump(fault, f)
    os.replace(GCS_FAULTS["path"] + ".tmp", GCS_FAULTS["path"])

  def stop(self):
    if os.path.exists(GCS_FAULTS["path"]):
      os.remove(GCS_FAULTS["path"])


@pytest.fixture
def store_outage(gcs_emulator):
  outage = StoreOutage()
  yield outage
  outage.stop()


@pytest.fixture
def bucket_dir(gcs_emulator, request):
  """A fresh 'directory' in the emulated bucket for this test: gs://bt-test/<test>-<random>."""
  import uuid

  return f"{gcs_emulator}/{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"
