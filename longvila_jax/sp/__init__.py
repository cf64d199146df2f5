"""Sequence-parallel attention over the ``ring`` and ``ulysses`` mesh axes.

One algorithm per module: ``order`` (zigzag device order, host side),
``blocks`` (range-based block skip test), ``work`` (attention work per rank),
``ulysses`` (all-to-all), ``ring`` (ppermute ring with custom VJP),
``dispatch`` (``attention``: the scheme table), ``accounting`` (bytes sent),
``plan`` (time model for choosing ring x ulysses), ``overlap`` (HLO check
that the ring's transfers overlap its compute), ``decode`` (a few new
tokens attending over a sequence-sharded KV cache).
"""

from longvila_jax.sp.accounting import CommBytes, comm_bytes
from longvila_jax.sp.decode import cached_attention
from longvila_jax.sp.dispatch import attention, axis_sizes
from longvila_jax.sp.order import balanced_order
from longvila_jax.sp.work import WorkReport, attention_work

__all__ = ["attention", "cached_attention", "axis_sizes", "balanced_order", "attention_work", "WorkReport", "comm_bytes",
           "CommBytes"]
