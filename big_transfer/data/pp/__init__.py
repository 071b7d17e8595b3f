"""Preprocessing ops by kind; ``big_transfer.data.ops`` is the public entry."""
