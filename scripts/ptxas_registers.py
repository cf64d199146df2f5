"""What ptxas makes of a Mosaic GPU kernel's PTX under other register splits, without a GPU.

    python scripts/ptxas_registers.py attention_dkdv_dq_thread_2.ptx --splits 216,72 224,56 224,64

The PTX comes from a device run (``STEPS=ptxas PTX_KEEP=dkdv`` in ``scripts/gpu_kernels.sh`` copies
the matching kernels' PTX out). Each split rewrites the kernel's two ``setmaxnreg`` values (the
compute threads' increase, the memory thread's decrease) and assembles it for sm_90a: printed are
the spill bytes and whether ptxas serialized the wgmmas (C7512) or ignored a ``setmaxnreg`` (C7507).
A 384-thread CTA has 504 registers per (compute, compute, memory) triple; splits over that budget
are assembled too (to see what a thread would need) and marked. ptxas: ``--ptxas``, else the one of
the pip package ``nvidia-cuda-nvcc`` (CUDA 13 reads the PTX 9.0 that JAX 0.11 writes), else PATH.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile

REGISTER_BUDGET = 504  # 168 registers a thread at launch x 3 warpgroups
INCREASE = re.compile(r"setmaxnreg\.inc\.sync\.aligned\.u32 (\d+);")
DECREASE = re.compile(r"setmaxnreg\.dec\.sync\.aligned\.u32 (\d+);")


def with_registers(ptx: str, compute: int, memory: int) -> str:
    """``ptx`` with its compute threads' ``setmaxnreg`` increase set to ``compute`` and its memory thread's
    decrease to ``memory``; a kernel without exactly one of each is refused."""
    if len(INCREASE.findall(ptx)) != 1 or len(DECREASE.findall(ptx)) != 1:
        raise ValueError("expected one setmaxnreg increase and one decrease (a three-warpgroup Mosaic kernel)")
    ptx = INCREASE.sub(f"setmaxnreg.inc.sync.aligned.u32 {compute};", ptx)
    return DECREASE.sub(f"setmaxnreg.dec.sync.aligned.u32 {memory};", ptx)


def find_ptxas(given: str | None) -> str:
    if given:
        return given
    for root in site.getsitepackages() + [site.getusersitepackages()]:
        found = sorted(glob.glob(os.path.join(root, "nvidia", "cu1[3-9]", "bin", "ptxas")))
        if found:
            return found[-1]
    on_path = shutil.which("ptxas")
    if on_path:
        return on_path
    raise SystemExit("no ptxas: pip install 'nvidia-cuda-nvcc>=13', or pass --ptxas")


def assemble(ptxas: str, ptx: str) -> str:
    """ptxas's ``-v`` report of one PTX text."""
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(source, "w") as f:
            f.write(ptx)
        done = subprocess.run([ptxas, "-arch=sm_90a", "-v", source, "-o", binary], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"ptxas failed: {done.stderr.strip()[:500]}")
        return done.stdout + done.stderr


def summary(report: str) -> tuple[int, bool, bool]:
    """``(spill store bytes, wgmmas serialized (C7512), setmaxnreg ignored (C7507))`` of a ptxas report."""
    spills = re.search(r"(\d+) bytes spill stores", report)
    return int(spills.group(1)) if spills else 0, "C7512" in report, "C7507" in report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ptx")
    parser.add_argument("--splits", nargs="+", default=["232,40", "224,56", "216,72"],
                        help="COMPUTE,MEMORY register counts per thread (multiples of 8)")
    parser.add_argument("--ptxas")
    args = parser.parse_args()
    with open(args.ptx) as f:
        ptx = f.read()
    try:
        with_registers(ptx, 0, 0)
    except ValueError as err:
        raise SystemExit(f"{args.ptx}: {err}") from None
    ptxas = find_ptxas(args.ptxas)
    print(f"# {args.ptx}; as compiled: {INCREASE.search(ptx).group(1)}/{DECREASE.search(ptx).group(1)}; {ptxas}")
    print("| compute | memory | within 504 | spill stores (B) | wgmmas serialized (C7512) | setmaxnreg ignored (C7507) |")
    print("|---|---|---|---|---|---|")
    for split in args.splits:
        compute, memory = (int(n) for n in split.split(","))
        spills, serialized, ignored = summary(assemble(ptxas, with_registers(ptx, compute, memory)))
        print(f"| {compute} | {memory} | {'yes' if 2 * compute + memory <= REGISTER_BUDGET else 'no'} "
              f"| {spills} | {'yes' if serialized else 'no'} | {'yes' if ignored else 'no'} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
