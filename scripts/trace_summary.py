"""Device ops and device timeline of a JAX profiler trace (``jax.profiler.trace(..., create_perfetto_trace=True)``).

``device_events(trace_dir)`` reads the newest ``perfetto_trace.json.gz`` under ``trace_dir`` and returns the
events on the GPU's stream lines (kernels, XLA fusions, copies), or on CPU the host thunks that name an HLO op;
``device_ops`` sums them per op, ``timeline`` says how much of their span the device was busy.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import pathlib
from typing import NamedTuple


class Event(NamedTuple):
    """One device op: its name (``hlo_op`` argument if any, else the event's), HLO module, start and
    duration in microseconds."""

    name: str
    module: str
    start_us: float
    dur_us: float


def _newest_trace(trace_dir: str) -> pathlib.Path:
    paths = sorted(pathlib.Path(trace_dir).rglob("perfetto_trace.json.gz"), key=os.path.getmtime)
    if not paths:
        raise SystemExit(f"no perfetto_trace.json.gz under {trace_dir}: did the profiler run?")
    return paths[-1]


def device_events(trace_dir: str) -> tuple[list[Event], bool, list[str]]:
    """``(events sorted by start, on_device, the device's line names)``.

    A device's kernels sit on its "Stream #N" lines; derived lines ("XLA Ops", "XLA Modules") repeat
    them, so only streams count where there are any. Without a ``/device:`` process (CPU) the events
    are the host thunks that carry an ``hlo_op`` argument."""
    with gzip.open(_newest_trace(trace_dir)) as f:
        data = json.load(f)
    raw = data["traceEvents"] if isinstance(data, dict) else data
    process = {e["pid"]: e["args"]["name"] for e in raw if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for pid, name in process.items() if name.startswith("/device:")}
    thread_names = {(e["pid"], e["tid"]): e["args"]["name"] for e in raw
                    if e.get("ph") == "M" and e.get("name") == "thread_name" and e["pid"] in device_pids}
    streams = {key for key, name in thread_names.items() if name.startswith("Stream")}
    events = []
    for e in raw:
        if e.get("ph") != "X":
            continue
        args = e.get("args", {})
        if device_pids and e.get("pid") not in device_pids:
            continue
        if streams and (e.get("pid"), e.get("tid")) not in streams:
            continue
        if not device_pids and "hlo_op" not in args:
            continue
        events.append(Event(args.get("hlo_op") or e["name"], args.get("hlo_module", ""),
                            float(e.get("ts", 0.0)), float(e.get("dur", 0.0))))
    events.sort(key=lambda event: event.start_us)
    return events, bool(device_pids), sorted(thread_names.values())


def device_ops(trace_dir: str, by: str = "hlo_op") -> tuple[dict, bool]:
    """``({name: [calls, total us]}, on_device)``, named by HLO op (``by="hlo_op"``) or by jitted
    program (``by="hlo_module"``)."""
    events, on_device, lines = device_events(trace_dir)
    if lines:
        print(f"# device lines in the trace: {', '.join(lines)[:300]}")
    return op_totals(events, by), on_device


def op_totals(events: list[Event], by: str = "hlo_op") -> dict:
    """``{name: [calls, total us]}`` of ``events``, named as in :func:`device_ops`."""
    ops = collections.defaultdict(lambda: [0, 0.0])
    for event in events:
        name = (event.module or event.name) if by == "hlo_module" else event.name
        ops[name][0] += 1
        ops[name][1] += event.dur_us
    return dict(ops)


class Timeline(NamedTuple):
    """Of a run of device events: first start to last end (``span_us``), the time at least one ran
    (``busy_us``), and the idle gaps between them, longest first."""

    span_us: float
    busy_us: float
    gaps_us: list[float]


def timeline(events: list[Event]) -> Timeline:
    """Busy time as the union of the events' intervals (overlapping streams count once)."""
    if not events:
        return Timeline(0.0, 0.0, [])
    busy, gaps = 0.0, []
    start, end = events[0].start_us, events[0].start_us + events[0].dur_us
    first = start
    for event in events[1:]:
        if event.start_us > end:
            busy += end - start
            gaps.append(event.start_us - end)
            start = event.start_us
        end = max(end, event.start_us + event.dur_us)
    busy += end - start
    return Timeline(end - first, busy, sorted(gaps, reverse=True))
