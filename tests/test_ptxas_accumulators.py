"""scripts/ptxas_accumulators.py's PTX texts (assembling them needs ptxas, which CI does not have)."""

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from ptxas_accumulators import dp_after_p, minimal_kernel  # noqa: E402


def product(name):
    return f"\twgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {{%{name}0}}, %rd1, %rd2, 1, 1, 1, 0, 0;"


def dq_thread_like_kernel():
    """The shape of a dQ-thread kernel's compute loop: s's and dp's products in two commit groups, s
    waited for first, p's exponentials, then dp waited for."""
    return "\n".join(["\tsetmaxnreg.dec.sync.aligned.u32 72;", product("t"), "\twgmma.commit_group.sync.aligned;",
                      "\tsetmaxnreg.inc.sync.aligned.u32 216;", "\twgmma.fence.sync.aligned;"]
                     + [product("s")] * 8 + ["\twgmma.commit_group.sync.aligned;", "\tadd.s64 %rd3, %rd4, 64;"]
                     + [product("d")] * 8 + ["\twgmma.commit_group.sync.aligned;",
                                             "\twgmma.wait_group.sync.aligned 1;",
                                             "\tex2.approx.ftz.f32 %r1, %r2;", "\tex2.approx.ftz.f32 %r3, %r4;",
                                             "\twgmma.wait_group.sync.aligned 0;", "\tmul.f32 %r5, %d0, %r1;"])


def test_minimal_kernel_holds_the_accumulators_asked_for():
    ptx = minimal_kernel((64, 32, 28), 224)
    products = re.findall(r"m64n(\d+)k16\.f32\.bf16\.bf16 \{([^}]*)\}", ptx)
    assert [(int(n), len(regs.split(","))) for n, regs in products] == [(128, 64), (64, 32), (56, 28)]
    assert "setmaxnreg.inc.sync.aligned.u32 224;" in ptx and "setmaxnreg.dec.sync.aligned.u32 24;" in ptx
    # every accumulator register is stored after the loop, so none is dead
    stored = set(re.findall(r"%a\d+_\d+", "".join(l for l in ptx.splitlines() if "st.shared" in l)))
    assert len(stored) == 64 + 32 + 28


def test_dp_after_p_moves_dp_behind_the_exponentials_and_waits_for_s_alone():
    original = dq_thread_like_kernel()
    edited = dp_after_p(original).split("\n")
    dp_lines = [i for i, line in enumerate(edited) if "{%d0}" in line and "wgmma" in line]
    first_exp = next(i for i, line in enumerate(edited) if "ex2" in line)
    s_lines = [i for i, line in enumerate(edited) if "{%s0}" in line]
    assert len(dp_lines) == 8 and len(s_lines) == 8
    assert max(s_lines) < first_exp < min(dp_lines)
    assert "wgmma.wait_group.sync.aligned 1;" not in "\n".join(edited)
    # s's wait now waits for everything, then dp's group (its descriptor arithmetic, products, commit)
    # is issued behind a fence, before the wait that ds needs
    wait_s = next(i for i, line in enumerate(edited) if "wait_group" in line)
    assert max(s_lines) < wait_s < first_exp
    assert edited[min(dp_lines) - 2:min(dp_lines)] == ["\twgmma.fence.sync.aligned;", "\tadd.s64 %rd3, %rd4, 64;"]
    assert edited[max(dp_lines) + 1:max(dp_lines) + 3] == ["\twgmma.commit_group.sync.aligned;",
                                                           "\twgmma.wait_group.sync.aligned 0;"]
    # nothing else changed: the same lines, reordered, plus one fence
    assert sorted(edited) == sorted(original.replace("aligned 1;", "aligned 0;").split("\n")
                                    + ["\twgmma.fence.sync.aligned;"])
    # thread 2's product before setmaxnreg.inc stays where it was
    assert edited[:3] == original.split("\n")[:3]


def test_dp_after_p_refuses_a_kernel_without_the_pair():
    with pytest.raises(ValueError, match="no pair of commit groups with eight m64n64 products"):
        dp_after_p(dq_thread_like_kernel().replace(product("d") + "\n", "", 1))
    with pytest.raises(ValueError, match="expected a 'wgmma.wait_group 1' and an ex2"):
        dp_after_p(dq_thread_like_kernel().replace("ex2.approx", "mul"))
