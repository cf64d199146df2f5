"""Training: the MM-SP step, optimizer, freezing, LoRA, the five stages, checkpoints, metrics, multi-host.

One idea per module: ``config`` (JSON configs, inheritance, overrides),
``model_setup`` (mesh, model, RoPE base, LoRA on the mesh), ``freeze``
(trainable patterns), ``lora`` (adapters and merging), ``optimizer``
(AdamW, schedules, clipping), ``shardings`` (ZeRO-3 state and batch
shardings from the logical rules), ``loss`` (chunked cross-entropy), ``forward`` (the
three MM-SP stages and the loss), ``step`` (accumulation, the update),
``data_setup`` (the data pipeline as global arrays), ``checkpoint`` (Orbax),
``metrics`` (JSONL, progress bar, TensorBoard, loss curve), ``flops``
(model FLOPs, MFU), ``distributed`` (``jax.distributed`` from the
environment), ``needle_eval`` (needle accuracy), ``trainer`` (the loop).

Entry points: ``longvila-jax train CONFIG [key=value ...]`` and
:func:`longvila_jax.train.trainer.train`.
"""
