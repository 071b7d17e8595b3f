"""Entry-point plumbing shared by train, finetune and study: flags, jax.distributed, the run's
config record, and bad input as one ``error:`` line with a documented exit code.

Exit codes: 0 done; 2 bad input (config, data, checkpoint, a workdir in use); 3 a non-finite
loss or gradient; 75 stopped on SIGTERM/SIGINT after saving a checkpoint, or outside a training
loop (run the same command again to resume); 130 a second Ctrl-C stopped a loop without saving.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from big_transfer import checkpoint as ckpt_lib
from big_transfer import config_lib, paths, runlock, schema
from big_transfer import logging as log_lib
from big_transfer.data import ops, sources
from big_transfer.evaluators.common import EvalConfigError
from big_transfer.workdir import Workdir

FLAGS = flags.FLAGS


def define_flags(
  config_help: str = "Config file (configs/...py[:args]).", lock_config: bool = True
) -> None:
  """The entrypoints' flags (train, finetune, study), defined by the one that runs: modules
  import each other, and absl allows each flag once."""
  if "config" in FLAGS:
    return
  config_flags.DEFINE_config_file("config", None, config_help, lock_config=lock_config)
  flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the config are written.")
  flags.DEFINE_string(
    "coordinator_address",
    None,
    "Multi-process: host:port of process 0 (explicit jax.distributed setup).",
  )
  flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
  flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
  flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "join", "off"],
    "Whether this process joins others into one JAX job: 'auto' joins the tasks of a SLURM "
    "job step (SLURM_NTASKS > 1) or a TPU pod's hosts; 'join' requires that (an error "
    "otherwise); 'off' never joins: independent runs packed as tasks stay independent.",
  )
  flags.DEFINE_string(
    "accept_changes",
    "",
    "Resume a workdir whose run had another config: "
    "the keys whose change is accepted (comma-separated, or 'all'); recorded "
    "in WORKDIR/run.json. Without it, a restart with another config is "
    "refused (keys that cannot alter the result excepted).",
  )
  flags.DEFINE_bool(
    "print_config",
    False,
    "Print every key of the resolved config (with the "
    "command line's overrides), its value and meaning, and exit.",
  )


class UserError(ValueError):
  """Bad input detected before any compile; printed as one line."""


# Every error that is the user's input, not a bug: an entrypoint prints it as one ``error:``
# line and exits 2 (each is raised through main_of in tests/test_train.py).
USER_ERRORS = (
  config_lib.ConfigError,
  schema.SectionError,
  sources.DataError,
  ops.PreprocessError,
  EvalConfigError,
  UserError,
  ckpt_lib.CheckpointError,
  runlock.LockError,
  paths.URLPathError,
)


def maybe_initialize_distributed(
  coordinator_address=None, num_processes=None, process_id=None, mode: str = "auto", env=None
) -> bool:
  """jax.distributed from explicit flags, SLURM's environment or a TPU pod's; else nothing.
  ``mode`` (--distributed): 'auto' as found, 'join' requires a multi-process environment, 'off'
  never joins (independent runs packed as tasks of one step). Returns whether it joined."""
  env = os.environ if env is None else env
  explicit = coordinator_address is not None
  slurm = int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env
  tpu_pod = len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
  if mode == "off":
    if explicit:
      raise UserError("--distributed=off with --coordinator_address: say one or the other")
    return False
  if not (explicit or slurm or tpu_pod):
    if mode == "join":
      raise UserError(
        "--distributed=join: no multi-process environment (a SLURM step of several tasks, "
        "a TPU pod, or --coordinator_address/--num_processes/--process_id)"
      )
    return False
  if jax.distributed.is_initialized():
    return True
  if explicit and "cpu" in env.get("JAX_PLATFORMS", "cpu"):
    # CPU collectives across processes (tests, laptops): gloo over TCP.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # A process whose peer died (killed, its host gone) must not wait for it forever in a
  # collective: JAX's coordination service ends it once the peer's heartbeat is this late.
  kwargs = {"heartbeat_timeout_seconds": int(env.get("BT_HEARTBEAT_TIMEOUT_S", "60"))}
  if explicit:
    kwargs.update(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
  jax.distributed.initialize(**kwargs)
  return True


def write_config(config, workdir: str, resolved: dict[str, Any]):
  """WORKDIR/config.json: every key of the config and what the run resolved (process 0)."""
  write_record({"config": config_lib.to_plain(config), "resolved": resolved}, workdir)


def write_record(out: dict[str, Any], workdir: str):
  """WORKDIR/config.json: what a run trains with ({config, resolved}; process 0)."""
  if jax.process_index() != 0:
    return
  paths.makedirs(workdir)
  paths.write_json(Workdir(workdir).config, out, indent=1, sort_keys=True, default=str)


def main_of(run_fn, extra_user_errors: tuple = (), sections=None):
  """An absl main for an entrypoint ``run_fn(config, workdir)``: quiet library logs, the
  required flags, jax.distributed, and bad input as one ``error:`` line (exit 2; a non-finite
  loss exits 3; stopped by SIGTERM/SIGINT after saving: exit 75, run again to resume).
  ``sections()``: the config's sections beyond the base config's (--print_config's meanings)."""

  def main(argv):
    del argv
    if not FLAGS["verbosity"].present:  # orbax/grain log every save at INFO
      absl_logging.set_verbosity(absl_logging.WARNING)
      log_lib.quiet_library_noise()
    if FLAGS.print_config and FLAGS.config is not None:
      print(config_lib.describe(FLAGS.config, tuple(sections()) if sections else ()))
      return
    if FLAGS.config is None or FLAGS.workdir is None:
      print("error: --config and --workdir are required", file=sys.stderr)
      sys.exit(2)
    signals = runlock.OutsideLoopSignals(FLAGS.workdir)
    try:
      paths.check_location(FLAGS.workdir, "--workdir")
      maybe_initialize_distributed(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.distributed
      )
      run_fn(FLAGS.config, FLAGS.workdir, accept_changes=FLAGS.accept_changes)
    except runlock.Preempted as e:
      print(f"stopped: {e} (exit {runlock.PREEMPTED_EXIT})", file=sys.stderr)
      sys.exit(runlock.PREEMPTED_EXIT)
    except KeyboardInterrupt:  # a second Ctrl-C inside the loop: no save
      print(
        f"interrupted: a second Ctrl-C stopped the run without saving; the checkpoints in "
        f"{FLAGS.workdir} are as they were (run the same command again to resume from the "
        f"newest) (exit 130)",
        file=sys.stderr,
        flush=True,
      )
      os._exit(130)  # pylint: disable=protected-access  (no tracebacks from saving threads)
    except (*USER_ERRORS, *extra_user_errors) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except FloatingPointError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(3)
    finally:
      signals.restore()

  return main
