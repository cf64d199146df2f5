"""A picture of one ``bench_attention.py --json`` run: forward+backward TFLOP/s per backend and mask.

    python scripts/plot_attention.py rows.json -o bench.png
    python scripts/bench_attention.py ... --json rows.json --plot bench.png     (the same, at the end of a run)

One panel per sequence length; per mask a group of bars, one per backend row (tunings included), each
labelled with its ratio to JAX cuDNN on the plain mask of that kind (packed and batched masks: to the row's
own plain rate, the goal's measure); a dashed line at the run's bf16 matmul ceiling.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def plot_rows(run: dict, path) -> Path:
    """Write ``run`` (``{"device", "jax", "rows": [bench_attention rows]}``) as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run.get("rows") if isinstance(run, dict) else None
    if not rows:
        raise ValueError("the run has no rows to plot (every backend failed, or the JSON is not bench_attention's)")
    needed = {"impl", "seq", "mask", "fwd_bwd_tflops", "ratio_fwd_bwd", "ratio_own_plain"}
    for row in rows:
        missing = needed - set(row) if isinstance(row, dict) else needed
        if missing:
            raise ValueError(f"a row lacks {sorted(missing)}: not a bench_attention.py --json row ({str(row)[:80]})")
    lengths = sorted({row["seq"] for row in rows})
    impls = list(dict.fromkeys(row["impl"] for row in rows))
    fig, axes = plt.subplots(1, len(lengths), figsize=(max(5.0, 2.2 + 1.1 * len(impls)) * len(lengths), 4.2),
                             squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, length in zip(axes[0], lengths):
        mine = [row for row in rows if row["seq"] == length]
        masks = list(dict.fromkeys(row["mask"] for row in mine))
        width = 0.8 / len(impls)
        for i, impl in enumerate(impls):
            for j, mask in enumerate(masks):
                row = next((r for r in mine if r["impl"] == impl and r["mask"] == mask), None)
                if row is None:
                    continue
                x = j + (i - (len(impls) - 1) / 2) * width
                ax.bar(x, row["fwd_bwd_tflops"], width, color=colours(i % 10), label=impl if j == 0 else None)
                ratio = row["ratio_own_plain"] if "-" in mask else row["ratio_fwd_bwd"]
                if ratio != "-":
                    ax.text(x, row["fwd_bwd_tflops"], f"{ratio}x", ha="center", va="bottom", fontsize=7,
                            rotation=90 if len(impls) > 3 else 0)
        ceiling = mine[0].get("ceiling_tflops")
        if ceiling:
            ax.axhline(ceiling, color="grey", linestyle="--", linewidth=1)
            ax.text(len(masks) - 0.5, ceiling, f"bf16 matmul {ceiling:.0f}", ha="right", va="bottom", fontsize=7,
                    color="grey")
        ax.set_xticks(range(len(masks)), masks, fontsize=8)
        ax.set_title(f"S = {length}", fontsize=10)
        ax.set_ylabel("forward+backward TFLOP/s")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=7, frameon=False)
    fig.suptitle(f"{run.get('device', '?')}, jax {run.get('jax', '?')}: ratio to JAX cuDNN (plain masks) "
                 "or to the own plain rate (packed, batched)", fontsize=9)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * ((len(labels) - 1) // 4), 1, 0.95))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", help="bench_attention.py --json output")
    parser.add_argument("-o", "--output", help="PNG to write (default: the JSON's name with .png)")
    args = parser.parse_args(argv)
    source = Path(args.json)
    try:
        run = json.loads(source.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"cannot read {source}: {err}") from None
    try:
        print(plot_rows(run, args.output or source.with_suffix(".png")))
    except ValueError as err:
        raise SystemExit(f"{source}: {err}") from None


if __name__ == "__main__":
    main()
