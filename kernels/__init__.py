"""Single-device fused attention (``longvila_jax.kernels``).

``flash_attention`` -> ``(out, lse)``; ``flash_attention_bwd`` -> ``(dq, dk, dv)``
from a given out/lse (``attention_delta``: its per-row term, once for several calls);
``merge_partials`` merges two partial results;
``reference_attention`` is the dense float32 reference for tests.
"""

from .api import attention_delta, flash_attention, flash_attention_bwd
from .block_skip import block_visit_mask
from .dispatch import BACKENDS
from .merge import merge_partials
from .reference import reference_attention

__all__ = ["attention_delta", "flash_attention", "flash_attention_bwd", "merge_partials", "reference_attention",
           "block_visit_mask", "BACKENDS"]
