"""Benchmark: feature-visualization throughput for a ViT-B/16-sized model at 224 px with the vit-paper recipe.

    python scripts/bench_visualize.py [--batch 4] [--steps 3] [--blocks 6] [--precision auto] [--json FILE]
    python scripts/bench_visualize.py --batch 32,64 --blocks all --precision bf16-weights     # on a GPU

Random weights (speed does not depend on them). For each batch size (neurons optimised together, each with the
recipe's 8 augmented copies) and each block, runs a few optimisation steps of ``blocks.B.mlp.hook_post`` neurons,
counts the FLOPs of one step with torch's FlopCounterMode, and prints seconds per step, neurons/s for the full
400-step recipe, achieved FLOP/s and, on a GPU, its fraction of the device's bf16 peak, and peak memory.

The projected time of the ViT paper's full sweep (all 36,864 MLP neurons of ViT-B/16) sums, over the 12 blocks,
3,072 neurons times that block's time per neuron: the forward pass stops after the block, so early blocks are
cheaper. With ``--blocks`` a subset, the blocks not measured are interpolated linearly.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peak, from the data sheets
N_BLOCKS, D_MLP = 12, 3072


def build_vit_b16(directory: str) -> str:
    import transformers as T

    config = T.ViTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=768,
        num_hidden_layers=N_BLOCKS,
        num_attention_heads=12,
        intermediate_size=D_MLP,
    )
    T.ViTModel(config).save_pretrained(directory)
    T.ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(directory)
    return f"hf:{directory}"


def measure(model, block: int, batch: int, steps: int, autocast, device: str) -> dict:
    """Seconds per optimisation step and FLOPs per step for ``batch`` neurons of one block."""
    from torch.utils.flop_counter import FlopCounterMode

    from clipviz.objectives import Neuron
    from clipviz.recipes import get_recipe
    from clipviz.render import optimise

    neurons = list(range(batch))
    objective = Neuron(f"blocks.{block}.mlp.hook_post", neurons)
    kwargs = {"autocast": autocast} if autocast else {}

    def run(n_steps: int) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimise(model, objective, neurons, get_recipe("vit-paper", steps=n_steps), **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(1)  # warm-up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = run(1)
    per_step = (run(1 + steps) - base) / steps

    def flops(n_steps: int) -> int:
        with FlopCounterMode(display=False) as counter:
            run(n_steps)
        return counter.get_total_flops()

    flops_step = flops(2) - flops(1)  # one optimisation step: forward of all copies + backward to the pixels
    out = {
        "block": block,
        "batch_neurons": batch,
        "seconds_per_step": round(per_step, 5),
        "neurons_per_second": round(batch / (per_step * get_recipe("vit-paper").steps), 4),
        "flops_per_step": flops_step,
        "achieved_tflops": round(flops_step / per_step / 1e12, 2),
    }
    if device == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def profile_step(model, block: int, batch: int, autocast) -> None:
    """The kernels of two optimisation steps, by total GPU time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    from clipviz.objectives import Neuron
    from clipviz.recipes import get_recipe
    from clipviz.render import optimise

    neurons = list(range(batch))
    objective = Neuron(f"blocks.{block}.mlp.hook_post", neurons)
    kwargs = {"autocast": autocast} if autocast else {}
    optimise(model, objective, neurons, get_recipe("vit-paper", steps=2), **kwargs)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        optimise(model, objective, neurons, get_recipe("vit-paper", steps=2), **kwargs)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))


def sweep_hours(rows: list[dict]) -> float:
    """The 36,864-neuron sweep at the measured per-neuron times, interpolating blocks that were not measured."""
    measured = sorted((r["block"], 1.0 / r["neurons_per_second"]) for r in rows)
    blocks, seconds = zip(*measured, strict=True)
    per_block = np.interp(np.arange(N_BLOCKS), blocks, seconds)  # constant beyond the ends
    return float(per_block.sum() * D_MLP / 3600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default="4", help="neurons optimised together; a comma-separated list to compare")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    ap.add_argument("--blocks", default="6", help="blocks to measure: a comma-separated list or 'all'")
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "bf16-weights"],
        help="bf16: autocast over fp32 weights; bf16-weights: the model loaded in bf16, no autocast "
        "(auto: bf16-weights on a GPU, fp32 on the CPU)",
    )
    ap.add_argument("--profile", action="store_true", help="print the GPU kernels of one step, by total time")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    import clipviz

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = args.precision if args.precision != "auto" else ("bf16-weights" if device == "cuda" else "fp32")
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if precision == "bf16" else None
    dtype = torch.bfloat16 if precision == "bf16-weights" else None
    with tempfile.TemporaryDirectory() as tmp:
        model = clipviz.load(build_vit_b16(tmp), device=device, dtype=dtype)
    blocks = list(range(N_BLOCKS)) if args.blocks == "all" else [int(b) for b in args.blocks.split(",")]
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None) if precision.startswith("bf16") else None
    result: dict = {"device": name, "precision": precision, "copies": 8, "steps_per_neuron": 400, "runs": []}
    for batch in (int(b) for b in args.batch.split(",")):
        rows = []
        for block in blocks:
            row = measure(model, block, batch, args.steps, autocast, device)
            if peak:
                row["fraction_of_bf16_peak"] = round(row["achieved_tflops"] * 1e12 / peak, 3)
            print(json.dumps(row), flush=True)
            rows.append(row)
        total_flops = sum(r["flops_per_step"] for r in rows)
        total_seconds = sum(r["seconds_per_step"] for r in rows)
        summary = {
            "batch_neurons": batch,
            "blocks": blocks,
            "sweep_36864_hours": round(sweep_hours(rows), 2),
            "achieved_tflops_over_blocks": round(total_flops / total_seconds / 1e12, 2),
            "rows": rows,
        }
        if peak:
            summary["fraction_of_bf16_peak_over_blocks"] = round(total_flops / total_seconds / peak, 3)
        print(json.dumps({k: v for k, v in summary.items() if k != "rows"}), flush=True)
        result["runs"].append(summary)
    if args.profile:
        profile_step(model, blocks[-1], int(args.batch.split(",")[-1]), autocast)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
