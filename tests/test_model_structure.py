"""Structure: scanned layers (program size independent of depth), logical axes on every parameter, dtypes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longvila_jax.convert.component import param_variables
from longvila_jax.demo import load_preset
from longvila_jax.models.config import RuntimeConfig
from longvila_jax.models.longvila import LongVILA
from longvila_jax.sharding import LOGICAL_RULES, make_mesh, mesh_axes_for, param_sharding


def _with_depth(config, llm_layers: int, vision_layers: int):
    return dataclasses.replace(config, llm=dataclasses.replace(config.llm, num_layers=llm_layers),
                               vision=dataclasses.replace(config.vision, num_layers=vision_layers))


def _program_size(config) -> int:
    model = nnx.eval_shape(lambda: LongVILA(config, rngs=nnx.Rngs(0)))
    ids = jax.ShapeDtypeStruct((1, 12), jnp.int32)
    pixels = jax.ShapeDtypeStruct((2, config.vision.image_size, config.vision.image_size, 3), jnp.float32)
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s, i, p: nnx.merge(graphdef, s)(i, p))(state, ids, pixels)
    return len(str(jaxpr))


def test_program_size_does_not_grow_with_depth():
    config = load_preset("tiny")
    shallow, deep = _program_size(_with_depth(config, 2, 2)), _program_size(_with_depth(config, 12, 9))
    assert abs(deep - shallow) <= 0.01 * shallow, (shallow, deep)


def test_every_parameter_has_logical_axes_mapped_by_the_rules(seed):
    model = LongVILA(load_preset("tiny"), rngs=nnx.Rngs(seed))
    mesh = make_mesh(data=2, fsdp=2, ring=2, ulysses=1)
    for path, var in param_variables(model).items():
        axes = var.get_metadata("logical_axes")
        assert len(axes) == var.get_value().ndim, path
        assert all(name in LOGICAL_RULES for name in axes), (path, axes)
        if path.startswith(("llm.layers", "vision_tower.layers")):
            assert axes[0] == "layers", path
        sharding = param_sharding(var.get_value().shape, axes, mesh)
        jax.device_put(var.get_value(), sharding)  # must divide evenly


def test_rules_never_use_a_mesh_axis_twice():
    spec = mesh_axes_for(("mlp", "q_proj"), make_mesh(fsdp=8))
    assert spec[0] == "fsdp" and spec[1] is None


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16])
def test_compute_and_parameter_dtypes_are_separate(seed, param_dtype):
    config = load_preset("tiny")
    model = LongVILA(config, RuntimeConfig(dtype=jnp.bfloat16, param_dtype=param_dtype), rngs=nnx.Rngs(seed))
    assert {v.get_value().dtype for v in param_variables(model).values()} == {jnp.dtype(param_dtype)}
    ids = np.full((1, 6), 5, np.int32)
    ids[0, 1] = config.image_token_id
    pixels = np.zeros((1, config.vision.image_size, config.vision.image_size, 3), np.float32)
    hidden = model.llm.hidden_states(model.embed_inputs(ids, model.encode_frames(pixels)))
    assert hidden.dtype == jnp.bfloat16
    assert model(ids, pixels).dtype == jnp.float32
