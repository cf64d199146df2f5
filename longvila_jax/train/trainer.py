"""The training loop: set up, restore, step, log, checkpoint, stop cleanly, export.

``train(config)``:

1. mesh, model (preset or weights; RoPE base; LoRA), split into trainable
   and frozen parameters, optimizer state for the trainable ones only, all
   sharded ZeRO-3 over the mesh;
2. the data pipeline (``train.data_setup``);
3. restore the latest checkpoint of ``<out>/checkpoints`` if there is one
   (model, optimizer, step, RNG, data position);
4. the step is compiled ahead of time once per batch shape (progressive
   lengths add one compile per phase); inside the loop the host only feeds
   batches and reads metrics at logging points, so dispatch runs ahead;
5. checkpoints every ``checkpoint.every`` steps (asynchronous); SIGTERM (or a
   multi-host preemption notice) makes the loop save at the end of the
   current step, wait for the save, and return;
6. at the end: a final checkpoint, ``<out>/export`` (a ``convert
   hf-to-orbax``-style model folder, LoRA merged), ``metrics.jsonl`` and
   ``loss.png``.
"""

from __future__ import annotations

import logging
import shutil
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from longvila_jax.processes import barrier
from longvila_jax.train import flops as flops_lib
from longvila_jax.train.checkpoint import Checkpointer, abstract_like
from longvila_jax.train.config import TrainConfig
from longvila_jax.train.data_setup import StepSource
from longvila_jax.train.freeze import path_name, split_trainable
from longvila_jax.train.metrics import MetricsLogger
from longvila_jax.train.model_setup import build_mesh, load_model, prepare_stage
from longvila_jax.train.optimizer import learning_rate, make_optimizer
from longvila_jax.train.shardings import logical_axes_tree, mirror_shardings, param_shardings
from longvila_jax.train.step import make_train_step

logger = logging.getLogger("longvila_jax.train")


class StopSignal:
    """Turns SIGTERM into a flag the loop checks between steps (all processes agree on the step)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            try:  # jax.distributed's preemption notice: every process stops at the same step
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError:
                return False
        return self.requested

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


class Run:
    """Everything a run holds; :func:`train` drives it.  Tests use the pieces directly."""

    def __init__(self, config: TrainConfig, *, model_config=None, source=None):
        self.config = config
        self.out = Path(config.run.out)
        self.mesh = build_mesh(config.mesh)
        model = load_model(config.model, self.mesh, preset_config=model_config)
        model = prepare_stage(model, config.stage, self.mesh, seed=config.model.seed)
        self.model_config = model.config
        self.hf_source = getattr(model, "hf_source", None)
        self.graphdef, trainable, frozen = split_trainable(model, config.stage.trainable)
        self.trainable_paths = [path_name(p) for p, _ in nnx.to_flat_state(trainable)]
        self.param_shardings = param_shardings(trainable, self.mesh)
        self.frozen_shardings = param_shardings(frozen, self.mesh)
        self.optimizer = make_optimizer(config.optim, logical_axes_tree(trainable))
        self.schedule = learning_rate(config.optim)
        params, self.frozen = nnx.to_pure_dict(trainable), nnx.to_pure_dict(frozen)
        del model, trainable, frozen
        replicated = NamedSharding(self.mesh, P())
        opt_shardings = mirror_shardings(jax.eval_shape(self.optimizer.init, params), self.param_shardings,
                                         self.mesh)
        opt = jax.jit(self.optimizer.init, out_shardings=opt_shardings)(params)
        self.state_shardings = {"params": self.param_shardings, "opt": opt_shardings, "step": replicated,
                                "rng": replicated}
        self.state = {"params": params, "opt": opt,
                      "step": jax.device_put(jnp.zeros((), jnp.int32), replicated),
                      "rng": jax.device_put(jax.random.PRNGKey(config.model.seed), replicated)}
        self.step_fn = make_train_step(self.graphdef, self.optimizer, self.schedule, mesh=self.mesh,
                                       vocab_chunk=config.run.vocab_chunk)
        self._compiled = {}
        self.source = source or StepSource(config.data, self.model_config, self.mesh,
                                           grad_accum=config.run.grad_accum, workdir=self.out)
        self.checkpointer = Checkpointer(self.out / "checkpoints", keep=config.checkpoint.keep,
                                         async_save=config.checkpoint.async_save)
        self.compile_seconds = 0.0

    # ---- state
    @property
    def step(self) -> int:
        return int(self.state["step"])

    def restore_latest(self) -> int | None:
        latest = self.checkpointer.latest_step()
        if latest is None:
            return None
        state, frozen, _ = self.checkpointer.restore(
            latest, abstract_like(self.state, self.state_shardings),
            abstract_like(self.frozen, self.frozen_shardings), self.source)
        self.state, self.frozen = state, frozen
        return latest

    def save(self, step: int) -> None:
        self.checkpointer.save(step, self.state, self.frozen, self.source,
                               {"step": step, "config": self.config.to_dict()})

    def model(self):
        """The current model (an ``nnx`` module holding the live parameters)."""
        model = nnx.merge(self.graphdef, self.state["params"], self.frozen)
        if self.hf_source is not None:
            model.hf_source = self.hf_source
        return model

    # ---- stepping
    def compiled_step(self, batch):
        key = tuple((k, v.shape) for k, v in sorted(batch.items()))
        if key not in self._compiled:
            batch_shardings = {k: v.sharding for k, v in batch.items()}
            jitted = jax.jit(self.step_fn, in_shardings=(self.state_shardings, self.frozen_shardings,
                                                         batch_shardings),
                             out_shardings=(self.state_shardings, NamedSharding(self.mesh, P())),
                             donate_argnums=(0,))
            start = time.perf_counter()
            with jax.set_mesh(self.mesh):
                self._compiled[key] = jitted.lower(self.state, self.frozen, batch).compile()
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[key]

    def run_step(self, batch):
        self.state, metrics = self.compiled_step(batch)(self.state, self.frozen, batch)
        return metrics

    def export(self, folder=None) -> Path | None:
        """Writes the model (LoRA merged when the stage says so) as an Orbax model folder."""
        from longvila_jax.convert.orbax_io import save_orbax
        from longvila_jax.train.lora import has_lora, merge_lora

        folder = Path(folder or self.out / "export")
        if jax.process_index() == 0 and folder.exists():
            shutil.rmtree(folder)
        barrier("export:cleared")
        model = self.model()
        if has_lora(model) and self.config.stage.merge_lora_on_export:
            merge_lora(model)
        save_orbax(model, folder)
        return folder


def _step_record(run: Run, step: int, metrics: dict, info: dict, seconds: float, flop_factors, peak) -> dict:
    counts = flops_lib.step_flops(run.model_config, tokens=info["tokens"], attention_pairs=info["attention_pairs"],
                                  frames=0 if run.source.text_only else info["frames"])
    model_flops = counts.train_flops(llm_factor=flop_factors[0], vision_factor=flop_factors[1])
    per_device = model_flops / max(seconds, 1e-9) / run.mesh.size
    record = {k: float(v) for k, v in metrics.items()}
    record.update(step_time_s=seconds, tokens_per_s=info["tokens"] / max(seconds, 1e-9),
                  tflops_per_device=per_device / 1e12, mfu=(per_device / peak) if peak else None,
                  seq_len=run.source.seq_len_at(step - 1))
    record.update({k: v for k, v in info.items() if k.startswith("skipped/")})
    record["frames"] = info["frames"]
    return record


def train(config: TrainConfig, *, model_config=None, source=None, run: Run | None = None,
          stop_after: int | None = None) -> dict:
    """Runs ``config`` to ``run.steps`` (or until SIGTERM, or ``stop_after`` steps in this call).

    ``source``: a step source in place of the config's data pipeline (``next_step(step)``,
    ``seq_len_at``, ``text_only``, ``get_state``/``set_state``; see ``train.data_setup.StepSource``).
    ``run``: an already built :class:`Run` of ``config`` (to look at the model before training).

    Returns a summary: ``{"step", "losses" {step: loss}, "stopped", "export", "compile_s"}``.
    """
    if config.run.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", config.run.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    run = run or Run(config, model_config=model_config, source=source)
    saving = config.checkpoint.enabled
    if saving and config.checkpoint.resume:
        restored = run.restore_latest()
        if restored is not None:
            logger.info("resumed from %s step %d", run.checkpointer.directory, restored)
    start, total = run.step, config.run.steps
    flop_factors = flops_lib.factors(run.trainable_paths)
    peak = flops_lib.peak_flops_per_device(jax.devices()[0], config.run.peak_tflops)
    log = MetricsLogger(run.out, total_steps=total, initial_step=start, progress=config.run.progress)
    losses, pending, stopped = {}, [], False
    every = config.checkpoint.every
    last_saved = start
    tick = time.perf_counter()
    with StopSignal() as stop:
        step = start
        while step < total:
            batch, info = run.source.next_step(step)
            compile_before = run.compile_seconds
            metrics = run.run_step(batch)
            tick += run.compile_seconds - compile_before  # compile time is not step time
            step += 1
            pending.append((step, metrics, info))
            done = step == total or (stop_after is not None and step - start >= stop_after)
            stopping = stop.should_stop(step)
            if step % config.run.log_every == 0 or done or stopping:
                jax.block_until_ready(pending[-1][1])
                now = time.perf_counter()
                seconds = (now - tick) / len(pending)
                for s, m, i in pending:
                    record = _step_record(run, s, jax.device_get(m), i, seconds, flop_factors, peak)
                    losses[s] = record["loss"]
                    log.log(s, record)
                log.advance(len(pending))
                pending, tick = [], now
            if saving and every and step % every == 0:
                run.save(step)
                last_saved = step
            if stopping:
                stopped = True
                break
            if done:
                break
    if pending:
        jax.block_until_ready(pending[-1][1])
    if saving and last_saved != run.step:
        run.save(run.step)
    run.checkpointer.wait()
    export = None
    if run.step >= total and config.run.export and not stopped:
        export = run.export()
    run.checkpointer.close()
    log.close(plot=True)
    return {"step": run.step, "losses": losses, "stopped": stopped, "export": export,
            "compile_s": run.compile_seconds, "run": run}
