"""How many registers ptxas wants for wgmma accumulators in a ``setmaxnreg`` region, without a GPU.

    python scripts/ptxas_accumulators.py rule
    python scripts/ptxas_accumulators.py dp-after-p attention_dkdv_dq_thread_2.ptx --splits 216,72 208,88

``rule`` assembles a minimal three-warpgroup kernel whose compute region (``setmaxnreg.inc LIMIT``)
issues wgmma products into accumulators of the given sizes, all in flight together, and prints whether
ptxas serializes them (C7512) or ignores the limit (C7507): ptxas places accumulators from R24 up, so a
region needs more than 24 + their registers (32 need 64, 28 fit 56, 192 need 224).

``dp-after-p`` rewrites a dQ-thread kernel's PTX (``STEPS=ptxas PTX_KEEP=dkdv_dq`` in
``scripts/gpu_kernels.sh``) of the old form, dp issued with s, the way the kernel now orders it (dp's
eight products moved from beside s's to after p's exponentials, s waited for alone), and prints ptxas's
report for each register split, like ``ptxas_registers.py``.
"""

from __future__ import annotations

import argparse
import sys

from ptxas_registers import REGISTER_BUDGET, assemble, find_ptxas, summary, with_registers

RESERVED = 24  # the registers below the first accumulator (R0-R23) in every region tried
SMEM_DESCRIPTOR = 4611686293305294848  # any valid wgmma smem descriptor: only the registers matter here


def minimal_kernel(accumulators: tuple[int, ...], limit: int) -> str:
    """PTX of a 384-thread kernel whose warpgroups 0-1 raise their registers to ``limit`` and loop over
    wgmma products into float32 accumulators of ``accumulators`` registers each (m64nN, N = 2 x size),
    issued together, waited for once, and stored after the loop; warpgroup 2 lowers to 24 and exits."""
    lines = [".version 9.0", ".target sm_90a", ".address_size 64", ".extern .shared .align 1024 .b8 smem[];",
             ".visible .entry accumulators()", ".maxntid 384, 1, 1", ".minnctapersm 1", "{",
             "  .reg .b32 %r<4>;", "  .reg .b64 %rd<4>;", "  .reg .pred %c<2>;"]
    lines += [f"  .reg .f32 %a{i}_<{size}>;" for i, size in enumerate(accumulators)]
    lines += ["  mov.u32 %r0, %tid.x;", "  shr.u32 %r1, %r0, 7;", "  setp.eq.u32 %c0, %r1, 2;", "  @%c0 bra MEMORY;",
              f"  setmaxnreg.inc.sync.aligned.u32 {limit};", f"  mov.u64 %rd1, {SMEM_DESCRIPTOR};",
              "  mul.wide.u32 %rd2, %r0, 8;", "  mov.u64 %rd3, smem;", "  add.u64 %rd3, %rd3, %rd2;",
              "  mov.u32 %r2, 0;", "LOOP:", "  wgmma.fence.sync.aligned;"]
    for i, size in enumerate(accumulators):
        registers = ",".join(f"%a{i}_{j}" for j in range(size))
        lines.append(f"  wgmma.mma_async.sync.aligned.m64n{2 * size}k16.f32.bf16.bf16 {{{registers}}}, "
                     "%rd1, %rd1, 1, 1, 1, 0, 0;")
    lines += ["  wgmma.commit_group.sync.aligned;", "  wgmma.wait_group.sync.aligned 0;", "  add.u32 %r2, %r2, 1;",
              "  setp.lt.u32 %c1, %r2, 64;", "  @%c1 bra LOOP;"]
    offset = 0
    for i, size in enumerate(accumulators):
        for j in range(0, size, 2):
            lines.append(f"  st.shared.v2.f32 [%rd3+{offset}], {{%a{i}_{j}, %a{i}_{j + 1}}};")
            offset += 1024
    lines += ["  ret;", "MEMORY:", "  setmaxnreg.dec.sync.aligned.u32 24;", "  ret;", "}"]
    return "\n".join(lines) + "\n"


def dp_after_p(ptx: str) -> str:
    """A dQ-thread kernel's PTX with dp's products issued after p's exponentials: the compute region's
    first pair of commit groups with eight m64n64 products each (s, then dp) loses the second group, s's
    ``wait_group 1`` becomes ``wait_group 0``, and the dp group (its descriptor arithmetic and commit
    with it) is issued again just before the ``wait_group 0`` that follows the first exponential."""
    lines = ptx.split("\n")
    start = next(i for i, line in enumerate(lines) if "setmaxnreg.inc" in line)
    bounds = [start] + [i for i in range(start, len(lines)) if "wgmma.commit_group.sync.aligned;" in lines[i]]
    products = [sum("m64n64k16" in line for line in lines[a + 1:b + 1]) for a, b in zip(bounds, bounds[1:])]
    for group in range(len(products) - 1):  # group g ends at the commit bounds[g + 1]
        if products[group] == products[group + 1] == 8:
            s_commit, dp_commit = bounds[group + 1], bounds[group + 2]
            break
    else:
        raise ValueError("no pair of commit groups with eight m64n64 products each (s, dp) after setmaxnreg.inc")
    after = range(dp_commit, len(lines))
    wait_one = next((i for i in after if "wgmma.wait_group.sync.aligned 1;" in lines[i]), None)
    exp = next((i for i in after if "ex2.approx" in lines[i]), None)
    if wait_one is None or exp is None:
        raise ValueError("expected a 'wgmma.wait_group 1' and an ex2 after the s and dp products")
    wait_zero = next(i for i in range(exp, len(lines)) if "wgmma.wait_group.sync.aligned 0;" in lines[i])
    dp_group = lines[s_commit + 1:dp_commit + 1]
    lines[wait_one] = lines[wait_one].replace("aligned 1;", "aligned 0;")
    return "\n".join(lines[:s_commit + 1] + lines[dp_commit + 1:wait_zero] + ["\twgmma.fence.sync.aligned;"]
                     + dp_group + lines[wait_zero:])


def report_flags(report: str) -> str:
    spills, serialized, ignored = summary(report)
    flags = [name for name, hit in (("serialized", serialized), ("setmaxnreg ignored", ignored)) if hit]
    return f"{', '.join(flags) or 'clean'}; {spills} B of spills"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rule = sub.add_parser("rule", help="the minimal kernel at several limits")
    rule.add_argument("--accumulators", nargs="+", default=["32", "28", "16", "64,64,32,32", "64,64,32,28"],
                      help="comma-separated accumulator sizes in registers (multiples of 4, at most 128 each)")
    edit = sub.add_parser("dp-after-p", help="a dQ-thread kernel's PTX with dp issued after p")
    edit.add_argument("ptx")
    edit.add_argument("--splits", nargs="+", default=["216,72", "208,88"])
    parser.add_argument("--ptxas")
    args = parser.parse_args()
    ptxas = find_ptxas(args.ptxas)
    if args.command == "rule":
        print("| accumulator registers | limit | 24 + registers < limit | ptxas |\n|---|---|---|---|")
        for spec in args.accumulators:
            sizes = tuple(int(n) for n in spec.split(","))
            if any(size % 4 or not 4 <= size <= 128 for size in sizes):
                raise SystemExit(f"--accumulators {spec}: sizes must be multiples of 4 from 4 to 128")
            need = RESERVED + sum(sizes)
            for limit in sorted({max(24, need - need % 8), need - need % 8 + 8}):
                print(f"| {spec} ({sum(sizes)}) | {limit} | {'yes' if need < limit else 'no'} "
                      f"| {report_flags(assemble(ptxas, minimal_kernel(sizes, limit)))} |", flush=True)
        return
    with open(args.ptx) as f:
        try:
            ptx = dp_after_p(f.read())
        except ValueError as err:
            raise SystemExit(f"{args.ptx}: {err}") from None
    print(f"# {args.ptx} with dp after p; {ptxas}\n| compute | memory | within 504 | ptxas |\n|---|---|---|---|")
    for split in args.splits:
        compute, memory = (int(n) for n in split.split(","))
        print(f"| {compute} | {memory} | {'yes' if 2 * compute + memory <= REGISTER_BUDGET else 'no'} "
              f"| {report_flags(assemble(ptxas, with_registers(ptx, compute, memory)))} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
