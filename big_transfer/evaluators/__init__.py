"""Evaluators share one contract: built from config, ``run(state)`` yields ``(name, value)``."""
