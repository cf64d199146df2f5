"""The ``longvila-jax`` command line."""

from __future__ import annotations

import argparse
import sys

from longvila_jax.platform import simulate_cpu_mesh_if_no_accelerator


def _convert(args) -> int:
    from longvila_jax.convert.cli_ops import hf_to_orbax, orbax_to_hf

    if args.direction == "hf-to-orbax":
        hf_to_orbax(args.src, args.dst, dtype=args.dtype)
    else:
        orbax_to_hf(args.src, args.dst)
    return 0


def _demo(args) -> int:
    from longvila_jax.demo import run_demo

    return run_demo(args.workdir, seed=args.seed, steps=args.steps)


def _train(args) -> int:
    import logging

    from longvila_jax.train.distributed import maybe_initialize

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    maybe_initialize()
    from longvila_jax.train.config import load_config, resolve_config_path
    from longvila_jax.train.trainer import train

    config = load_config(resolve_config_path(args.config), args.overrides)
    summary = train(config)
    losses = summary["losses"]
    last = f"loss {losses[max(losses)]:.4f} at step {max(losses)}" if losses else "no step run"
    if summary["stopped"]:
        print(f"stopped by SIGTERM after step {summary['step']}; checkpoint saved in "
              f"{summary['run'].checkpointer.directory}")
    else:
        print(f"trained {config.name} to step {summary['step']} ({last}); metrics in {config.run.out}/metrics.jsonl"
              + (f"; model in {summary['export']}" if summary["export"] else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longvila-jax",
        description="LongVILA in JAX: convert weights, train a stage, run the demo, generate, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = sub.add_parser("convert", help="convert weights between Hugging Face (VILA layout) and Orbax")
    convert.add_argument("direction", choices=["hf-to-orbax", "orbax-to-hf"])
    convert.add_argument("src", help="source folder")
    convert.add_argument("dst", help="destination folder (must not exist or be empty)")
    convert.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                         help="parameter dtype in JAX (hf-to-orbax; default: the checkpoint's torch_dtype/dtype)")
    convert.set_defaults(run=_convert)

    train = sub.add_parser("train", help="train a stage: longvila-jax train CONFIG [section.key=value ...]")
    train.add_argument("config", help="a config file, or MODEL/STAGE under configs/train (e.g. tiny/short_sft)")
    train.add_argument("overrides", nargs="*", help="overrides such as run.steps=100 optim.lr=1e-4 mesh.ring=2")
    train.set_defaults(run=_train)

    demo = sub.add_parser("demo", help="the main job: train a tiny LongVILA on needle videos over a (simulated) mesh")
    demo.add_argument("--workdir", default="runs/demo", help="where data, checkpoints and outputs go")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's own)")
    demo.set_defaults(run=_demo)

    from longvila_jax.eval.cli_eval import add_parser as add_eval
    from longvila_jax.infer.cli_generate import add_parser as add_generate

    add_generate(sub)
    add_eval(sub)
    return parser


def main(argv=None) -> int:
    simulate_cpu_mesh_if_no_accelerator()
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:  # CheckpointError and ConfigError are ValueErrors
        print(f"longvila-jax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
