"""scripts/ptxas_registers.py's PTX rewrite (assembling needs ptxas, which CI does not have)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from ptxas_registers import with_registers  # noqa: E402

KERNEL = """
\t@%p1 bra $L__BB0_2;
\tsetmaxnreg.dec.sync.aligned.u32 40;
\tcp.async.bulk.tensor.2d.shared::cluster.global [%r1], [%rd1, {%r2, %r3}];
$L__BB0_2:
\tsetmaxnreg.inc.sync.aligned.u32 232;
\twgmma.fence.sync.aligned;
"""


def test_both_register_counts_are_rewritten_and_nothing_else():
    edited = with_registers(KERNEL, 216, 72)
    assert "setmaxnreg.inc.sync.aligned.u32 216;" in edited and "setmaxnreg.dec.sync.aligned.u32 72;" in edited
    assert "232" not in edited and "u32 40;" not in edited
    # every other line is untouched
    assert [l for l in edited.splitlines() if "setmaxnreg" not in l] == [l for l in KERNEL.splitlines()
                                                                         if "setmaxnreg" not in l]


def test_a_kernel_without_one_increase_and_one_decrease_is_refused():
    with pytest.raises(ValueError, match="expected one setmaxnreg increase and one decrease"):
        with_registers(KERNEL.replace("setmaxnreg.dec.sync.aligned.u32 40;", ""), 216, 72)
    with pytest.raises(ValueError, match="expected one setmaxnreg increase"):
        with_registers(KERNEL + KERNEL, 216, 72)
