"""Triton flash-attention kernels (forward, dK/dV, dQ) with segment and position masks.

Pure Triton: no JAX here, so the same kernels run under jax_triton on a GPU
and under ``TRITON_INTERPRET=1`` on CPU (tests). Launchers and the visit lists
live in :mod:`.triton_backend`.

Memory layout (row-major, contiguous): q/out/dout ``[B, Sq, Hq, D]``,
k/v ``[B, Sk, Hkv, D]``, ids/positions int32 ``[B, S]``, lse/delta float32
``[B, Hq, Sq]``. Sq and Sk are multiples of every block (the launcher pads
with segment 0), so only the head dim may need a load mask (``BLOCK_D`` is D
rounded up to a power of two >= 16).

Each CTA reads one visit list, int32 ``[LIST_WIDTH]``: entry 0 the number of
whole tiles (the mask keeps every pair), entry 1 the number of masked tiles,
entry 2 the resident block, then the streamed blocks, whole ones first. The
kernels run two loops without branches in them (Triton only software-pipelines
the loads of a loop whose body has no ``if`` around them): whole tiles without
the elementwise mask, then masked ones with it. GQA: query head h reads kv
head ``h // G``; the dK/dV kernel loops over the G query heads of its kv head,
so no atomics anywhere. Softmax runs in base 2 (``exp2``, scores times
log2 e); lse is stored and read in natural log.
"""

import triton
import triton.language as tl

LIST_HEADER = tl.constexpr(3)  # whole tiles, masked tiles, resident block
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _block_base(b, row0, S: tl.constexpr, H: tl.constexpr, head, D: tl.constexpr):
    """Scalar int64 offset of element (b, row0, head, 0) of a ``[B, S, H, D]`` array."""
    return ((b * S + row0).to(tl.int64) * H + head) * D


@triton.jit
def _load_tile(ptr, base, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, H: tl.constexpr,
               D: tl.constexpr):
    """``[BLOCK_R, BLOCK_D]`` rows of a ``[B, S, H, D]`` array from ``base``; columns >= D read 0."""
    offs = tl.arange(0, BLOCK_R)[:, None] * (H * D) + tl.arange(0, BLOCK_D)[None, :]
    if BLOCK_D == D:
        return tl.load(ptr + base + offs)
    return tl.load(ptr + base + offs, mask=(tl.arange(0, BLOCK_D) < D)[None, :], other=0.0)


@triton.jit
def _store_tile(ptr, base, tile, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, H: tl.constexpr,
                D: tl.constexpr):
    offs = tl.arange(0, BLOCK_R)[:, None] * (H * D) + tl.arange(0, BLOCK_D)[None, :]
    if BLOCK_D == D:
        tl.store(ptr + base + offs, tile)
    else:
        tl.store(ptr + base + offs, tile, mask=(tl.arange(0, BLOCK_D) < D)[None, :])


@triton.jit
def _list_header(list_ptr, b, N_RESIDENT: tl.constexpr, LIST_WIDTH: tl.constexpr):
    """This CTA's visit list (grid axis 1 names it): ``(list pointer, whole tiles, masked tiles,
    resident block)``."""
    lst = list_ptr + (b * N_RESIDENT + tl.program_id(1)) * LIST_WIDTH
    return lst, tl.load(lst), tl.load(lst + 1), tl.load(lst + 2)


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
def _fwd_tiles(acc, m_i, l_i, q_tile, q_seg, q_pos, lst, first, last, k_ptr, v_ptr, kv_seg_ptr,
               kv_pos_ptr, b, hk, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
               SK: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """Online softmax over list entries ``first .. last``; returns ``(acc, m_i, l_i)``."""
    j_next = tl.load(lst + LIST_HEADER + first, mask=first < last, other=0)
    for t in range(first, last):
        j = j_next  # read one step ahead: Triton pipelines tile loads deeper when their address needs
        # no load of the same step
        j_next = tl.load(lst + LIST_HEADER + t + 1, mask=t + 1 < last, other=0)
        kv_base = _block_base(b, j * BLOCK_N, SK, HKV, hk, D)
        k_tile = _load_tile(k_ptr, kv_base, BLOCK_N, BLOCK_D, HKV, D)
        v_tile = _load_tile(v_ptr, kv_base, BLOCK_N, BLOCK_D, HKV, D)
        s = tl.dot(q_tile, tl.trans(k_tile)) * qk_scale
        if MASKED:
            offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)
            kv_seg = tl.load(kv_seg_ptr + b * SK + offs_n)
            kv_pos = tl.load(kv_pos_ptr + b * SK + offs_n)
            s = tl.where(_tile_mask(q_seg, q_pos, kv_seg, kv_pos, CAUSAL), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASKED:  # a row may have seen nothing yet: keep exp2 away from (-inf) - (-inf)
            m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v_tile.dtype), v_tile)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def flash_fwd_kernel(
    q_ptr, k_ptr, v_ptr, q_seg_ptr, q_pos_ptr, kv_seg_ptr, kv_pos_ptr, list_ptr,
    out_ptr, lse_ptr,
    SCALE: tl.constexpr, CAUSAL: tl.constexpr,
    SQ: tl.constexpr, SK: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, LIST_WIDTH: tl.constexpr,
):
    """Grid (B * HQ, SQ // BLOCK_M); lists ``[B, SQ // BLOCK_M, LIST_WIDTH]`` (resident: query
    blocks). Writes out (q's dtype) and lse (float32, natural log)."""
    bh = tl.program_id(0)
    b = bh // HQ
    h = bh % HQ
    hk = h // (HQ // HKV)
    lst, n_whole, n_masked, i = _list_header(list_ptr, b, SQ // BLOCK_M, LIST_WIDTH)

    q_base = _block_base(b, i * BLOCK_M, SQ, HQ, h, D)
    q_tile = _load_tile(q_ptr, q_base, BLOCK_M, BLOCK_D, HQ, D)
    offs_m = i * BLOCK_M + tl.arange(0, BLOCK_M)
    q_seg = tl.load(q_seg_ptr + b * SQ + offs_m)
    q_pos = tl.load(q_pos_ptr + b * SQ + offs_m)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    qk_scale = SCALE * LOG2E
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q_tile, q_seg, q_pos, lst, 0, n_whole, k_ptr, v_ptr,
                               kv_seg_ptr, kv_pos_ptr, b, hk, qk_scale, False, CAUSAL, SK, HKV, D,
                               BLOCK_N, BLOCK_D)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q_tile, q_seg, q_pos, lst, n_whole, n_whole + n_masked,
                               k_ptr, v_ptr, kv_seg_ptr, kv_pos_ptr, b, hk, qk_scale, True, CAUSAL,
                               SK, HKV, D, BLOCK_N, BLOCK_D)

    seen = l_i > 0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))
    _store_tile(out_ptr, q_base, out.to(out_ptr.dtype.element_ty), BLOCK_M, BLOCK_D, HQ, D)
    tl.store(lse_ptr + (b * HQ + h) * SQ + offs_m, lse)


@triton.jit
def _dkdv_tiles(dk, dv, k_tile, v_tile, kv_seg, kv_pos, lst, count, q_ptr, dout_ptr, lse_ptr,
                delta_ptr, q_seg_ptr, q_pos_ptr, b, hk, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr, SQ: tl.constexpr, HQ: tl.constexpr,
                G: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """dk, dv summed over the first ``count`` tiles listed at ``lst``, for each of the G query heads.

    Transposed tiles ([keys, queries]) so no large tile is transposed in registers."""
    per_head = tl.maximum(count, 1)
    i_next = tl.load(lst + LIST_HEADER, mask=count > 0, other=0)
    for t in range(0, G * count):
        g = t // per_head
        i = i_next  # read one step ahead (see _fwd_tiles)
        i_next = tl.load(lst + LIST_HEADER + (t + 1) % per_head, mask=t + 1 < G * count, other=0)
        h = hk * G + g
        q_base = _block_base(b, i * BLOCK_M, SQ, HQ, h, D)
        q_tile = _load_tile(q_ptr, q_base, BLOCK_M, BLOCK_D, HQ, D)
        do_tile = _load_tile(dout_ptr, q_base, BLOCK_M, BLOCK_D, HQ, D)
        offs_m = i * BLOCK_M + tl.arange(0, BLOCK_M)
        lse2 = tl.load(lse_ptr + (b * HQ + h) * SQ + offs_m)  # base 2, +inf on empty rows
        delta = tl.load(delta_ptr + (b * HQ + h) * SQ + offs_m)
        p_t = tl.math.exp2(tl.dot(k_tile, tl.trans(q_tile)) * qk_scale - lse2[None, :])
        if MASKED:
            q_seg = tl.load(q_seg_ptr + b * SQ + offs_m)
            q_pos = tl.load(q_pos_ptr + b * SQ + offs_m)
            p_t = tl.where(_tile_mask_t(q_seg, q_pos, kv_seg, kv_pos, CAUSAL), p_t, 0.0)
        dv += tl.dot(p_t.to(do_tile.dtype), do_tile)
        dp_t = tl.dot(v_tile, tl.trans(do_tile))
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q_tile.dtype), q_tile)
    return dk, dv


@triton.jit
def flash_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr,
    q_seg_ptr, q_pos_ptr, kv_seg_ptr, kv_pos_ptr, list_ptr,
    dk_ptr, dv_ptr,
    SCALE: tl.constexpr, CAUSAL: tl.constexpr,
    SQ: tl.constexpr, SK: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, LIST_WIDTH: tl.constexpr,
):
    """Grid (B * HKV, SK // BLOCK_N); lists ``[B, SK // BLOCK_N, LIST_WIDTH]`` (resident: key
    blocks). dk/dv of one key block, summed over the GQA group.

    lse comes in base 2 with +inf on empty rows (so p = 0 there); delta =
    rowsum(dout * out) - dlse (float32, 0 on empty rows).
    """
    bh = tl.program_id(0)
    b = bh // HKV
    hk = bh % HKV
    G: tl.constexpr = HQ // HKV
    lst, n_whole, n_masked, j = _list_header(list_ptr, b, SK // BLOCK_N, LIST_WIDTH)

    kv_base = _block_base(b, j * BLOCK_N, SK, HKV, hk, D)
    k_tile = _load_tile(k_ptr, kv_base, BLOCK_N, BLOCK_D, HKV, D)
    v_tile = _load_tile(v_ptr, kv_base, BLOCK_N, BLOCK_D, HKV, D)
    offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)
    kv_seg = tl.load(kv_seg_ptr + b * SK + offs_n)
    kv_pos = tl.load(kv_pos_ptr + b * SK + offs_n)

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    qk_scale = SCALE * LOG2E
    dk, dv = _dkdv_tiles(dk, dv, k_tile, v_tile, kv_seg, kv_pos, lst, n_whole, q_ptr, dout_ptr, lse_ptr,
                         delta_ptr, q_seg_ptr, q_pos_ptr, b, hk, qk_scale, False, CAUSAL, SQ, HQ, G, D,
                         BLOCK_M, BLOCK_D)
    dk, dv = _dkdv_tiles(dk, dv, k_tile, v_tile, kv_seg, kv_pos, lst + n_whole, n_masked, q_ptr, dout_ptr,
                         lse_ptr, delta_ptr, q_seg_ptr, q_pos_ptr, b, hk, qk_scale, True, CAUSAL, SQ, HQ,
                         G, D, BLOCK_M, BLOCK_D)
    _store_tile(dk_ptr, kv_base, (dk * SCALE).to(dk_ptr.dtype.element_ty), BLOCK_N, BLOCK_D, HKV, D)
    _store_tile(dv_ptr, kv_base, dv.to(dv_ptr.dtype.element_ty), BLOCK_N, BLOCK_D, HKV, D)


@triton.jit
def _dq_tiles(dq, q_tile, do_tile, lse2, delta, q_seg, q_pos, lst, first, last, k_ptr, v_ptr, kv_seg_ptr,
              kv_pos_ptr, b, hk, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr, SK: tl.constexpr,
              HKV: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    j_next = tl.load(lst + LIST_HEADER + first, mask=first < last, other=0)
    for t in range(first, last):
        j = j_next  # read one step ahead (see _fwd_tiles)
        j_next = tl.load(lst + LIST_HEADER + t + 1, mask=t + 1 < last, other=0)
        kv_base = _block_base(b, j * BLOCK_N, SK, HKV, hk, D)
        k_tile = _load_tile(k_ptr, kv_base, BLOCK_N, BLOCK_D, HKV, D)
        v_tile = _load_tile(v_ptr, kv_base, BLOCK_N, BLOCK_D, HKV, D)
        p = tl.math.exp2(tl.dot(q_tile, tl.trans(k_tile)) * qk_scale - lse2[:, None])
        if MASKED:
            offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)
            kv_seg = tl.load(kv_seg_ptr + b * SK + offs_n)
            kv_pos = tl.load(kv_pos_ptr + b * SK + offs_n)
            p = tl.where(_tile_mask(q_seg, q_pos, kv_seg, kv_pos, CAUSAL), p, 0.0)
        dp = tl.dot(do_tile, tl.trans(v_tile))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k_tile.dtype), k_tile)
    return dq


@triton.jit
def flash_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr,
    q_seg_ptr, q_pos_ptr, kv_seg_ptr, kv_pos_ptr, list_ptr,
    dq_ptr,
    SCALE: tl.constexpr, CAUSAL: tl.constexpr,
    SQ: tl.constexpr, SK: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, LIST_WIDTH: tl.constexpr,
):
    """Grid (B * HQ, SQ // BLOCK_M); lists as the forward's. dq of one query block of one head;
    lse in base 2 (+inf on empty rows), delta as for dK/dV."""
    bh = tl.program_id(0)
    b = bh // HQ
    h = bh % HQ
    hk = h // (HQ // HKV)
    lst, n_whole, n_masked, i = _list_header(list_ptr, b, SQ // BLOCK_M, LIST_WIDTH)

    q_base = _block_base(b, i * BLOCK_M, SQ, HQ, h, D)
    q_tile = _load_tile(q_ptr, q_base, BLOCK_M, BLOCK_D, HQ, D)
    do_tile = _load_tile(dout_ptr, q_base, BLOCK_M, BLOCK_D, HQ, D)
    offs_m = i * BLOCK_M + tl.arange(0, BLOCK_M)
    q_seg = tl.load(q_seg_ptr + b * SQ + offs_m)
    q_pos = tl.load(q_pos_ptr + b * SQ + offs_m)
    lse2 = tl.load(lse_ptr + (b * HQ + h) * SQ + offs_m)
    delta = tl.load(delta_ptr + (b * HQ + h) * SQ + offs_m)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    qk_scale = SCALE * LOG2E
    dq = _dq_tiles(dq, q_tile, do_tile, lse2, delta, q_seg, q_pos, lst, 0, n_whole, k_ptr, v_ptr, kv_seg_ptr,
                   kv_pos_ptr, b, hk, qk_scale, False, CAUSAL, SK, HKV, D, BLOCK_N, BLOCK_D)
    dq = _dq_tiles(dq, q_tile, do_tile, lse2, delta, q_seg, q_pos, lst, n_whole, n_whole + n_masked, k_ptr,
                   v_ptr, kv_seg_ptr, kv_pos_ptr, b, hk, qk_scale, True, CAUSAL, SK, HKV, D, BLOCK_N, BLOCK_D)
    _store_tile(dq_ptr, q_base, (dq * SCALE).to(dq_ptr.dtype.element_ty), BLOCK_M, BLOCK_D, HQ, D)
