"""Benchmark: clipviz's feature-visualization step against a naive PyTorch loop, per block, in one run.

    python scripts/bench_visualize.py                                   # CPU: ViT-S/16, default recipe, blocks 0,3,6,11
    python scripts/bench_visualize.py --recipe default,vit-paper --sweep   # + the projected ViT-B/16 sweeps
    python scripts/bench_visualize.py --blocks 6 --ablate --compiled       # what each speed-up buys
    python scripts/bench_visualize.py --recipe vital --blocks 3,6 --variants "speed-ups on,without sliced_mlp"
    python scripts/bench_visualize.py --model vit-b16 --recipe vit-paper,default --batch 32 --sweep  # on a GPU

Random weights (speed does not depend on them), built from a transformers ``ViTConfig`` at 224 px: ``vit-s16``
(384 wide, 6 heads, MLP 1536) or ``vit-b16`` (768, 12, 3072), 12 blocks; or the bundled ``world-clip`` (open_clip,
4 blocks, 128 wide, 64 px). The objective is one ``blocks.B.mlp.hook_post`` neuron per image (``--batch`` neurons
optimised together, each with the recipe's copies); for a data-guided recipe (``--recipe vital``) plus its
sort-matching terms against ``guide_k`` random reference images per neuron (``synthetic_guides``). The naive loop
has no sort matching: for ``vital`` its time is only the yardstick that the variants (``--ablate``) are each
measured against, in the same process.

The naive loop does the same work per step with plain PyTorch, as one would write it by hand: the same
parameterisation and augmentations (batched random draws), the model's own normalisation, the native model with a
forward hook on block B's MLP activation that stores the output and raises to stop the pass (full forward to the
hooked block, the full MLP: every neuron computed, one column taken per image), the same loss and Adam. clipviz
runs its ``optimise`` (its exact speed-ups on; with ``--plain`` also a second time with them off, with
``--ablate`` once more per speed-up with that one off, with ``--compiled`` with its blocks compiled; each row also
gives clipviz's time to its first step, which holds any compilation). The two are
interleaved step by step in one process: clipviz's ``on_step`` callback runs one naive step, so every clipviz step
is timed between two naive steps and the machine's load hits both alike; the first step of each is dropped and the
ratio reported is the median of the per-step ratios (with its quartiles). FLOPs of one step are counted by torch's
FlopCounterMode; the fraction of peak is against the dense bf16 tensor-core peak on a GPU, and on a CPU against
the best float32 matrix-product rate measured here at the same thread count (the clock of a virtual machine's
core is not known, so no data-sheet peak is claimed).

With ``--sweep``, the projected time of the full ViT-B/16 sweep (all 36,864 MLP neurons, 12 x 3,072) is measured
on a ViT-B/16-sized model for each recipe: per block, seconds per neuron (one step of ``--batch`` neurons, over
the batch, times the recipe's steps), summed over 3,072 neurons per block; blocks not measured are interpolated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peak, from the data sheets
N_BLOCKS = 12
MODELS = {"vit-s16": (384, 6, 1536), "vit-b16": (768, 12, 3072)}


def build_vit(directory: str, name: str) -> str:
    import transformers as T

    width, heads, d_mlp = MODELS[name]
    config = T.ViTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=width,
        num_hidden_layers=N_BLOCKS,
        num_attention_heads=heads,
        intermediate_size=d_mlp,
    )
    torch.manual_seed(0)
    T.ViTModel(config).save_pretrained(directory)
    T.ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(directory)
    return f"hf:{directory}"


# ------------------------------------------------------------------------------------------------ the naive loop
class _Stop(Exception):
    pass


def _fourier_image(n: int, side: int, device) -> tuple[torch.Tensor, callable]:
    fy = torch.fft.fftfreq(side)[:, None]
    fx = torch.fft.rfftfreq(side)[None, :]
    scale = (1.0 / torch.clamp(torch.sqrt(fx * fx + fy * fy), min=1.0 / side)).to(device)
    colour = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
    colour = (colour / colour.norm(dim=0).max()).to(device)
    spectrum = (torch.randn(n, 3, side, side // 2 + 1, 2) * 0.01).to(device).requires_grad_()

    def image() -> torch.Tensor:
        x = torch.fft.irfft2(torch.view_as_complex(spectrum) * scale, s=(side, side), norm="ortho") / 4.0
        return torch.sigmoid(torch.einsum("nchw,dc->ndhw", x, colour))

    return spectrum, image


def _warp(x: torch.Tensor, theta: torch.Tensor, padding: str) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _augment(recipe, x: torch.Tensor, progress: float) -> torch.Tensor:
    """``x`` (n * copies, 3, H, W): the recipe's augmentations, written out with batched random draws."""
    b, device = x.shape[0], x.device
    if recipe.color_shift == "vit":
        mu = (torch.rand(b, 3, 1, 1) * 2 - 1).to(device)
        sigma = torch.exp(torch.rand(b, 3, 1, 1) * 2 - 1).to(device)
        x = (x - mu) / sigma
    if recipe.offset_noise:
        x = x + recipe.offset_noise * (1 - progress) * torch.randn(b, 3, 1, 1).to(device)
    if recipe.jitter:
        shifts = torch.randint(-recipe.jitter, recipe.jitter + 1, (b, 2)).tolist()
        x = torch.stack([torch.roll(img, (dy, dx), dims=(-2, -1)) for img, (dy, dx) in zip(x, shifts, strict=True)])
    if recipe.scale:
        lo, hi = recipe.scale
        inv = 1.0 / (lo + (hi - lo) * torch.rand(b))
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = inv
        theta[:, :, 2] = (torch.rand(b, 2) * 2 - 1) * (1 - inv.clamp(max=1.0))[:, None]
        x = _warp(x, theta.to(device), "reflection")
    if recipe.affine:
        deg, tr, lo, hi = recipe.affine
        draws = torch.rand(b, 4)
        angle = (draws[:, 0] * 2 - 1) * math.radians(deg)
        s = lo + (hi - lo) * draws[:, 1]
        tx, ty = (draws[:, 2] * 2 - 1) * tr * 2, (draws[:, 3] * 2 - 1) * tr * 2
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        theta = torch.stack([torch.stack([cos, -sin, tx], -1), torch.stack([sin, cos, ty], -1)], -2)
        x = _warp(x, theta.to(device), "zeros")
    return x


def _tv(images: torch.Tensor) -> torch.Tensor:
    d = (
        images[..., 1:, :] - images[..., :-1, :],
        images[..., :, 1:] - images[..., :, :-1],
        images[..., 1:, 1:] - images[..., :-1, :-1],
        images[..., 1:, :-1] - images[..., :-1, 1:],
    )
    return sum(t.flatten(-2).norm(dim=-1).mean(dim=-1) for t in d)


def naive_steps(model, block: int, neurons: list[int], recipe):
    """The hand-written loop (see the module docstring), one step per ``next()``; ``model`` is a
    HookedVisionModel, used for its native module, its normalisation and where block ``block``'s MLP activation
    module is."""
    device, side = model.device, model.image_size[0]
    n, copies, steps = len(neurons), recipe.copies, recipe.total_steps
    mean = torch.tensor(model.backend.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.backend.std, device=device).view(1, 3, 1, 1)
    if recipe.param == "fourier":
        leaf, image = _fourier_image(n, side, device)
    else:
        leaf = torch.rand(n, 3, side, side).to(device).requires_grad_()

        def image():
            return leaf

    idx = torch.tensor(neurons, device=device).repeat_interleave(copies)
    n_prefix = len(model.prefix_tokens)
    store = {}

    def hook(module, args, output):
        store["act"] = output
        raise _Stop

    opt = torch.optim.Adam([leaf], lr=recipe.lr, betas=recipe.betas, eps=recipe.eps)
    k = 0
    while True:
        if recipe.schedule == "cosine":
            for g in opt.param_groups:
                g["lr"] = 0.5 * recipe.lr * (1 + math.cos(math.pi * (k % steps) / steps))
        img = image()
        x = img.repeat_interleave(copies, 0) if copies > 1 else img
        x = _augment(recipe, x, (k % steps) / max(1, steps - 1))
        x = ((x - mean) / std).to(model.dtype)
        handle = model.blocks[block].act.register_forward_hook(hook)
        try:
            with contextlib.suppress(_Stop):
                model.backend.forward(x)
        finally:
            handle.remove()
        act = store.pop("act")  # (n * copies, N, d_mlp): every neuron of the MLP
        picked = act.gather(-1, idx.view(-1, 1, 1).expand(*act.shape[:2], 1)).squeeze(-1)
        values = picked[:, n_prefix:].float().mean(-1).view(n, copies).mean(1)
        if recipe.tv:
            values = values - recipe.tv * _tv(img)
        opt.zero_grad(set_to_none=True)
        (-values.sum()).backward()
        opt.step()
        if recipe.param == "pixel":
            with torch.no_grad():
                leaf.clamp_(0, 1)
        k += 1
        yield k


# ------------------------------------------------------------------------------------------------ measurements
def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def synthetic_guides(model, neurons: list[int], k: int) -> list[torch.Tensor]:
    """``k`` random reference images per neuron (seeded by the neuron), for data-guided recipes: the step's work
    does not depend on what the references show."""
    side = model.image_size
    return [torch.rand(k, 3, *side, generator=torch.Generator().manual_seed(1000 + n)) for n in neurons]


def clipviz_run(model, block: int, neurons: list[int], recipe, steps: int, on_step=None, **kwargs) -> None:
    from clipviz.visualization.objectives import Neuron
    from clipviz.visualization.optimise import optimise
    from clipviz.visualization.recipes import get_recipe
    from clipviz.visualization.vital import guided_objective

    settings = get_recipe(recipe, steps=steps)
    hook = f"blocks.{block}.mlp.hook_post"
    objective = Neuron(hook, neurons)
    if settings.match:  # vital: sort matching against synthetic references
        guides = synthetic_guides(model, neurons, settings.guide_k)
        objective = guided_objective(model, hook, neurons, guides, settings.match, settings.match_weight)
    optimise(model, objective, neurons, settings, on_step=on_step, **kwargs)


def interleaved(model, block: int, neurons: list[int], recipe, steps: int, **kwargs) -> tuple[list, list, float]:
    """Seconds per step of clipviz and of the naive loop, alternating step by step: clipviz's ``on_step`` runs one
    naive step, so each clipviz step is timed between two naive steps. The first step of each is dropped; the
    third value is clipviz's time to its first step (the clean evaluation, the first step and any compilation)."""
    naive = naive_steps(model, block, neurons, recipe)
    ours, theirs = [], []
    last: list[float | None] = [None]
    start = time.perf_counter()
    first = [0.0]

    def on_step(_k: int, _values: torch.Tensor) -> None:
        _sync(model.device)
        now = time.perf_counter()
        if last[0] is not None:
            ours.append(now - last[0])
        else:
            first[0] = now - start
        next(naive)
        _sync(model.device)
        theirs.append(time.perf_counter() - now)
        last[0] = time.perf_counter()

    clipviz_run(model, block, neurons, recipe.name, steps + 1, on_step=on_step, **kwargs)
    naive.close()
    return ours, theirs[1:], first[0]


def _count_onednn_linear() -> None:
    """Teach FlopCounterMode oneDNN's linear product (``clipviz.model.onednn``), which it does not count."""
    from torch.utils.flop_counter import register_flop_formula

    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or op in _COUNTED:
        return

    @register_flop_formula(op)
    def _formula(x_shape, w_shape, *args, **kwargs) -> int:
        return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * w_shape[0]

    _COUNTED.add(op)


_COUNTED: set = set()


def flops_of_step(model, block, neurons, recipe, **kwargs) -> tuple[int, int]:
    """FLOPs of one clipviz step and of one naive step."""
    from torch.utils.flop_counter import FlopCounterMode

    _count_onednn_linear()

    def ours(steps: int) -> int:
        with FlopCounterMode(display=False) as counter:
            clipviz_run(model, block, neurons, recipe.name, steps, **kwargs)
        return counter.get_total_flops()

    naive = naive_steps(model, block, neurons, recipe)
    next(naive)
    with FlopCounterMode(display=False) as counter:
        next(naive)
    naive.close()
    return ours(2) - ours(1), counter.get_total_flops()  # the clean evaluations before and after cancel out


def compare(model, block: int, batch: int, recipe, steps: int, autocast=None, variant: str = "speed-ups on") -> dict:
    """clipviz against the naive loop, interleaved step by step; ``variant``: one of ``variants()``."""
    from clipviz.visualization.recipes import get_recipe

    recipe = get_recipe(recipe)
    neurons = list(range(batch))
    kwargs = {"autocast": autocast} if autocast else {}
    kwargs["speedups"] = variants()[variant]
    ours, naive, first = interleaved(model, block, neurons, recipe, steps, **kwargs)
    ratios = [a / b for a, b in zip(ours, naive, strict=True)]
    flops_ours, flops_naive = flops_of_step(model, block, neurons, recipe, **kwargs)
    s_ours, s_naive = statistics.median(ours), statistics.median(naive)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "block": block,
        "recipe": recipe.name,
        "clipviz": variant,
        "batch_neurons": batch,
        "images_per_step": batch * recipe.copies,
        "steps_timed": len(ratios),
        "clipviz_s_per_step": round(s_ours, 4),
        "clipviz_s_to_first_step": round(first, 2),
        "naive_s_per_step": round(s_naive, 4),
        "ratio_clipviz_over_naive": round(statistics.median(ratios), 3),
        "ratio_quartiles": [round(q[0], 3), round(q[2], 3)],
        "clipviz_gflop_per_step": round(flops_ours / 1e9, 2),
        "naive_gflop_per_step": round(flops_naive / 1e9, 2),
        "clipviz_gflops": round(flops_ours / s_ours / 1e9, 1),
        "naive_gflops": round(flops_naive / s_naive / 1e9, 1),
    }


def variants() -> dict:
    """clipviz's settings compared: the default speed-ups, all off, each one off alone, and the compiled blocks."""
    from dataclasses import fields, replace

    from clipviz.visualization.speedups import SpeedUps

    out = {"speed-ups on": SpeedUps(), "speed-ups off": SpeedUps.none()}
    out.update({f"without {f.name}": replace(SpeedUps(), **{f.name: False}) for f in fields(SpeedUps)})
    del out["without compiled_blocks"]  # off by default
    out["with compiled_blocks"] = SpeedUps(compiled_blocks=True)
    return out


def cpu_peak_gflops(repeats: int = 10) -> float:
    """The best float32 matrix-product rate measured here at the current thread count: the best of ``repeats``
    runs of a 2048^3 product and of the ViT-S MLP's (788 x 384) x (384 x 1536) product, whichever is faster."""
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (788, 384, 1536)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - start) / 1e9)
    return best


def sweep_hours(per_block: dict[int, float], d_mlp: int) -> float:
    """All ``12 x d_mlp`` neurons at the measured seconds per neuron, interpolating blocks not measured."""
    blocks = sorted(per_block)
    seconds = np.interp(np.arange(N_BLOCKS), blocks, [per_block[b] for b in blocks])
    return float(seconds.sum() * d_mlp / 3600)


def clipviz_step_times(model, block: int, neurons: list[int], recipe_name: str, steps: int, **kwargs) -> list:
    """Seconds of each clipviz step after the first, from one ``on_step`` call to the next."""
    stamps: list[float] = []

    def on_step(_k: int, _values: torch.Tensor) -> None:
        _sync(model.device)
        stamps.append(time.perf_counter())

    clipviz_run(model, block, neurons, recipe_name, steps + 1, on_step=on_step, **kwargs)
    return list(np.diff(stamps))


def measure_sweep(model, blocks, batch: int, recipe_name: str, steps: int, autocast=None) -> dict:
    """Seconds per neuron (clipviz) for the whole ``recipe`` run, per block, and the 36,864-neuron sweep."""
    from clipviz.visualization.recipes import get_recipe

    recipe = get_recipe(recipe_name)
    kwargs = {"autocast": autocast} if autocast else {}
    per_block, per_step = {}, {}
    for block in blocks:
        per_step[block] = statistics.median(
            clipviz_step_times(model, block, list(range(batch)), recipe_name, steps, **kwargs)
        )
        per_block[block] = per_step[block] * recipe.total_steps / batch
    return {
        "model": "vit-b16",
        "recipe": recipe_name,
        "batch_neurons": batch,
        "seconds_per_step": {b: round(s, 3) for b, s in per_step.items()},
        "seconds_per_neuron": {b: round(s, 1) for b, s in per_block.items()},
        "sweep_36864_hours": round(sweep_hours(per_block, MODELS["vit-b16"][2]), 2),
    }


def profile_step(model, block: int, batch: int, recipe_name: str, autocast=None) -> None:
    """The operations of two clipviz steps, by total device time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    kwargs = {"autocast": autocast} if autocast else {}
    cuda = model.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    clipviz_run(model, block, list(range(batch)), recipe_name, 2, **kwargs)
    with profile(activities=activities) as prof:
        clipviz_run(model, block, list(range(batch)), recipe_name, 2, **kwargs)
        _sync(model.device)
    sort = "cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit-s16", choices=[*sorted(MODELS), "world-clip"])
    ap.add_argument("--recipe", default="default", help="comma-separated recipes to compare")
    ap.add_argument("--batch", type=int, default=4, help="neurons optimised together")
    ap.add_argument("--blocks", default="0,3,6,11", help="blocks to measure: a comma-separated list or 'all'")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per block (after one warm-up step)")
    ap.add_argument("--sweep-steps", type=int, default=2, help="timed steps per block in the ViT-B/16 sweep")
    ap.add_argument("--plain", action="store_true", help="also compare clipviz with its speed-ups off")
    ap.add_argument("--ablate", action="store_true", help="also compare clipviz with each speed-up off alone")
    ap.add_argument("--compiled", action="store_true", help="also compare clipviz with its blocks compiled")
    ap.add_argument(
        "--variants", help="instead: these clipviz settings, comma-separated names of variants(), in this order"
    )
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--sweep", action="store_true", help="also project the ViT-B/16 sweep for each recipe")
    ap.add_argument("--sweep-batch", type=int, default=None, help="neurons per batch in the sweep (default --batch)")
    ap.add_argument("--sweep-only", action="store_true", help="only the ViT-B/16 sweep, no comparison")
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "bf16-weights"],
        help="bf16: autocast over fp32 weights; bf16-weights: the model loaded in bf16, no autocast "
        "(auto: bf16-weights on a GPU, fp32 on the CPU)",
    )
    ap.add_argument("--profile", action="store_true", help="print the operations of two steps of the last block")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    import clipviz

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = args.precision if args.precision != "auto" else ("bf16-weights" if device == "cuda" else "fp32")
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if precision == "bf16" else None
    dtype = torch.bfloat16 if precision == "bf16-weights" else None
    blocks = list(range(N_BLOCKS)) if args.blocks == "all" else [int(b) for b in args.blocks.split(",")]
    recipes = args.recipe.split(",")
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None) if precision.startswith("bf16") else None
        peak_note = "dense bf16 peak from the data sheet"
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
        peak = cpu_peak_gflops() * 1e9
        peak_note = "best float32 matrix-product rate measured here, same threads (see cpu_peak_gflops)"
    result: dict = {"device": name, "precision": precision, "rows": [], "sweeps": []}
    if not args.sweep_only:
        result["model"] = args.model
    if peak:
        result["peak_gflops"] = round(peak / 1e9, 1)
        result["peak_note"] = peak_note
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "sweeps")}), flush=True)
    model = None
    if args.model == "world-clip" and not args.sweep_only:
        model = clipviz.load("world-clip", device=device, dtype=dtype)
    elif not args.sweep_only or args.model == "vit-b16":
        with tempfile.TemporaryDirectory() as tmp:
            model = clipviz.load(build_vit(tmp, args.model), device=device, dtype=dtype)
    for recipe in [] if args.sweep_only else recipes:
        for block in blocks:
            names = ["speed-ups on"] + ["speed-ups off"] * args.plain
            names += [v for v in variants() if v.startswith("without ")] if args.ablate else []
            names += ["with compiled_blocks"] * args.compiled
            names = args.variants.split(",") if args.variants else names
            for variant in names:
                row = compare(model, block, args.batch, recipe, args.steps, autocast, variant)
                if peak:
                    row["clipviz_fraction_of_peak"] = round(row["clipviz_gflops"] * 1e9 / peak, 3)
                    row["naive_fraction_of_peak"] = round(row["naive_gflops"] * 1e9 / peak, 3)
                print(json.dumps(row), flush=True)
                result["rows"].append(row)
    if args.profile:
        profile_step(model, blocks[-1], args.batch, recipes[-1], autocast)
    if args.sweep or args.sweep_only:
        big = model
        if big is None or args.model != "vit-b16":
            with tempfile.TemporaryDirectory() as tmp:
                big = clipviz.load(build_vit(tmp, "vit-b16"), device=device, dtype=dtype)
        for recipe in recipes:
            sweep = measure_sweep(big, blocks, args.sweep_batch or args.batch, recipe, args.sweep_steps, autocast)
            print(json.dumps(sweep), flush=True)
            result["sweeps"].append(sweep)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
