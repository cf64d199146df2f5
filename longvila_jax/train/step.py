"""One training step: gradient accumulation over micro-batches, the exact global token mean, the update.

State (a pytree of global arrays, sharded ZeRO-3 by ``train.shardings``)::

    {"params": trainable params (pure dict), "opt": optax state of those,
     "step": int32 [], "rng": PRNG key}

``frozen`` (the parameters a stage does not train) is a separate argument:
no gradient is taken with respect to it and no optimizer state exists for it.

A step's batch has a leading micro-batch axis ``[A, ...]`` (``A`` =
gradient-accumulation steps, 1 included).  The loss of the step is
``sum of per-token losses / number of loss tokens`` over all ``A``
micro-batches and the whole mesh; the gradient is that of this mean
(each micro-batch's gradient of its *sum* is accumulated in float32, then
divided once by the total count), exactly as one big batch would give.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from longvila_jax.train.forward import loss_terms


def loss_sum_fn(graphdef, *, mesh=None, vocab_chunk: int = 8192):
    """``f(trainable, frozen, micro_batch) -> (loss_sum, count)`` with the model merged from its parts."""
    def f(trainable, frozen, batch):
        model = nnx.merge(graphdef, trainable, frozen)
        return loss_terms(model, batch, mesh=mesh, vocab_chunk=vocab_chunk)

    return f


def accumulated_grads(graphdef, trainable, frozen, batches, *, mesh=None, vocab_chunk: int = 8192):
    """``(loss_sum, count, grad_sum)`` over the leading micro-batch axis of ``batches`` (float32 grads)."""
    fn = jax.value_and_grad(loss_sum_fn(graphdef, mesh=mesh, vocab_chunk=vocab_chunk), has_aux=True)
    to_f32 = lambda tree: jax.tree.map(lambda g: g.astype(jnp.float32), tree)  # noqa: E731

    def micro(carry, batch):
        loss_acc, count_acc, grad_acc = carry
        (loss_sum, count), grads = fn(trainable, frozen, batch)
        grad_acc = jax.tree.map(jnp.add, grad_acc, to_f32(grads))
        return (loss_acc + loss_sum, count_acc + count, grad_acc), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
    init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros)
    micro_batches = jax.tree.leaves(batches)[0].shape[0]
    if micro_batches == 1:
        carry, _ = micro(init, jax.tree.map(lambda x: x[0], batches))
    else:
        carry, _ = jax.lax.scan(micro, init, batches)
    return carry


def loss_and_grads(graphdef, trainable, frozen, batches, *, mesh=None, vocab_chunk: int = 8192):
    """The step's mean loss and its gradient w.r.t. ``trainable`` (float32), before clipping."""
    loss_sum, count, grad_sum = accumulated_grads(graphdef, trainable, frozen, batches, mesh=mesh,
                                                  vocab_chunk=vocab_chunk)
    denom = jnp.maximum(count, 1.0)
    return loss_sum / denom, jax.tree.map(lambda g: g / denom, grad_sum), count


def make_train_step(graphdef, optimizer: optax.GradientTransformation, schedule=None, *, mesh=None,
                    vocab_chunk: int = 8192):
    """``step(state, frozen, batches) -> (state, metrics)``, to be jitted with the state donated
    (``train.trainer.Run.compiled_step`` compiles it once per batch shape, under ``jax.set_mesh``).

    ``metrics``: float32 scalars ``loss``, ``tokens`` (loss tokens), ``grad_norm`` (before clipping),
    ``lr``; they stay on device until the host logs them.
    """
    def step(state, frozen, batches):
        loss, grads, count = loss_and_grads(graphdef, state["params"], frozen, batches, mesh=mesh,
                                            vocab_chunk=vocab_chunk)
        params = state["params"]
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        updates, opt = optimizer.update(grads, state["opt"], params)
        params = optax.apply_updates(params, updates)
        rng, _ = jax.random.split(state["rng"])
        metrics = {"loss": loss, "tokens": count, "grad_norm": optax.tree.norm(grads),
                   "lr": jnp.asarray(schedule(state["step"]) if schedule else 0.0, jnp.float32)}
        return {"params": params, "opt": opt, "step": state["step"] + 1, "rng": rng}, metrics

    return step
