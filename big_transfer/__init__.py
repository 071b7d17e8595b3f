"""big_transfer: a JAX/Flax codebase for studying how pre-training data and method shape transfer."""

__version__ = "0.1.0"
