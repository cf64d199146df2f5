"""Data pipeline throughput: decoded + preprocessed frames per second per CPU core, and whether it keeps up.

Writes synthetic H.264 videos (source resolution and length configurable),
then measures on one pinned core (``sched_setaffinity``, one decoder thread):

* ``sampled``: ``video.load_video`` (seek, decode, resize to the tower
  resolution, normalize) -> output frames/s/core: the figure.
* ``anchor``: plain sequential decode of every frame, no conversion, in the
  same run -> frames/s; the ratio says how much the per-frame preprocessing
  and seeking cost against raw decoding.
* ``pipeline``: the whole grain pipeline (decode, tokenize, pack, device
  order) with ``--threads`` reader threads on all allowed cores -> frames/s.

Keeps up: a step of ``--frames-per-step`` frames every ``--step-time``
seconds needs ``frames_per_step / step_time`` frames/s per process; the
script prints the cores that takes at the measured per-core rate.

    .venv/bin/python scripts/bench_data.py --seconds 20 --num-frames 32 --image-size 448
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def make_videos(root: Path, count: int, width: int, height: int, seconds: float, fps: int, gop: int) -> list[Path]:
    """Moving-gradient videos with noise (so the encoder does real work)."""
    from tqdm.auto import tqdm

    from longvila_jax.data.synthetic import write_video

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    paths = []
    for i in tqdm(range(count), desc="writing videos"):
        path = root / f"bench_{i}_{width}x{height}_{seconds:g}s_{fps}fps_g{gop}.mp4"
        if path.exists():  # same settings in a reused --workdir
            paths.append(path)
            continue
        frames = np.empty((int(seconds * fps), height, width, 3), np.uint8)
        for t in range(frames.shape[0]):
            base = (x + 3 * t + 40 * i) % 256
            frames[t, ..., 0] = base
            frames[t, ..., 1] = (y + 2 * t) % 256
            frames[t, ..., 2] = (base // 2 + rng.integers(0, 24, size=(height, width))) % 256
        paths.append(write_video(path, frames, fps=fps, gop=gop, crf=23))
    return paths


def timed(fn, min_seconds: float):
    """Calls ``fn`` (returns a frame count) until ``min_seconds`` pass; frames/s."""
    frames, start = 0, time.perf_counter()
    while True:
        frames += fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return frames / elapsed


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each video")
    parser.add_argument("--src-fps", type=int, default=30)
    parser.add_argument("--gop", type=int, default=60, help="key frame interval of the written videos")
    parser.add_argument("--num-frames", type=int, default=32, help="frames sampled per video")
    parser.add_argument("--image-size", type=int, default=448, help="tower resolution (SigLIP 384 or 448)")
    parser.add_argument("--min-seconds", type=float, default=5.0, help="time per measurement")
    parser.add_argument("--threads", type=int, default=0, help="pipeline reader threads (0: allowed cores)")
    parser.add_argument("--step-time", type=float, default=2.0, help="seconds per training step")
    parser.add_argument("--frames-per-step", type=int, default=256, help="frames this process feeds per step")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    import av

    from longvila_jax.data import video
    from longvila_jax.data.pipeline import DataConfig, build_dataset
    from longvila_jax.data.sharding import Shard
    from longvila_jax.data.sources import ManifestSource
    from longvila_jax.data.toy_tokenizer import build_toy_tokenizer

    allowed = sorted(os.sched_getaffinity(0))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_data_"))
    paths = make_videos(workdir, args.videos, args.width, args.height, args.seconds, args.src_fps, args.gop)
    spec = video.FrameSpec(num_frames=args.num_frames, image_size=args.image_size, decoder_threads=1)

    os.sched_setaffinity(0, {allowed[0]})  # one core
    cursor = [0]
    stats = video.DecodeStats()

    def sampled():
        path = paths[cursor[0] % len(paths)]
        cursor[0] += 1
        return video.load_video(str(path), spec, stats).shape[0]

    def raw_decode():
        path = paths[cursor[0] % len(paths)]
        cursor[0] += 1
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            return sum(1 for _ in container.decode(stream))

    sampled()  # warm up
    stats.decoded = 0
    start = time.perf_counter()
    per_core = timed(sampled, args.min_seconds)
    decoded_per_s = stats.decoded / (time.perf_counter() - start)
    anchor = timed(raw_decode, args.min_seconds)
    os.sched_setaffinity(0, set(allowed))

    manifest = workdir / "manifest.jsonl"
    with open(manifest, "w") as f:
        for p in paths:
            f.write(json.dumps({"video": p.name, "conversations": [
                {"from": "human", "value": "<video>\nWhat is shown?"}, {"from": "gpt", "value": "a river"}]}) + "\n")
    threads = args.threads or len(allowed)
    config = DataConfig(seq_len=4096, batch_size=1, ring_size=2, frames=spec, num_epochs=None, shard=Shard(0, 1),
                        num_threads=threads, max_frames_per_row=args.num_frames * 4, open_rows=1, shuffle=False)
    it = iter(build_dataset(ManifestSource(manifest), build_toy_tokenizer("llama3"), config))
    next(it)

    def pipeline_step():
        return int(next(it)["frame_valid"].sum())

    pipeline = timed(pipeline_step, args.min_seconds)
    it.close()

    need = args.frames_per_step / args.step_time
    result = {
        "cpu": _cpu_name(), "allowed_cores": len(allowed), "source": f"{args.width}x{args.height}@{args.src_fps}fps "
        f"{args.seconds:g}s gop {args.gop}", "num_frames": args.num_frames, "image_size": args.image_size,
        "frames_per_s_per_core": round(per_core, 1), "anchor_raw_decode_frames_per_s": round(anchor, 1),
        "ratio_sampled_to_raw": round(per_core / anchor, 3),
        "decoded_frames_per_s_per_core": round(decoded_per_s, 1),
        "decoded_per_sampled_frame": round(decoded_per_s / per_core, 2), "pipeline_frames_per_s": round(pipeline, 1),
        "pipeline_threads": threads, "needed_frames_per_s": round(need, 1),
        "cores_needed": round(need / per_core, 2),
        "keeps_up_on_allowed_cores": bool(pipeline >= need),
    }
    print(f"CPU: {result['cpu']} ({len(allowed)} cores allowed)")
    print(f"videos: {args.videos} x {result['source']}; {args.num_frames} frames sampled -> "
          f"{args.image_size}x{args.image_size} float32")
    print(f"decoded+preprocessed frames/s/core: {per_core:8.1f}")
    print(f"anchor, raw sequential decode (all frames, no conversion) frames/s/core: {anchor:8.1f} "
          f"(ratio {per_core / anchor:.3f})")
    print(f"  (the sampler decoded {decoded_per_s / per_core:.1f} frames per frame kept: {decoded_per_s:.1f} "
          f"decoded frames/s/core, {decoded_per_s / anchor:.2f} of the raw rate)")
    print(f"whole pipeline, {threads} threads: {pipeline:8.1f} frames/s")
    print(f"step needs {args.frames_per_step} frames / {args.step_time:g} s = {need:.1f} frames/s -> "
          f"{need / per_core:.2f} cores at the per-core rate; keeps up here: {result['keeps_up_on_allowed_cores']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
