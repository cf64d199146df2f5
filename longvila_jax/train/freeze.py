"""Which parameters a stage trains: glob patterns over dotted parameter paths.

A parameter's path is its place in the model joined by dots, for example
``llm.layers.self_attn.q_proj.kernel``, ``vision_tower.patch.patch.bias``,
``mm_projector.fc1.kernel`` or, with LoRA, ``llm.layers.self_attn.q_proj.lora_a``.
``trainable`` is a list of ``fnmatch`` patterns; a parameter trains iff its
path matches one.  The model is split into ``(trainable, frozen)`` pure
dicts: the optimizer (and its state) sees only ``trainable``, and gradients
are taken only with respect to it, so frozen parts cost no optimizer memory
and no weight-gradient compute.

Presets: ``alignment`` = ``["mm_projector.*"]``, ``pretrain`` =
``["mm_projector.*", "llm.*"]``, ``all`` = ``["*"]``; LoRA stages name the
adapters (``"*.lora_a"``, ``"*.lora_b"``) and optionally ``"llm.embed_tokens.*"``
and ``"*norm*"``.
"""

from __future__ import annotations

import fnmatch

from flax import nnx

PRESETS = {
    "alignment": ("mm_projector.*",),
    "pretrain": ("mm_projector.*", "llm.*"),
    "all": ("*",),
    "llm": ("llm.*",),
}


def expand(patterns) -> tuple[str, ...]:
    """Patterns with preset names (``alignment``, ``pretrain``, ``all``, ``llm``) expanded."""
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns:
        out.extend(PRESETS.get(p, (p,)))
    return tuple(out)


def path_name(path) -> str:
    return ".".join(str(k) for k in path)


def trainable_filter(patterns):
    """An ``nnx`` filter ``(path, value) -> bool`` for parameters matching ``patterns``."""
    patterns = expand(patterns)

    def matches(path, value) -> bool:
        return isinstance(value, nnx.Param) and any(fnmatch.fnmatchcase(path_name(path), p) for p in patterns)

    return matches


def split_trainable(model: nnx.Module, patterns):
    """``(graphdef, trainable, frozen)``: ``nnx.State``s of the parameters that train and of the rest.

    Raises ``ValueError`` when no parameter matches (a typo in the stage config).
    """
    graphdef, trainable, frozen = nnx.split(model, trainable_filter(patterns), ...)
    if not nnx.to_flat_state(trainable):
        names = sorted({path_name(p).split(".")[0] for p, _ in nnx.to_flat_state(frozen)})
        raise ValueError(f"trainable patterns {list(expand(patterns))} match no parameter; paths start with "
                         f"{names} (e.g. 'mm_projector.*', 'llm.*', '*.lora_a')")
    return graphdef, trainable, frozen
