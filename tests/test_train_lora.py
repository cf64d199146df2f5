"""LoRA: adapters change the forward as base + adapter; merging gives the same logits; freezing and optimizer state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from longvila_jax.models.longvila import LongVILA
from longvila_jax.train.freeze import path_name, split_trainable
from longvila_jax.train.lora import LoRADense, apply_lora, has_lora, merge_lora
from longvila_jax.train.optimizer import OptimConfig, make_optimizer
from longvila_jax.train.shardings import logical_axes_tree
from train_helpers import tiny_config

LORA_TRAINABLE = ["*.lora_a", "*.lora_b", "llm.embed_tokens.*", "llm.*norm*"]


def random_adapters(model, rng):
    """Gives every ``lora_b`` random values (it starts at zero), so the adapters change the output."""
    for _, module in nnx.iter_graph(model):
        if isinstance(module, LoRADense):
            b = module.lora_b
            b.set_value(jnp.asarray(rng.standard_normal(b.get_value().shape) * 0.05, b.get_value().dtype))


def llm_logits(model, ids):
    return np.asarray(model.llm(jnp.asarray(ids)))


def test_lora_forward_is_base_plus_adapter_and_merge_matches(rng, seed):
    config = tiny_config()
    ids = rng.integers(1, config.llm.vocab_size, (2, 24)).astype(np.int32)
    model = LongVILA(config, rngs=nnx.Rngs(seed))
    base_logits = llm_logits(model, ids)
    base_kernels = {name: np.asarray(getattr(getattr(model.llm.layers, part), name).kernel[...])
                    for part, names in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                                        ("mlp", ("gate_proj", "up_proj", "down_proj"))) for name in names}

    apply_lora(model, rank=4, alpha=8.0, seed=seed)
    assert has_lora(model)
    np.testing.assert_allclose(llm_logits(model, ids), base_logits, rtol=1e-6, atol=1e-6)  # lora_b = 0
    random_adapters(model, rng)
    adapted = llm_logits(model, ids)
    assert np.max(np.abs(adapted - base_logits)) > 1e-3  # the adapters act

    # independent reference: a fresh model whose kernels are W + (alpha/r) A @ B, computed here in NumPy
    reference = LongVILA(config, rngs=nnx.Rngs(seed))
    for part, names in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                        ("mlp", ("gate_proj", "up_proj", "down_proj"))):
        for name in names:
            lora = getattr(getattr(model.llm.layers, part), name)
            a, b = np.asarray(lora.lora_a[...], np.float64), np.asarray(lora.lora_b[...], np.float64)
            want = base_kernels[name] + (8.0 / 4) * np.einsum("lir,lro->lio", a, b)
            getattr(getattr(reference.llm.layers, part), name).kernel.set_value(jnp.asarray(want, jnp.float32))
    np.testing.assert_allclose(adapted, llm_logits(reference, ids), rtol=1e-4, atol=1e-4)

    merge_lora(model)
    assert not has_lora(model)
    assert {path_name(p) for p, _ in nnx.to_flat_state(nnx.state(model))} == \
        {path_name(p) for p, _ in nnx.to_flat_state(nnx.state(reference))}
    np.testing.assert_allclose(llm_logits(model, ids), adapted, rtol=1e-4, atol=1e-4)


def test_lora_stage_trains_only_adapters_embed_norms_and_holds_no_state_for_frozen(seed):
    model = apply_lora(LongVILA(tiny_config(), rngs=nnx.Rngs(seed)), rank=4, alpha=8.0)
    _, trainable, frozen = split_trainable(model, LORA_TRAINABLE)
    names = {path_name(p) for p, _ in nnx.to_flat_state(trainable)}
    assert names and all(n.endswith(("lora_a", "lora_b")) or n.startswith("llm.embed_tokens") or "norm" in n
                         for n in names)
    assert not any(n.endswith("kernel") and "embed" not in n for n in names)
    assert any(path_name(p).endswith("base.kernel") for p, _ in nnx.to_flat_state(frozen))
    params = nnx.to_pure_dict(trainable)
    optimizer = make_optimizer(OptimConfig(lr=1e-3, weight_decay=0.1), logical_axes_tree(trainable))
    opt = optimizer.init(params)
    trainable_size = sum(x.size for x in jax.tree.leaves(params))
    # AdamW keeps two moments per trainable value, nothing for the frozen ones
    assert sum(x.size for x in jax.tree.leaves(opt)) <= 2 * trainable_size + 8
    frozen_size = sum(x.size for x in jax.tree.leaves(nnx.to_pure_dict(frozen)))
    assert frozen_size > 4 * trainable_size


def test_stage_patterns_and_clear_error(seed):
    model = LongVILA(tiny_config(), rngs=nnx.Rngs(seed))
    _, trainable, frozen = split_trainable(model, "alignment")
    assert {path_name(p).split(".")[0] for p, _ in nnx.to_flat_state(trainable)} == {"mm_projector"}
    assert {path_name(p).split(".")[0] for p, _ in nnx.to_flat_state(frozen)} == {"llm", "vision_tower"}
    try:
        split_trainable(model, ["projector.*"])
    except ValueError as err:
        assert "match no parameter" in str(err) and "mm_projector" in str(err)
    else:
        raise AssertionError("a pattern matching nothing must be refused")


def test_weight_decay_skips_norms_and_biases(seed):
    model = LongVILA(tiny_config(), rngs=nnx.Rngs(seed))
    _, trainable, _ = split_trainable(model, "all")
    params = nnx.to_pure_dict(trainable)
    optimizer = make_optimizer(OptimConfig(lr=0.1, weight_decay=0.5, clip_norm=None, warmup_steps=0,
                                           schedule="constant"), logical_axes_tree(trainable))
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(optimizer.update)(zeros, optimizer.init(params), params)
    norm_update = updates["llm"]["layers"]["input_layernorm"]["scale"]
    kernel_update = updates["llm"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert float(jnp.max(jnp.abs(norm_update))) == 0.0
    np.testing.assert_allclose(np.asarray(kernel_update),
                               -0.1 * 0.5 * np.asarray(params["llm"]["layers"]["self_attn"]["q_proj"]["kernel"]),
                               rtol=1e-5)
    assert optax.tree.norm(updates) > 0
