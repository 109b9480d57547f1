"""Benchmark: feature-visualization throughput for a ViT-B/16-sized model at 224 px with the vit-paper recipe.

    python scripts/bench_visualize.py [--batch 4] [--steps 3] [--block 6] [--precision auto]

Random weights (speed does not depend on them). Runs a few optimisation steps for a batch of neurons, counts the
FLOPs of one step with torch's FlopCounterMode, and prints: seconds per step, neurons/s for the full 400-step
recipe, achieved FLOP/s and, on a GPU, its fraction of the device's bf16 peak, peak memory, and the time the
ViT paper's full sweep (36,864 MLP neurons of ViT-B/16) would take at this rate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peak, from the data sheets


def build_vit_b16(directory: str) -> str:
    import transformers as T

    config = T.ViTConfig(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
                         num_attention_heads=12, intermediate_size=3072)
    T.ViTModel(config).save_pretrained(directory)
    T.ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(directory)
    return f"hf:{directory}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4, help="neurons optimised together")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    ap.add_argument("--block", type=int, default=6)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    import clipviz
    from clipviz.objectives import Neuron
    from clipviz.recipes import get_recipe
    from clipviz.render import optimise

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = args.precision if args.precision != "auto" else ("bf16" if device == "cuda" else "fp32")
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if precision == "bf16" else None
    with tempfile.TemporaryDirectory() as tmp:
        model = clipviz.load(build_vit_b16(tmp), device=device)
    hook = f"blocks.{args.block}.mlp.hook_post"
    neurons = list(range(args.batch))
    objective = Neuron(hook, neurons)
    kwargs = {"autocast": autocast} if autocast else {}

    def run(steps: int) -> float:
        recipe = get_recipe("vit-paper", steps=steps)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimise(model, objective, neurons, recipe, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(1)  # warm-up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = run(1)
    total = run(1 + args.steps)
    per_step = (total - base) / args.steps

    from torch.utils.flop_counter import FlopCounterMode

    def flops(steps: int) -> int:
        with FlopCounterMode(display=False) as counter:
            run(steps)
        return counter.get_total_flops()

    flops_step = flops(2) - flops(1)  # one optimisation step: forward of all copies + backward to the pixels
    recipe = get_recipe("vit-paper")
    per_neuron_s = per_step * recipe.steps / args.batch
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "precision": precision, "batch_neurons": args.batch, "copies": recipe.copies, "hook": hook,
        "seconds_per_step": round(per_step, 4), "neurons_per_second": round(1 / per_neuron_s, 4),
        "flops_per_step": flops_step, "achieved_tflops": round(flops_step / per_step / 1e12, 4),
        "sweep_36864_hours": round(36864 * per_neuron_s / 3600, 2),
    }
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        if peak and precision == "bf16":
            result["fraction_of_bf16_peak"] = round(flops_step / per_step / peak, 3)
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
