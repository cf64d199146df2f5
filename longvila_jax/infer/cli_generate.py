"""``longvila-jax generate``: answer a prompt about a video, streaming the text."""

from __future__ import annotations

import argparse

from longvila_jax.infer.errors import InputError


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="LongVILA checkpoint folder (VILA layout, tokenizer in llm/)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer folder, or toy:llama3 / toy:chatml (default: the checkpoint's llm/)")


def add_mesh_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ring", type=int, default=None,
                        help="ring size of the sequence-parallel mesh (default: all devices / ulysses)")
    parser.add_argument("--ulysses", type=int, default=1, help="ulysses size of the mesh (default 1)")


def mesh_from_args(args):
    """A mesh of ``ring * ulysses`` devices (the first ones); the default ring takes every device."""
    import jax

    from longvila_jax.sharding import make_mesh

    devices = jax.devices()
    ulysses = args.ulysses
    ring = args.ring or max(1, len(devices) // ulysses)
    if ring < 1 or ulysses < 1 or ring * ulysses > len(devices):
        raise InputError(f"--ring {ring} x --ulysses {ulysses} needs {ring * ulysses} devices, "
                         f"but {len(devices)} are available; choose sizes whose product is at most {len(devices)}")
    return make_mesh(ring=ring, ulysses=ulysses, devices=devices[:ring * ulysses])


def add_parser(sub) -> None:
    gen = sub.add_parser("generate", help="answer a prompt about a video (KV-cache generation, sequence-parallel "
                                          "prefill), streaming the text")
    add_model_options(gen)
    gen.add_argument("--video", required=True, help="video file")
    gen.add_argument("--prompt", required=True, action="append",
                     help="the question; repeat for a batch of prompts about the same video")
    gen.add_argument("--frames", type=int, default=None, help="sample N frames uniformly (default: --fps)")
    gen.add_argument("--fps", type=float, default=1.0, help="frames per second when --frames is not given")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--max-tokens", type=int, default=None,
                     help="token budget of prompt + answer (default: the LLM's max_position_embeddings)")
    gen.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                     help="compute dtype (default: the checkpoint's)")
    add_mesh_options(gen)
    gen.set_defaults(run=run)


def run(args) -> int:
    from longvila_jax.convert.cli_ops import DTYPES
    from longvila_jax.infer.media import probe_video
    from longvila_jax.infer.video_chat import VideoChat

    probe_video(args.video)  # a missing or unreadable video fails before the model loads
    chat = VideoChat.from_pretrained(args.model, dtype=DTYPES[args.dtype] if args.dtype else None,
                                     mesh=mesh_from_args(args), max_tokens=args.max_tokens, tokenizer=args.tokenizer)
    options = dict(frames=args.frames, fps=args.fps, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if len(args.prompt) == 1:
        chat.ask(args.video, args.prompt[0], stream=True, **options)
        print()
        return 0
    for question, answer in zip(args.prompt, chat.ask(args.video, args.prompt, **options)):
        print(f"Q: {question}\nA: {answer}\n")
    return 0
