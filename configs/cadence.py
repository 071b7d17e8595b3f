"""The loop's cadence and input threads, in one place for every config: how often a run logs,
evaluates and saves, and how many threads feed it. A config takes a preset and changes only what
differs: ``config_lib.cadence(c, "mini")``, ``config_lib.cadence(c, "accelerator",
checkpoint_every=5000)``. None of these keys can change a run's result (``identity.NEUTRAL``): a
run resumes under new ones.
"""

PRESETS = {
  # CPU-sized runs of seconds to minutes (configs/mini).
  "mini": {"log_every": 20, "checkpoint_every": 100, "eval_every": 100, "data_threads": 2},
  # Accelerator runs of hours to days (configs/pretrain, configs/finetune).
  "accelerator": {
    "log_every": 100,
    "checkpoint_every": 2000,
    "eval_every": 2000,
    "data_threads": 32,
  },
}
