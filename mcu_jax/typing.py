"""The types shared across mcu_jax's signatures."""
from __future__ import annotations

from typing import Any

PyTree = Any
"""A JAX pytree: nested dicts, lists, tuples and dataclasses of arrays (params, states)."""

PRNGKey = Any
"""A ``jax.random`` key (typed or a raw uint32[2])."""

__all__ = ["PRNGKey", "PyTree"]
