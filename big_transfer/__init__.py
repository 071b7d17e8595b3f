"""big_transfer: a JAX/Flax codebase for studying how pre-training data and method shape transfer."""

import os as _os

__version__ = "0.1.0"

# URLs go through fsspec (gcsfs for gs://) in every library that reads them through etils.epath
# (ours, Orbax's checkpoint files): the one backend whose errors paths.retrying knows and whose
# emulator settings the tests use. etils picks TensorFlow's gfile instead whenever TensorFlow is
# importable (an environment that also prepares TFDS data); EPATH_USE_TF=1 keeps that choice.
_os.environ.setdefault("EPATH_USE_TF", "false")
