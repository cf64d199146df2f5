"""``longvila-jax eval``: V-NIAH (needle in a video haystack) and video multiple-choice QA."""

from __future__ import annotations

import json
from pathlib import Path

from longvila_jax.infer.cli_generate import add_mesh_options, add_model_options, mesh_from_args
from longvila_jax.infer.errors import InputError


def _numbers(text: str, kind, name: str) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{name}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise InputError(f"{name}: give at least one value")
    return values


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a checkpoint: V-NIAH (needle in a video haystack), "
                                     "video multiple-choice QA (VideoMME format)")
    benchmarks = ev.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")

    v = benchmarks.add_parser("vniah", help="needle in a video haystack: JSON of every trial and a heatmap PNG")
    add_model_options(v)
    v.add_argument("--out", required=True, help="output folder (vniah.json, vniah.png)")
    v.add_argument("--haystack", default=None, help="haystack video, sampled at 1 fps (default: generated frames)")
    v.add_argument("--needles", default=None, help="folder with needles.json and images (default: built-in set)")
    v.add_argument("--num-needles", type=int, default=3, help="built-in needles to use")
    v.add_argument("--lengths", default="8,16,32", help="haystack lengths in frames, comma-separated")
    v.add_argument("--depths", default="0,0.2,0.4,0.6,0.8,1.0", help="needle depths in [0, 1], comma-separated")
    v.add_argument("--mode", default="teacher", choices=["teacher", "generate"])
    v.add_argument("--max-new-tokens", type=int, default=16, help="generate mode only")
    v.add_argument("--seed", type=int, default=0, help="seed of the generated haystack and needles")
    v.add_argument("--batch-tokens", type=int, default=1 << 16,
                   help="visual tokens per prefill batch (depths of one length are batched up to this)")
    add_mesh_options(v)
    v.set_defaults(run=run_vniah_cli)

    m = benchmarks.add_parser("mcq", help="video multiple-choice QA (VideoMME format): accuracy overall and per "
                                          "duration class, JSON of every answer")
    add_model_options(m)
    m.add_argument("--questions", required=True, help="JSON, JSONL or Parquet of questions")
    m.add_argument("--videos", required=True, help="folder of videos named <video id>.<ext>")
    m.add_argument("--subtitles", default=None, help="folder of <video id>.srt subtitles (optional)")
    m.add_argument("--frames", type=int, default=16, help="uniform frames per video")
    m.add_argument("--max-new-tokens", type=int, default=16)
    m.add_argument("--out", required=True, help="output JSON file")
    add_mesh_options(m)
    m.set_defaults(run=run_mcq_cli)


def run_vniah_cli(args) -> int:
    from longvila_jax.eval.haystack import generated_haystack, video_haystack
    from longvila_jax.eval.heatmap import write_heatmap
    from longvila_jax.eval.needles import builtin_needles, load_needle_folder
    from longvila_jax.eval.vniah import VNIAHConfig, run_vniah
    from longvila_jax.infer.video_chat import VideoChat

    config = VNIAHConfig(_numbers(args.lengths, int, "--lengths"), _numbers(args.depths, float, "--depths"),
                         args.mode, args.max_new_tokens, args.batch_tokens)
    chat = VideoChat.from_pretrained(args.model, mesh=mesh_from_args(args), tokenizer=args.tokenizer)
    size = chat.model.config.vision.image_size
    needles = load_needle_folder(args.needles, size) if args.needles else builtin_needles(size, args.num_needles,
                                                                                          args.seed)
    longest = max(config.lengths)
    frames = video_haystack(args.haystack, longest, size) if args.haystack else generated_haystack(longest, size,
                                                                                                   args.seed)
    result = run_vniah(chat, frames, needles, config)
    result["config"].update(model=str(args.model), haystack=args.haystack or "generated",
                            mesh={k: int(v) for k, v in chat.generator.mesh.shape.items()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vniah.json").write_text(json.dumps(result, indent=1))
    write_heatmap(out / "vniah.png", result["accuracy"]["grid"], config.lengths, config.depths,
                  title=f"V-NIAH ({config.mode})")
    acc = result["accuracy"]
    print(f"V-NIAH {config.mode}: accuracy {acc['overall']:.3f} over {len(result['trials'])} trials; "
          + ", ".join(f"{n} frames {a:.2f}" for n, a in acc["by_length"].items()))
    print(f"wrote {out / 'vniah.json'} and {out / 'vniah.png'}")
    return 0


def run_mcq_cli(args) -> int:
    from longvila_jax.eval.mcq import ModelAnswerer, run_mcq
    from longvila_jax.eval.mcq_data import load_questions
    from longvila_jax.infer.video_chat import VideoChat

    questions = load_questions(args.questions)
    if not Path(args.videos).is_dir():
        raise InputError(f"--videos {args.videos}: not a folder")
    chat = VideoChat.from_pretrained(args.model, mesh=mesh_from_args(args), tokenizer=args.tokenizer)
    result = run_mcq(questions, args.videos, ModelAnswerer(chat, frames=args.frames,
                                                           max_new_tokens=args.max_new_tokens),
                     subtitles_dir=args.subtitles)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    acc = result["accuracy"]
    print(f"multiple-choice accuracy {acc['overall']:.3f} over {acc['count']} questions "
          f"({acc['unextracted']} without a letter); "
          + ", ".join(f"{c} {s['accuracy']:.3f} ({s['count']})" for c, s in acc["by_duration"].items()))
    print(f"wrote {out}")
    return 0
