"""Triton flash-attention kernels (forward, dK/dV, dQ) with segment and position masks.

Pure Triton: no JAX here, so the same kernels run under jax_triton on a GPU
and under ``TRITON_INTERPRET=1`` on CPU (tests). Launchers live in
:mod:`.triton_backend`.

Memory layout (row-major, contiguous): q/out/dout ``[B, Sq, Hq, D]``,
k/v ``[B, Sk, Hkv, D]``, ids/positions int32 ``[B, S]``, lse/delta float32
``[B, Hq, Sq]``. Block ranges int32 ``[B, n_blocks]`` (from
:func:`.block_skip.block_ranges`): a tile is computed only if its query and
key blocks' segment ranges overlap and (causal) the key block's smallest
position is <= the query block's largest. GQA: query head h reads kv head
``h // G``; the dK/dV kernel loops over the G query heads of its kv head, so
no atomics anywhere. Softmax runs in base 2 (``exp2``, scores times log2 e);
lse is stored and read in natural log. ``BLOCK_D`` is D rounded up to a
power of two (>= 16); the extra columns are masked.
"""

import triton
import triton.language as tl

@triton.jit
def _block_base(b, row0, S: tl.constexpr, H: tl.constexpr, head, D: tl.constexpr):
    """Scalar int64 offset of element (b, row0, head, 0) of a ``[B, S, H, D]`` array."""
    return ((b * S + row0).to(tl.int64) * H + head) * D


@triton.jit
def _tile_offsets(BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, H: tl.constexpr, D: tl.constexpr):
    """int32 ``[BLOCK_R, BLOCK_D]`` offsets of a tile from its block base (row stride H*D)."""
    return tl.arange(0, BLOCK_R)[:, None] * (H * D) + tl.arange(0, BLOCK_D)[None, :]


@triton.jit
def _tile_mask(q_seg, q_pos, kv_seg, kv_pos, CAUSAL: tl.constexpr):
    """Boolean [BLOCK_M, BLOCK_N]: query row sees key column."""
    mask = (q_seg[:, None] == kv_seg[None, :]) & (q_seg[:, None] != 0)
    if CAUSAL:
        mask = mask & (kv_pos[None, :] <= q_pos[:, None])
    return mask


@triton.jit
def _tile_mask_t(q_seg, q_pos, kv_seg, kv_pos, CAUSAL: tl.constexpr):
    """Boolean [BLOCK_N, BLOCK_M]: key row is seen by query column (the transpose)."""
    mask = (kv_seg[:, None] == q_seg[None, :]) & (q_seg[None, :] != 0)
    if CAUSAL:
        mask = mask & (kv_pos[:, None] <= q_pos[None, :])
    return mask


@triton.jit
def _tile_visited(q_seg_min, q_seg_max, q_pos_max, kv_seg_min, kv_seg_max, kv_pos_min,
                  CAUSAL: tl.constexpr):
    """May the (query block, key block) tile hold a visible pair? (scalars)"""
    visit = (q_seg_min <= kv_seg_max) & (kv_seg_min <= q_seg_max)
    if CAUSAL:
        visit = visit & (kv_pos_min <= q_pos_max)
    return visit


@triton.jit
def flash_fwd_kernel(
    q_ptr, k_ptr, v_ptr, q_seg_ptr, q_pos_ptr, kv_seg_ptr, kv_pos_ptr,
    qr_seg_min_ptr, qr_seg_max_ptr, qr_pos_max_ptr, kr_seg_min_ptr, kr_seg_max_ptr, kr_pos_min_ptr,
    out_ptr, lse_ptr,
    SCALE: tl.constexpr, CAUSAL: tl.constexpr,
    SQ: tl.constexpr, SK: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Grid (cdiv(SQ, BLOCK_M), B * HQ). Writes out (q's dtype) and lse (float32, natural log)."""
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    hk = h // (HQ // HKV)
    NQ: tl.constexpr = (SQ + BLOCK_M - 1) // BLOCK_M
    NK: tl.constexpr = (SK + BLOCK_N - 1) // BLOCK_N

    offs_m = i * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < SQ
    d_ok = offs_d < D
    q_off = _block_base(b, i * BLOCK_M, SQ, HQ, h, D) + _tile_offsets(BLOCK_M, BLOCK_D, HQ, D)
    q_ok = row_ok[:, None] & d_ok[None, :]
    q_tile = tl.load(q_ptr + q_off, mask=q_ok, other=0.0)
    q_seg = tl.load(q_seg_ptr + b * SQ + offs_m, mask=row_ok, other=0)
    q_pos = tl.load(q_pos_ptr + b * SQ + offs_m, mask=row_ok, other=0)
    q_seg_min = tl.load(qr_seg_min_ptr + b * NQ + i)
    q_seg_max = tl.load(qr_seg_max_ptr + b * NQ + i)
    q_pos_max = tl.load(qr_pos_max_ptr + b * NQ + i)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    qk_scale = SCALE * 1.4426950408889634
    for j in range(0, NK):
        kv_seg_min = tl.load(kr_seg_min_ptr + b * NK + j)
        kv_seg_max = tl.load(kr_seg_max_ptr + b * NK + j)
        kv_pos_min = tl.load(kr_pos_min_ptr + b * NK + j)
        if _tile_visited(q_seg_min, q_seg_max, q_pos_max, kv_seg_min, kv_seg_max, kv_pos_min, CAUSAL):
            offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)
            col_ok = offs_n < SK
            kv_off = _block_base(b, j * BLOCK_N, SK, HKV, hk, D) + _tile_offsets(BLOCK_N, BLOCK_D, HKV, D)
            kv_ok = col_ok[:, None] & d_ok[None, :]
            k_tile = tl.load(k_ptr + kv_off, mask=kv_ok, other=0.0)
            v_tile = tl.load(v_ptr + kv_off, mask=kv_ok, other=0.0)
            kv_seg = tl.load(kv_seg_ptr + b * SK + offs_n, mask=col_ok, other=0)
            kv_pos = tl.load(kv_pos_ptr + b * SK + offs_n, mask=col_ok, other=0)
            s = tl.dot(q_tile, tl.trans(k_tile)) * qk_scale
            s = tl.where(_tile_mask(q_seg, q_pos, kv_seg, kv_pos, CAUSAL), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v_tile.dtype), v_tile)
            m_i = m_new

    seen = l_i > 0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    # Offsets and masks are rebuilt here rather than kept live (in registers) across the loop.
    out_off = _block_base(b, i * BLOCK_M, SQ, HQ, h, D) + _tile_offsets(BLOCK_M, BLOCK_D, HQ, D)
    out_ok = (offs_m < SQ)[:, None] & (offs_d < D)[None, :]
    tl.store(out_ptr + out_off, out.to(out_ptr.dtype.element_ty), mask=out_ok)
    tl.store(lse_ptr + (b * HQ + h) * SQ + offs_m, lse, mask=row_ok)


@triton.jit
def _probabilities(q_tile, k_tile, lse2, q_seg, q_pos, kv_seg, kv_pos, qk_scale, CAUSAL: tl.constexpr):
    """p = exp2(s2 - lse2) on visible entries, else 0; lse2 is +inf on empty rows."""
    s = tl.dot(q_tile, tl.trans(k_tile)) * qk_scale
    p = tl.math.exp2(s - lse2[:, None])
    return tl.where(_tile_mask(q_seg, q_pos, kv_seg, kv_pos, CAUSAL), p, 0.0)


@triton.jit
def flash_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr,
    q_seg_ptr, q_pos_ptr, kv_seg_ptr, kv_pos_ptr,
    qr_seg_min_ptr, qr_seg_max_ptr, qr_pos_max_ptr, kr_seg_min_ptr, kr_seg_max_ptr, kr_pos_min_ptr,
    dk_ptr, dv_ptr,
    SCALE: tl.constexpr, CAUSAL: tl.constexpr,
    SQ: tl.constexpr, SK: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Grid (cdiv(SK, BLOCK_N), B * HKV). dk/dv of one key block, summed over the GQA group.

    delta = rowsum(dout * out) - dlse (float32, 0 on empty rows) comes precomputed.
    """
    j = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HKV
    hk = bh % HKV
    G: tl.constexpr = HQ // HKV
    NQ: tl.constexpr = (SQ + BLOCK_M - 1) // BLOCK_M
    NK: tl.constexpr = (SK + BLOCK_N - 1) // BLOCK_N

    offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_n < SK
    d_ok = offs_d < D
    kv_off = _block_base(b, j * BLOCK_N, SK, HKV, hk, D) + _tile_offsets(BLOCK_N, BLOCK_D, HKV, D)
    kv_ok = col_ok[:, None] & d_ok[None, :]
    k_tile = tl.load(k_ptr + kv_off, mask=kv_ok, other=0.0)
    v_tile = tl.load(v_ptr + kv_off, mask=kv_ok, other=0.0)
    kv_seg = tl.load(kv_seg_ptr + b * SK + offs_n, mask=col_ok, other=0)
    kv_pos = tl.load(kv_pos_ptr + b * SK + offs_n, mask=col_ok, other=0)
    kv_seg_min = tl.load(kr_seg_min_ptr + b * NK + j)
    kv_seg_max = tl.load(kr_seg_max_ptr + b * NK + j)
    kv_pos_min = tl.load(kr_pos_min_ptr + b * NK + j)

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    qk_scale = SCALE * 1.4426950408889634
    for i in range(0, NQ):
        q_seg_min = tl.load(qr_seg_min_ptr + b * NQ + i)
        q_seg_max = tl.load(qr_seg_max_ptr + b * NQ + i)
        q_pos_max = tl.load(qr_pos_max_ptr + b * NQ + i)
        if _tile_visited(q_seg_min, q_seg_max, q_pos_max, kv_seg_min, kv_seg_max, kv_pos_min, CAUSAL):
            offs_m = i * BLOCK_M + tl.arange(0, BLOCK_M)
            row_ok = offs_m < SQ
            q_seg = tl.load(q_seg_ptr + b * SQ + offs_m, mask=row_ok, other=0)
            q_pos = tl.load(q_pos_ptr + b * SQ + offs_m, mask=row_ok, other=0)
            for g in range(0, G):
                # Transposed tiles ([keys, queries]) so no large tile is transposed in registers.
                h = hk * G + g
                q_off = _block_base(b, i * BLOCK_M, SQ, HQ, h, D) + _tile_offsets(BLOCK_M, BLOCK_D, HQ, D)
                q_ok = row_ok[:, None] & d_ok[None, :]
                q_tile = tl.load(q_ptr + q_off, mask=q_ok, other=0.0)
                do_tile = tl.load(dout_ptr + q_off, mask=q_ok, other=0.0)
                lse = tl.load(lse_ptr + (b * HQ + h) * SQ + offs_m, mask=row_ok, other=float("-inf"))
                lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
                delta = tl.load(delta_ptr + (b * HQ + h) * SQ + offs_m, mask=row_ok, other=0.0)
                s_t = tl.dot(k_tile, tl.trans(q_tile)) * qk_scale
                p_t = tl.math.exp2(s_t - lse2[None, :])
                p_t = tl.where(_tile_mask_t(q_seg, q_pos, kv_seg, kv_pos, CAUSAL), p_t, 0.0)
                dv += tl.dot(p_t.to(do_tile.dtype), do_tile)
                dp_t = tl.dot(v_tile, tl.trans(do_tile))
                ds_t = p_t * (dp_t - delta[None, :])
                dk += tl.dot(ds_t.to(q_tile.dtype), q_tile)

    kv_off = _block_base(b, j * BLOCK_N, SK, HKV, hk, D) + _tile_offsets(BLOCK_N, BLOCK_D, HKV, D)
    kv_ok = (offs_n < SK)[:, None] & (offs_d < D)[None, :]
    tl.store(dk_ptr + kv_off, (dk * SCALE).to(dk_ptr.dtype.element_ty), mask=kv_ok)
    tl.store(dv_ptr + kv_off, dv.to(dv_ptr.dtype.element_ty), mask=kv_ok)


@triton.jit
def flash_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr,
    q_seg_ptr, q_pos_ptr, kv_seg_ptr, kv_pos_ptr,
    qr_seg_min_ptr, qr_seg_max_ptr, qr_pos_max_ptr, kr_seg_min_ptr, kr_seg_max_ptr, kr_pos_min_ptr,
    dq_ptr,
    SCALE: tl.constexpr, CAUSAL: tl.constexpr,
    SQ: tl.constexpr, SK: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Grid (cdiv(SQ, BLOCK_M), B * HQ). dq of one query block of one head."""
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    hk = h // (HQ // HKV)
    NQ: tl.constexpr = (SQ + BLOCK_M - 1) // BLOCK_M
    NK: tl.constexpr = (SK + BLOCK_N - 1) // BLOCK_N

    offs_m = i * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < SQ
    d_ok = offs_d < D
    q_off = _block_base(b, i * BLOCK_M, SQ, HQ, h, D) + _tile_offsets(BLOCK_M, BLOCK_D, HQ, D)
    q_ok = row_ok[:, None] & d_ok[None, :]
    q_tile = tl.load(q_ptr + q_off, mask=q_ok, other=0.0)
    do_tile = tl.load(dout_ptr + q_off, mask=q_ok, other=0.0)
    q_seg = tl.load(q_seg_ptr + b * SQ + offs_m, mask=row_ok, other=0)
    q_pos = tl.load(q_pos_ptr + b * SQ + offs_m, mask=row_ok, other=0)
    lse = tl.load(lse_ptr + (b * HQ + h) * SQ + offs_m, mask=row_ok, other=float("-inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(delta_ptr + (b * HQ + h) * SQ + offs_m, mask=row_ok, other=0.0)
    q_seg_min = tl.load(qr_seg_min_ptr + b * NQ + i)
    q_seg_max = tl.load(qr_seg_max_ptr + b * NQ + i)
    q_pos_max = tl.load(qr_pos_max_ptr + b * NQ + i)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    qk_scale = SCALE * 1.4426950408889634
    for j in range(0, NK):
        kv_seg_min = tl.load(kr_seg_min_ptr + b * NK + j)
        kv_seg_max = tl.load(kr_seg_max_ptr + b * NK + j)
        kv_pos_min = tl.load(kr_pos_min_ptr + b * NK + j)
        if _tile_visited(q_seg_min, q_seg_max, q_pos_max, kv_seg_min, kv_seg_max, kv_pos_min, CAUSAL):
            offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)
            col_ok = offs_n < SK
            kv_off = _block_base(b, j * BLOCK_N, SK, HKV, hk, D) + _tile_offsets(BLOCK_N, BLOCK_D, HKV, D)
            kv_ok = col_ok[:, None] & d_ok[None, :]
            k_tile = tl.load(k_ptr + kv_off, mask=kv_ok, other=0.0)
            v_tile = tl.load(v_ptr + kv_off, mask=kv_ok, other=0.0)
            kv_seg = tl.load(kv_seg_ptr + b * SK + offs_n, mask=col_ok, other=0)
            kv_pos = tl.load(kv_pos_ptr + b * SK + offs_n, mask=col_ok, other=0)
            p = _probabilities(q_tile, k_tile, lse2, q_seg, q_pos, kv_seg, kv_pos, qk_scale, CAUSAL)
            dp = tl.dot(do_tile, tl.trans(v_tile))
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k_tile.dtype), k_tile)

    q_off = _block_base(b, i * BLOCK_M, SQ, HQ, h, D) + _tile_offsets(BLOCK_M, BLOCK_D, HQ, D)
    q_ok = (offs_m < SQ)[:, None] & (offs_d < D)[None, :]
    tl.store(dq_ptr + q_off, (dq * SCALE).to(dq_ptr.dtype.element_ty), mask=q_ok)
