"""Does the ring's collective-permute overlap attention compute?  Read from compiled HLO.

``permute_overlap(hlo_text)`` looks at every computation of a compiled
(scheduled) HLO module that holds a ``collective-permute`` (synchronous, as
the CPU backend emits it) or a ``collective-permute-start``/``-done`` pair
(asynchronous, as the GPU backend emits it).  In each it finds the compute
instructions (dots, convolutions, custom calls, and any while, conditional,
fusion or call whose called computations contain one) and reports, per
permute:

* ``concurrent_compute``: compute that neither feeds the permute nor
  consumes its result, so the two may run at the same time (data flow);
* ``overlapped``: some of that compute is scheduled after the permute is
  issued and, for an asynchronous permute, before its ``-done`` (schedule).

On GPU ``overlapped`` means the transfer really runs under the compute; on
CPU (synchronous collectives) it shows the transfer is issued first with no
data dependence, which is what lets the GPU scheduler overlap it.
"""

from __future__ import annotations

import dataclasses
import re

_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_NAME = re.compile(r"%([\w.\-]+)")
_CALLED = re.compile(r"\b(?:calls|body|condition|to_apply|branch_computations|true_computation|"
                     r"false_computation)=(\{[^}]*\}|%[\w.\-]+)")
_HEAVY_OPCODES = {"dot", "convolution", "custom-call"}
_CALLERS = {"while", "conditional", "fusion", "call", "async-start"}
_PERMUTES = {"collective-permute", "collective-permute-start"}


@dataclasses.dataclass
class _Instruction:
    name: str
    opcode: str
    operands: list[str]
    called: list[str]


def _balanced(text: str, start: int) -> int:
    """Index just past the parenthesis group opening at ``text[start]``."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    return len(text)


def _parse_instruction(line: str) -> _Instruction | None:
    body = line.strip()
    if body.startswith("ROOT "):
        body = body[5:]
    if not body.startswith("%") or " = " not in body:
        return None
    name, rest = body[1:].split(" = ", 1)
    type_end = _balanced(rest, 0) if rest.startswith("(") else rest.index(" ")
    rest = rest[type_end:].lstrip()
    paren = rest.find("(")
    if paren < 0:
        return None
    opcode = rest[:paren]
    args_end = _balanced(rest, paren)
    operands = _NAME.findall(rest[paren:args_end])
    called = [n for group in _CALLED.findall(rest[args_end:]) for n in _NAME.findall(group)]
    return _Instruction(name, opcode, operands, called)


def parse_hlo(text: str) -> dict[str, list[_Instruction]]:
    """Computation name -> its instructions in (scheduled) text order."""
    comps: dict[str, list[_Instruction]] = {}
    current = None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = comps.setdefault(header.group(1), [])
            continue
        if line.startswith("}"):
            current = None
            continue
        if current is not None:
            inst = _parse_instruction(line)
            if inst is not None:
                current.append(inst)
    return comps


def _heavy_computations(comps) -> set[str]:
    heavy: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, insts in comps.items():
            if name in heavy:
                continue
            if any(i.opcode in _HEAVY_OPCODES and "collective" not in i.opcode or
                   any(c in heavy for c in i.called) for i in insts):
                heavy.add(name)
                changed = True
    return heavy


def _ancestors(index: dict[str, _Instruction], name: str) -> set[str]:
    seen, stack = set(), [name]
    while stack:
        for op in index[stack.pop()].operands:
            if op in index and op not in seen:
                seen.add(op)
                stack.append(op)
    return seen


@dataclasses.dataclass(frozen=True)
class PermuteOverlap:
    computation: str
    permute: str
    asynchronous: bool
    concurrent_compute: tuple[str, ...]
    overlapped: bool


def permute_overlap(hlo_text: str) -> list[PermuteOverlap]:
    """One entry per collective-permute(-start) of the module (see module doc)."""
    comps = parse_hlo(hlo_text)
    heavy = _heavy_computations(comps)
    report = []
    for comp_name, insts in comps.items():
        permutes = [i for i in insts if i.opcode in _PERMUTES]
        if not permutes:
            continue
        index = {i.name: i for i in insts}
        position = {i.name: k for k, i in enumerate(insts)}
        ancestors = {i.name: _ancestors(index, i.name) for i in insts}
        compute = [i.name for i in insts
                   if (i.opcode in _HEAVY_OPCODES and "collective" not in i.opcode)
                   or (i.opcode in _CALLERS and any(c in heavy for c in i.called))]
        for perm in permutes:
            asynchronous = perm.opcode.endswith("-start")
            done = next((i.name for i in insts if i.opcode == "collective-permute-done"
                         and perm.name in i.operands), None) if asynchronous else perm.name
            result = done or perm.name
            free = [c for c in compute
                    if c not in ancestors[perm.name] and result not in ancestors[c] and perm.name not in ancestors[c]]
            if asynchronous and done is not None:
                between = [c for c in free if position[perm.name] < position[c] < position[done]]
            else:
                between = [c for c in free if position[perm.name] < position[c]]
            report.append(PermuteOverlap(comp_name, perm.name, asynchronous, tuple(free), bool(between)))
    return report
