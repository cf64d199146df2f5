"""Model FLOPs of a training step, and MFU.

Model FLOPs count the useful math of the model on the step's real
(non-padding) tokens, not what the hardware ends up doing (no remat
recompute, no padding, no skipped-block savings).  A matmul of ``m x k`` by
``k x n`` is ``2mkn``.  Per step:

* LLM linear layers: ``2 * N_llm * tokens`` forward, with ``N_llm`` the
  weights of every projection (q, k, v, o, gate, up, down) over all layers
  plus the LM head (embedding lookups are free).
* LLM attention: ``4 * layers * Hq * head_dim * sum_i L_i^2 / 2`` forward:
  scores and values (``2 + 2``) for every query-key pair of each packed
  sample of length ``L_i``, causal halved.
* Vision tower (layers actually run) and projector: ``2 * N_vision`` per
  patch, ``4 * layers * P^2 * width`` attention per frame (``P`` patches,
  full mask), ``2 * N_projector`` per visual token; on the step's real frames.
* Training multiplies each part's forward by 3 when its weights train
  (forward, input gradient, weight gradient), by 2 when it only passes
  gradients through (a frozen LLM under a trained projector, or an LLM with
  LoRA adapters), by 1 when no gradient reaches it (a frozen vision tower).

``MFU = model FLOPs / (step seconds * devices * peak FLOP/s per device)``.
"""

from __future__ import annotations

import dataclasses

# Dense bf16 peak per device, FLOP/s (datasheets, without sparsity).
PEAK_BF16 = {"h100": 989e12, "h200": 989e12, "h800": 989e12, "a100": 312e12, "gh200": 989e12, "b200": 2250e12}


@dataclasses.dataclass(frozen=True)
class FlopCounts:
    """Forward FLOPs of each part for one step; ``train_flops`` applies the stage's multipliers."""

    llm_linear: float
    llm_attention: float
    vision: float

    def train_flops(self, *, llm_factor: int, vision_factor: int) -> float:
        return llm_factor * (self.llm_linear + self.llm_attention) + vision_factor * self.vision


def llm_weights(llm) -> int:
    """Matmul weights of the decoder's projections and the LM head."""
    d, f = llm.hidden_size, llm.intermediate_size
    q, kv = llm.num_heads * llm.head_dim, llm.num_kv_heads * llm.head_dim
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * f
    return llm.num_layers * per_layer + d * llm.vocab_size


def vision_frame_flops(config) -> float:
    """Forward FLOPs of the tower (layers used) and projector for one frame."""
    v = config.vision
    patches = v.grid * v.grid
    width, inner = v.hidden_size, v.intermediate_size
    layer = 2 * patches * (4 * width * width + 2 * width * inner) + 4 * patches * patches * width
    embed = 2 * patches * v.patch_size * v.patch_size * v.num_channels * width
    tokens = config.tokens_per_frame
    p = config.projector
    if p.downsample:
        proj = 2 * tokens * (4 * p.vision_hidden_size * p.llm_hidden_size + p.llm_hidden_size ** 2)
    elif p.projector_type == "mlp2x_gelu":
        proj = 2 * tokens * (p.vision_hidden_size * p.llm_hidden_size + p.llm_hidden_size ** 2)
    else:
        proj = 2 * tokens * p.vision_hidden_size * p.llm_hidden_size
    return embed + v.num_layers_used * layer + proj


def step_flops(config, *, tokens: int, attention_pairs: int, frames: int) -> FlopCounts:
    """Forward FLOPs of a step with ``tokens`` real tokens, ``sum L_i^2 = attention_pairs``, ``frames``."""
    llm = config.llm
    linear = 2.0 * llm_weights(llm) * tokens
    attention = 4.0 * llm.num_layers * llm.num_heads * llm.head_dim * attention_pairs / 2
    return FlopCounts(linear, attention, float(frames) * vision_frame_flops(config))


def factors(trainable_paths) -> tuple[int, int]:
    """``(llm_factor, vision_factor)`` from the dotted paths of the trainable parameters."""
    paths = list(trainable_paths)
    llm_full = any(p.startswith("llm.layers") and not p.endswith(("lora_a", "lora_b")) and "norm" not in p
                   for p in paths)
    vision = any(p.startswith("vision_tower") for p in paths)
    return (3 if llm_full else 2), (3 if vision else 1)


def peak_flops_per_device(device, override_tflops: float | None = None) -> float | None:
    """bf16 dense peak of ``device`` in FLOP/s (None when unknown, e.g. CPU)."""
    if override_tflops:
        return float(override_tflops) * 1e12
    kind = getattr(device, "device_kind", "").lower()
    for name, peak in PEAK_BF16.items():
        if name in kind:
            return peak
    return None
