"""The ``mosaic`` backend: Pallas Mosaic GPU kernels for Hopper (sm_90), every mask.

:mod:`.mosaic_forward` writes out and lse; :mod:`.mosaic_backward` computes
dK/dV and dQ from a given out/lse. Lengths are padded to the 128-token block
here (padding is segment 0, so it sees and is seen by nothing) and the results
sliced back. Valid: Hopper GPU, bf16/fp16, head_dim 64 or 128; everything else
goes to cudnn/triton/xla (SigLIP's D = 72: cudnn on GPU).

``interpret`` (tests on CPU) runs the same kernels under Pallas' GPU interpret
mode; there the ``p``/``ds`` wgmma operands go through SMEM instead of registers.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from . import mosaic_common as mc
from . import mosaic_fused
from . import mosaic_plan as plan
from . import trace_time
from .row_stats import backward_delta, lse_base2

NAME = "mosaic"
_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
HEAD_DIMS = (64, 128)
# Head dims checked against the reference on a GPU (tests/test_kernels_gpu.py): ``auto`` picks
# mosaic only for these; an explicit impl="mosaic" serves every HEAD_DIMS entry.
AUTO_HEAD_DIMS = (64, 128)


def _device_attribute(name: str, default):
    """An attribute of the first device (``default`` without one, or without a backend)."""
    try:
        return getattr(jax.devices()[0], name, default)
    except RuntimeError:
        return default


def _is_hopper() -> bool:
    return str(_device_attribute("compute_capability", "")).split(".")[0] == "9"


# Longest sequences one call serves: a CTA holds a whole visit list in SMEM beside its tiles. The
# forward and dQ kernels keep 192 KiB of tiles and one list entry per 128-key block (25 rows of 1 KiB at
# 768Ki keys, of the 227 KiB a CTA may have); dK/dV keeps 128 KiB and one entry per 64-query block.
# Longer calls: triton or xla, or split the sequence over devices (longvila_jax.sp).
MAX_KV_LEN = 768 * 1024
MAX_Q_LEN = 1024 * 1024


def unsupported(call) -> str | None:
    if call.platform != "gpu":
        return f"needs a Hopper GPU, running on {call.platform}"
    if jnp.dtype(call.dtype) not in _DTYPES:
        return f"needs bfloat16 or float16, got {call.dtype}"
    if call.head_dim not in HEAD_DIMS:
        return f"head_dim must be one of {HEAD_DIMS}, got {call.head_dim}"
    if call.kv_len > MAX_KV_LEN or call.q_len > MAX_Q_LEN:
        return (f"serves at most {MAX_Q_LEN} queries and {MAX_KV_LEN} keys per call (visit lists in SMEM), got "
                f"{call.q_len} and {call.kv_len}: use impl='triton' or 'xla', or sequence parallelism")
    if not _is_hopper():
        return "needs compute capability 9.x (Hopper: wgmma and TMA)"
    return None


def _pad_rows(x, length: int):
    extra = length - x.shape[1]
    return x if extra == 0 else jnp.pad(x, ((0, 0), (0, extra)) + ((0, 0),) * (x.ndim - 2))


# Streamed block rows and SMEM stages per kernel (mosaic_common.Tuning); the bench's
# --mosaic-tuning overrides them. dK/dV streams 64-query blocks: the four float32 tiles a thread
# holds (dk and dv accumulators, s/p, dp) then fit the register file at D = 128.
TUNING = {
    "forward": mc.Tuning(block=128, stages=2),
    "dkdv": mc.Tuning(block=64, stages=2),
    "dq": mc.Tuning(block=128, stages=2),
}


def set_tuning(kernel: str, block: int, stages: int):
    """Override ``TUNING[kernel]`` (benchmarks); the block must be 64 or 128 (a wgmma-sized divisor of
    the 128-row padding), stages at least 1 (too many for SMEM fails at compile time)."""
    if kernel not in TUNING:
        raise ValueError(f"mosaic tuning: kernel must be one of {sorted(TUNING)}, got {kernel!r}")
    if block not in (64, 128) or stages < 1:
        raise ValueError(f"mosaic tuning for {kernel!r}: block must be 64 or 128 and stages >= 1, "
                         f"got block={block}, stages={stages}")
    TUNING[kernel] = mc.Tuning(block=block, stages=stages)


# How the backward gets dQ: "split" runs a dQ kernel that recomputes s and dp (two more matmuls per
# tile, dQ bit-reproducible); "dq_thread" (:mod:`.mosaic_fused`) adds each tile's dQ share inside the dK/dV
# kernel (TMA reduce-adds into a float32 buffer; s and dp computed once), with its products, SMEM staging and
# reduce-adds in the memory thread, off the compute threads' path (64-query dK/dV blocks, 2 slots, else
# split runs); its dQ sums come in a different order each run. (The first fused form, the compute threads
# adding their own shares, took 62.86 ms against split's 47.27 at 32k causal on an H200 and was removed in
# the seventeenth session: kernels/NOTES.md.) "auto" (the default) runs dq_thread from
# ``DQ_THREAD_FROM`` keys on and split below, or split everywhere when XLA is asked for deterministic ops
# (``--xla_gpu_deterministic_ops`` in XLA_FLAGS). On an H200, with dp issued after p (BENCHMARKS.md, runs
# BI-BQ, fwd+bwd): dq_thread is 1.06x split at 32k causal and 1.05x at 16k (run BL), 1.02-1.04x at 8k
# causal (runs BI, BM, BP) with 4 packed samples even (0.99-1.02x), 1.03x at 4k causal but 0.97x packed,
# 0.89x at 2k (run BQ): so from 8,192 keys on.
# Calls whose ids may pack several samples (ids traced, or known to hold more than one segment) start later
# on the devices named in ``DQ_THREAD_FROM_PACKED``: on an H100 (3.35 TB/s against the H200's 4.8, so the
# float32 dQ buffer's zero fill and cast weigh more) split measured 1.08-1.11x dq_thread with 4 packed samples
# at 8k (1.10x as this default, run BX) and 0.99-1.06x at 16k (runs BW, BX), 0.98-0.99x at 32k (runs BV, BW),
# and level on one sample at 8k-16k (0.96-1.02x).
BACKWARD_MODES = ("auto", "split", "dq_thread")
BACKWARD = {"mode": "auto"}
DQ_THREAD_FROM = 8192
DQ_THREAD_FROM_PACKED = {"H100": 32768}  # device kind substring -> first kv length taking dq_thread


def deterministic_requested() -> bool:
    """Whether XLA_FLAGS asks XLA for deterministic GPU ops (``--xla_gpu_deterministic_ops[=true]``)."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    return any(flag in ("--xla_gpu_deterministic_ops", "--xla_gpu_deterministic_ops=true") for flag in flags)


def _device_kind() -> str:
    return str(_device_attribute("device_kind", ""))


def dq_thread_from(packed: bool, device_kind: str | None = None) -> int:
    """The first kv length at which "auto" takes the dq_thread backward: ``DQ_THREAD_FROM``, or for calls
    that may pack samples the ``DQ_THREAD_FROM_PACKED`` entry whose name is in the device kind (None: the
    first device's)."""
    if packed:
        kind = _device_kind() if device_kind is None else device_kind
        for name, start in DQ_THREAD_FROM_PACKED.items():
            if name in kind:
                return start
    return DQ_THREAD_FROM


def backward_mode(head_dim: int, kv_len: int, packed: bool = False, device_kind: str | None = None) -> str:
    """The backward that runs for this call: the chosen mode (see ``BACKWARD_MODES``) with "auto" resolved,
    and "split" where the dq_thread kernel cannot serve the call (head dim, dK/dV tuning). ``packed``:
    the call's ids may hold several samples (:attr:`_Plan.packed`)."""
    mode, tuning = BACKWARD["mode"], TUNING["dkdv"]
    if mode == "auto":
        start = dq_thread_from(packed, device_kind)
        mode = "dq_thread" if kv_len >= start and not deterministic_requested() else "split"
    if mode == "dq_thread" and not mosaic_fused.supports(head_dim, *tuning):
        return "split"
    return mode

# The "dq_thread" kernel's options (mosaic_fused.dkdv_dq): registers per thread (compute, thread 2) and a
# diagnostic probe. Its other forms were measured and removed in the eighteenth session (kernels/NOTES.md).
DQ_THREAD_DEFAULT = dict(registers=mosaic_fused.REGISTERS, probe="none")
DQ_THREAD = dict(DQ_THREAD_DEFAULT)
_DQ_THREAD_NAMES = ("compute", "thread2", "probe")


def set_dq_thread(spec: str):
    """The "dq_thread" kernel's options as NAME:VALUE pairs, checked when it is traced; empty: the defaults.
    E.g. ``"compute:208,thread2:88"`` (registers per thread) or ``"probe:no_add"`` (see
    ``mosaic_fused.PROBES``)."""
    try:
        given = dict(field.split(":") for field in spec.split(",")) if spec else {}
        if set(given) - set(_DQ_THREAD_NAMES):
            raise ValueError
        registers = tuple(int(given.pop(name, default))
                          for name, default in zip(("compute", "thread2"), DQ_THREAD_DEFAULT["registers"]))
    except ValueError:
        raise ValueError(f"mosaic dq_thread options must be NAME:VALUE pairs (e.g. compute:208,thread2:88; "
                         f"names: {', '.join(_DQ_THREAD_NAMES)}), got {spec!r}") from None
    DQ_THREAD.update(dict(DQ_THREAD_DEFAULT, **given, registers=registers))

# The forward's form (kernels/mosaic_forward.py; the alternatives were measured and removed in the seventeenth
# session, kernels/NOTES.md): the pipelined loop (s_j issued with the previous step's p v; the serial loop and
# FlashAttention-3's warpgroup ping-pong were slower: run BV on an H100, ping-pong -6% on plain forwards at 8k
# and 32k), q read from registers (the persistent forward then holds three visit lists, so it stays persistent
# up to 2,046 streamed blocks, 262k keys; longer calls run one CTA per query block and head), and the softmax
# scale folded into exp2's multiply-add (both together +6-9% on an H200 forward against q from SMEM and scaled
# scores, run AK).

# How the forward rescales its accumulator (``mosaic_rescale.RESCALES``): "lazy" (the default: a row's max
# moves only when a tile's scores pass it by more than 2^8, and warps whose rows all kept theirs skip the
# 64 multiplies a thread and step) or "always" (every step, the max following every tile). Measured on an H100
# (BENCHMARKS.md, runs CI-CJ): the fwd+bwd step held at the power cap +0.3-0.4% at 32k causal (0.996 against
# 0.992-0.994 of JAX cuDNN) and +0.2-0.4% at 8k; the forward alone +1.9% at 8k, +0.4% at 32k.
FORWARD_RESCALE_DEFAULT = "lazy"
FORWARD_RESCALE = {"mode": FORWARD_RESCALE_DEFAULT}


def set_forward_rescale(mode: str):
    """Choose how the forward rescales its accumulator (see ``mosaic_rescale.RESCALES``)."""
    from .mosaic_rescale import RESCALES

    _choose("forward rescale", RESCALES, FORWARD_RESCALE, mode)


# The dQ kernel's loop waits for s alone, computing p while dp runs: its "serial" loop was measured and
# removed in the eighteenth session, its row is in kernels/NOTES.md.


# How many CTAs run the forward: "persistent" launches one per SM, each looping over query blocks and
# heads (mosaic_schedule), so the next block's visit list and queries arrive while the current one
# finishes; "blocks" launches one CTA per query block and head (what long calls run, whose lists do not
# fit a persistent CTA). Measured on an H200 (BENCHMARKS.md, run V, kernels alone, 8k tokens): persistent
# forward -8% time with 4 packed samples (causal), -1% plain causal; run X repeated it: -9% / -3%.
# (The dQ kernel runs one CTA per block: its persistent grid was measured and removed in the eighteenth
# session, its row is in kernels/NOTES.md.)
GRID_MODES = ("persistent", "blocks")
GRID = {"forward": "persistent"}
DEFAULT_GRID = dict(GRID)
# Workers of the persistent grid; None: the device's SM count (132 on an H100 or H200 SXM).
PERSISTENT_WORKERS = {"count": None}
DEFAULT_SMS = 132
# The order a persistent grid takes its items in (mosaic_schedule.ITEM_ORDERS): "auto" runs the batch rows'
# lists side by side, longest first over the whole call ("rank"), where one row's items fill only a few waves
# of the grid, and row after row ("batch", the only order before) elsewhere. Why: run CB's profile, 4 rows of
# 2k causal tokens, the forward took 297.8 us against 251.7 us for the same tiles packed into one 8k row;
# grid_balance.py's model puts the rows' order at +22% on the busiest worker (+3% by rank). Not measured yet.
ITEM_ORDER = {"mode": "auto"}


def set_item_order(mode: str):
    """Choose the order of a persistent grid's work items (see ``mosaic_schedule.ITEM_ORDERS``)."""
    from .mosaic_schedule import ITEM_ORDERS

    _choose("item order", ITEM_ORDERS, ITEM_ORDER, mode)


# dQ leaves its kernel through dout's SMEM buffer (one TMA store): the store from registers was measured and
# removed in the eighteenth session, its row is in kernels/NOTES.md.
# A dQ CTA holds one item's rows: prefetching the next item's was measured and removed in the eighteenth
# session, its row is in kernels/NOTES.md.
# The backward's delta is XLA's row sum (:mod:`.row_stats`): delta in the dQ kernel was measured and removed
# in the eighteenth session, its row is in kernels/NOTES.md.


def _grid_kernel(kernel: str):
    if kernel not in GRID:
        raise ValueError(f"mosaic grid: kernel must be 'forward' (the dQ kernel runs one CTA per block), "
                         f"got {kernel!r}")


def workers(kernel: str = "forward") -> int | None:
    """CTAs of ``kernel``'s persistent grid (the forward's), or None for one CTA per block."""
    _grid_kernel(kernel)
    if GRID[kernel] != "persistent":
        return None
    if PERSISTENT_WORKERS["count"] is not None:
        return PERSISTENT_WORKERS["count"]
    return int(_device_attribute("core_count", 0)) or DEFAULT_SMS


def _choose(part: str, modes: tuple, state: dict, mode: str):
    if mode not in modes:
        raise ValueError(f"mosaic {part}: mode must be one of {modes}, got {mode!r}")
    state["mode"] = mode


def set_backward(mode: str):
    """Choose how the backward computes dQ (see ``BACKWARD_MODES``)."""
    _choose("backward", BACKWARD_MODES, BACKWARD, mode)


def set_grid(mode: str, kernel: str = "forward"):
    """Choose the grid (see ``GRID_MODES``) of ``kernel`` (only the forward has a choice)."""
    _grid_kernel(kernel)
    if mode not in GRID_MODES:
        raise ValueError(f"mosaic grid: mode must be one of {GRID_MODES}, got {mode!r}")
    GRID[kernel] = mode


# Which masked tiles get the cheaper, positions-only mask (:mod:`.mosaic_plan` ``MASK_KINDS``):
# "positions" (the default) gives it to causal tiles of one and the same segment on both sides (a sample's
# diagonal: there the segment test cannot fail, so the ids are neither loaded nor compared); "full" gives
# every tile that is not whole the full mask, as before. Offline prediction (not measured yet): the
# diagonal tiles are 3% of an 8k causal call's tiles and 12% with 4 packed samples, each saving a
# quarter to a third of its mask work, so the packed 8k kernels -1% to -3%, plain ones under -0.5%.
MASK_TILE_MODES = ("positions", "full")
MASK_TILES = {"mode": "positions"}


def set_mask_tiles(mode: str):
    """Choose which masked tiles take the positions-only mask (see ``MASK_TILE_MODES``)."""
    _choose("mask tiles", MASK_TILE_MODES, MASK_TILES, mode)


def positions_mask() -> bool:
    """Whether the visit lists hold ``POSITIONS`` tiles (the kernels then branch three ways on a tile's
    mask kind; else two ways, as before the kind existed)."""
    return MASK_TILES["mode"] == "positions"


# A call whose segment ids and positions are known when it is traced (none given: the defaults; or
# closed over), outside shard_map (:mod:`.trace_time`), gets its visit lists computed then, as constants
# of the compiled program, when its tile table has at most this many tiles (the lists then take at most
# a few MiB): no XLA work per call.
STATIC_PLAN_TILES = 1 << 20


def _one_segment_per_row(q_seg, kv_seg) -> bool:
    """Whether each batch row's query and key ids (concrete) hold at most one nonzero segment id."""
    with jax.ensure_compile_time_eval():
        ids = jnp.concatenate([q_seg.astype(jnp.int32), kv_seg.astype(jnp.int32)], axis=1)
        highest = ids.max(axis=1, keepdims=True)
        lowest = jnp.where(ids != 0, ids, highest).min(axis=1, keepdims=True)
        return bool((lowest == highest).all())


class _Plan:
    """Padded token arrays and visit lists of one call (lengths padded to ``BLOCK``, which every
    streamed block size divides); computed at trace time when the ids are concrete and the tile
    table small (``STATIC_PLAN_TILES``), else by XLA in the call. ``packed``: the ids may hold several
    samples in a row (they are traced, or concrete with more than one segment)."""

    def __init__(self, q_seg, kv_seg, q_pos, kv_pos, causal):
        self.args = (q_seg, q_pos, kv_seg, kv_pos)
        self.causal = causal
        self.q_len, self.kv_len = q_seg.shape[1], kv_seg.shape[1]
        self.q_pad, self.kv_pad = plan.round_up(self.q_len, mc.BLOCK), plan.round_up(self.kv_len, mc.BLOCK)
        smallest = 64  # the smallest streamed block: the largest table
        tiles = q_seg.shape[0] * (self.q_pad // smallest) * (self.kv_pad // smallest)
        self.static = trace_time.can_evaluate(*self.args) and tiles <= STATIC_PLAN_TILES
        self.packed = not (trace_time.can_evaluate(q_seg, kv_seg) and _one_segment_per_row(q_seg, kv_seg))
        self._lists = {}
        with self._evaluation():
            self.q_tokens = plan.token_array(q_seg, q_pos, self.q_pad)
            self.kv_tokens = plan.token_array(kv_seg, kv_pos, self.kv_pad)

    def _evaluation(self):
        return trace_time.evaluation(self.static)

    @staticmethod
    def _one_segment(tiles):
        """The tiles that take the positions-only mask (``MASK_TILES``), or None."""
        return tiles.one_segment if positions_mask() else None

    def per_query_block(self, kv_block: int):
        """For each resident query block, the visited key blocks of ``kv_block`` rows."""
        if ("query", kv_block) not in self._lists:
            with self._evaluation():
                tiles = plan.tile_table(*self.args, causal=self.causal, block_q=mc.BLOCK, block_k=kv_block)
                self._lists["query", kv_block] = plan.visit_lists(tiles.visit, tiles.whole, self._one_segment(tiles))
        return self._lists["query", kv_block]

    def per_key_block(self, q_block: int):
        """For each resident key block, the visited query blocks of ``q_block`` rows."""
        if ("key", q_block) not in self._lists:
            with self._evaluation():
                tiles = plan.tile_table(*self.args, causal=self.causal, block_q=q_block, block_k=mc.BLOCK)
                one_segment = self._one_segment(tiles)
                self._lists["key", q_block] = plan.visit_lists(
                    tiles.visit.transpose(0, 2, 1), tiles.whole.transpose(0, 2, 1),
                    None if one_segment is None else one_segment.transpose(0, 2, 1))
        return self._lists["key", q_block]

    def arrays(self, forward: bool = True):
        """What the kernels of one call read: ``(q_tokens, kv_tokens, forward lists or None, dK/dV lists,
        dQ lists)`` for the current ``TUNING``."""
        return (self.q_tokens, self.kv_tokens,
                self.per_query_block(TUNING["forward"].block) if forward else None,
                self.per_key_block(TUNING["dkdv"].block), self.per_query_block(TUNING["dq"].block))


def forward(q, k, v, plan_arrays, *, causal, scale, interpret=None):
    """-> out ``[B, Sq, Hq, D]``, lse float32 ``[B, Hq, Sq]``. ``plan_arrays``: ``_Plan.arrays()``."""
    from .mosaic_forward import forward as kernel

    q_tokens, kv_tokens, lists, _, _ = plan_arrays
    q_len, q_pad, kv_pad = q.shape[1], q_tokens.shape[-1], kv_tokens.shape[-1]
    out, lse = kernel(_pad_rows(q, q_pad), _pad_rows(k, kv_pad), _pad_rows(v, kv_pad), q_tokens, kv_tokens, lists,
                      causal=causal, scale=scale, tuning=TUNING["forward"], workers=workers("forward"),
                      positions_mask=positions_mask(), item_order=ITEM_ORDER["mode"], rescale=FORWARD_RESCALE["mode"],
                      interpret=interpret)
    return out[:, :q_len], lse[:, :, :q_len]


def dq_thread_grads(q, k, v, dout, stats, q_tokens, kv_tokens, key_lists, *, causal, scale, positions_mask=True,
                    interpret=None):
    """``(dq, dk, dv)`` of padded operands from the dq_thread kernel (``mosaic_fused.dkdv_dq`` with ``DQ_THREAD``
    and the dK/dV tuning): dQ added up unscaled in a zeroed float32 buffer inside the dK/dV kernel, then
    scaled and cast to q's dtype."""
    dq_acc = jax.new_ref(jnp.zeros(q.shape, jnp.float32))
    dk, dv = mosaic_fused.dkdv_dq(q, k, v, dout, stats, q_tokens, kv_tokens, key_lists, dq_acc, causal=causal,
                                  scale=scale, tuning=TUNING["dkdv"], positions_mask=positions_mask,
                                  interpret=interpret, **DQ_THREAD)
    return (dq_acc[...] * scale).astype(q.dtype), dk, dv


def backward(q, k, v, out, lse, dout, dlse, plan_arrays, *, causal, scale, delta=None, packed=True, interpret=None):
    """``(dq, dk, dv)`` from out, lse ``[B, Hq, Sq]`` and cotangents dout, dlse (or None); ``delta``:
    rowsum(dout * out) - dlse when the caller computed it, else None; ``packed``: ``_Plan.packed``."""
    from .mosaic_backward import dkdv, dq

    q_tokens, kv_tokens, _, key_lists, query_lists = plan_arrays
    q_len, kv_len, q_pad, kv_pad = q.shape[1], k.shape[1], q_tokens.shape[-1], kv_tokens.shape[-1]
    lse = lse.astype(jnp.float32)
    tuning = TUNING["dkdv"]
    dq_thread = backward_mode(q.shape[-1], kv_len, packed) == "dq_thread"
    delta = backward_delta(out, dout, lse, dlse, delta)
    stats = jnp.pad(jnp.stack([lse_base2(lse), delta], axis=2), ((0, 0), (0, 0), (0, 0), (0, q_pad - q_len)))
    q_p, k_p, v_p = _pad_rows(q, q_pad), _pad_rows(k, kv_pad), _pad_rows(v, kv_pad)
    dout_p = _pad_rows(dout.astype(q.dtype), q_pad)
    positions = positions_mask()
    if dq_thread:
        dq_, dk, dv = dq_thread_grads(q_p, k_p, v_p, dout_p, stats, q_tokens, kv_tokens, key_lists, causal=causal,
                                      scale=scale, positions_mask=positions, interpret=interpret)
    else:
        dq_ = dq(q_p, k_p, v_p, dout_p, stats, q_tokens, kv_tokens, query_lists, causal=causal, scale=scale,
                 tuning=TUNING["dq"], positions_mask=positions, item_order=ITEM_ORDER["mode"], interpret=interpret)
        dk, dv = dkdv(q_p, k_p, v_p, dout_p, stats, q_tokens, kv_tokens, key_lists, causal=causal, scale=scale,
                      tuning=tuning, positions_mask=positions, interpret=interpret)
    return dq_[:, :q_len], dk[:, :kv_len], dv[:, :kv_len]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _attention(q, k, v, plan_arrays, causal, scale, packed, interpret):
    return forward(q, k, v, plan_arrays, causal=causal, scale=scale, interpret=interpret)


def _attention_fwd(q, k, v, plan_arrays, causal, scale, packed, interpret):
    out, lse = forward(q, k, v, plan_arrays, causal=causal, scale=scale, interpret=interpret)
    return (out, lse), (q, k, v, plan_arrays, out, lse)


def _attention_bwd(causal, scale, packed, interpret, residuals, cotangents):
    q, k, v, plan_arrays, out, lse = residuals
    dout, dlse = cotangents
    dq, dk, dv = backward(q, k, v, out, lse, dout, dlse, plan_arrays, causal=causal, scale=scale, packed=packed,
                          interpret=interpret)
    return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, *, causal, scale, call=None, interpret=None, **unused):
    """Differentiable ``(out, lse)``; ids/positions complete int32 arrays."""
    del call, unused
    plan = _Plan(q_seg, kv_seg, q_pos, kv_pos, causal)
    return _attention(q, k, v, plan.arrays(), causal, scale, plan.packed, interpret)


def attention_bwd(q, k, v, out, lse, dout, dlse, q_seg, kv_seg, q_pos, kv_pos, *, causal, scale,
                  call=None, delta=None, interpret=None, **unused):
    del call, unused
    plan = _Plan(q_seg, kv_seg, q_pos, kv_pos, causal)
    return backward(q, k, v, out, lse, dout, dlse, plan.arrays(forward=False), causal=causal, scale=scale, delta=delta,
                    packed=plan.packed, interpret=interpret)
