"""Validate the bundled synthetic-world CLIP and clipviz's methods against the world's ground truth.

    python scripts/validate_world_clip.py [--json FILE] [--write-ground-truth] [--recipes vit-paper-clip,default]

Prints and (with --json) writes:
* zero-shot accuracy per factor family on held-out single-object images;
* the planted neurons' held-out AUROC for their concepts (``--plant PLAN`` records them in the ground truth);
* the number of natural clear-concept neurons (best AUROC >= 0.95, and >= 0.9; planted ones excluded) per block
  and family;
* the direct lens's top-1 agreement with the ground-truth concept for neurons with AUROC > 0.9;
* for each recipe, the share of feature visualizations that the model itself classifies (zero-shot, among all the
  world's single-factor prompts) as the neuron's true concept, and the objective they reach.
--write-ground-truth recomputes the shipped table (clipviz/world/models/world-clip/ground_truth.*).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

import clipviz
from clipviz import world
from clipviz.analysis.concepts import direct_lens, load_vocabulary
from clipviz.model.loading import bundled_models
from clipviz.visualization.visualize import visualize
from clipviz.world.groundtruth import (
    CONCEPTS,
    bundled_selectivity,
    image_embeddings,
    prompt_embeddings,
    selectivity,
    zero_shot_accuracy,
)


def clear_counts(truth, threshold: float) -> dict:
    out = {}
    for hook in sorted(truth.auroc):
        rows = truth.natural_clear(hook, threshold)
        out[hook] = dict(Counter(fam for _, fam, _, _ in rows))
        out[hook]["total"] = len(rows)
    return out


def lens_agreement(model, truth, threshold: float = 0.9) -> dict:
    vocab = load_vocabulary("world")
    prompts = {f"{f}:{v}": world.prompt(f, v) for f, v in CONCEPTS}
    out = {}
    for hook in sorted(truth.auroc):
        rows = truth.natural_clear(hook, threshold)
        if not rows:
            out[hook] = {"neurons": 0}
            continue
        table = direct_lens(model, hook, [r[0] for r in rows], vocab, top_k=1)
        hits = [t["words"][0] == prompts[f"{fam}:{val}"] for t, (_, fam, val, _) in zip(table, rows, strict=True)]
        out[hook] = {"neurons": len(rows), "top1_agreement": round(float(np.mean(hits)), 4)}
    return out


@torch.no_grad()
def dissect_agreement(model, truth, n: int = 3000, threshold: float = 0.9) -> dict:
    """CLIP-Dissect (SoftWPMI) with the model as its own labeller, over a held-out probe set of world images."""
    from clipviz.analysis.concepts import words_table
    from clipviz.analysis.dissect import CEILING_TIE, labeller_a, softwpmi
    from clipviz.world.groundtruth import HELDOUT_SEED, patch_means, world_images, world_size

    images, _ = world_images(n, seed=HELDOUT_SEED + 3, size=world_size(model))
    prompts = [world.prompt(f, v) for f, v in CONCEPTS]
    sims = image_embeddings(model, images) @ prompt_embeddings(model, prompts).T
    means = patch_means(model, sorted(truth.auroc), images)
    out = {}
    for hook in sorted(truth.auroc):
        rows = truth.natural_clear(hook, threshold)
        scores = softwpmi(means[hook], sims, a=labeller_a(model))
        named = words_table(scores[[neuron for neuron, *_ in rows]], prompts, 1, tolerance=CEILING_TIE) if rows else []
        # a tie at the top (words_table's ``tied``) names nothing: a miss
        hits = [
            t["tied"] == 1 and t["words"][0] == world.prompt(fam, val)
            for t, (_, fam, val, _) in zip(named, rows, strict=True)
        ]
        out[hook] = {"neurons": len(rows), "top1_agreement": round(float(np.mean(hits)), 4) if hits else None}
    return out


@torch.no_grad()
def classify(model, images: torch.Tensor) -> list[str]:
    prompts = [world.prompt(f, v) for f, v in CONCEPTS]
    scores = image_embeddings(model, images) @ prompt_embeddings(model, prompts).T
    return [f"{CONCEPTS[int(i)][0]}:{CONCEPTS[int(i)][1]}" for i in scores.argmax(1)]


def visualization_share(model, truth, recipe: str, per_block: int, steps: int, threshold: float = 0.9) -> dict:
    hits, reached, total = [], [], 0
    started = time.time()
    for hook in sorted(truth.auroc):
        rows = sorted(truth.natural_clear(hook, threshold), key=lambda r: -r[3])[:per_block]
        if not rows:
            continue
        vis = visualize(model, hook, [r[0] for r in rows], recipe=recipe, steps=steps, progress=False)
        images = torch.stack([torch.from_numpy(np.array(v.image)).permute(2, 0, 1).float() / 255 for v in vis])
        seen = classify(model, images)
        hits += [s == f"{fam}:{val}" for s, (_, fam, val, _) in zip(seen, rows, strict=True)]
        reached += [v.meta["objective_end"] for v in vis]
        total += len(rows)
    return {
        "neurons": total,
        "share_classified_as_true_concept": round(float(np.mean(hits)), 4) if hits else None,
        "mean_objective_end": round(float(np.mean(reached)), 4) if reached else None,
        "steps": steps,
        "seconds": round(time.time() - started, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        default="world-clip",
        help="a bundled name or a directory written by "
        "train_world_clip.py (its ground-truth table is then computed and written beside it)",
    )
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--write-ground-truth", action="store_true")
    ap.add_argument(
        "--plant",
        type=Path,
        help="the plan the model was fine-tuned with (train_world_clip.py --plant): "
        "its neurons' held-out AUROC is recorded in the ground truth's 'planted' section",
    )
    ap.add_argument("--recipes", default="vit-paper-clip,vit-paper,default,lucid")
    ap.add_argument("--per-block", type=int, default=8, help="neurons per block for the visualization check")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--zero-shot-n", type=int, default=1000)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = ap.parse_args()
    torch.manual_seed(0)

    model = clipviz.load(args.model, device=args.device)
    results: dict = {"model": args.model}
    results["zero_shot"] = zero_shot_accuracy(model, n=args.zero_shot_n)
    print("zero-shot accuracy:", json.dumps(results["zero_shot"]))
    bundled = args.model in bundled_models()
    if args.write_ground_truth or not bundled:  # a candidate in a local directory gets its table beside its weights
        truth = selectivity(model, n=3000)
        if args.plant is not None:
            from clipviz.world.planting import load_plan, planted_auroc

            truth.planted = planted_auroc(model, load_plan(args.plant), n=truth.n, seed=truth.seed)
        else:
            truth.planted = bundled_selectivity(args.model).planted if bundled else None
        target = bundled_models()[args.model] if bundled else Path(args.model)
        truth.save(target)
        print("wrote ground truth to", target)
    else:
        truth = bundled_selectivity(args.model)
    results["planted"] = truth.planted
    if truth.planted:
        low = [p for p in truth.planted if p["auroc"] < 0.98]
        print(
            f"planted neurons: {len(truth.planted)}, AUROC min {min(p['auroc'] for p in truth.planted):.4f}, "
            f"below 0.98: {low}"
        )
    results["clear_neurons_auroc_0.95"] = clear_counts(truth, 0.95)
    results["clear_neurons_auroc_0.9"] = clear_counts(truth, 0.9)
    print("clear neurons (AUROC >= 0.95):", json.dumps(results["clear_neurons_auroc_0.95"]))
    results["direct_lens_top1"] = lens_agreement(model, truth)
    print("direct lens top-1 agreement (AUROC > 0.9):", json.dumps(results["direct_lens_top1"]))
    results["dissect_top1"] = dissect_agreement(model, truth)
    print("CLIP-Dissect top-1 agreement (AUROC > 0.9):", json.dumps(results["dissect_top1"]))
    results["visualizations"] = {}
    for recipe in filter(None, args.recipes.split(",")):
        results["visualizations"][recipe] = visualization_share(model, truth, recipe, args.per_block, args.steps)
        print(f"visualizations ({recipe}):", json.dumps(results["visualizations"][recipe]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
