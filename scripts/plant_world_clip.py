"""Choose which MLP neurons of world-clip to plant with which concepts, and write the plan as JSON.

    python scripts/plant_world_clip.py --out plan.json
    python scripts/train_world_clip.py --init-from clipviz/world/models/world-clip --plant plan.json --seed 17 ...

For each planted concept (``CONCEPTS_BY_BLOCK``) the neuron of its block is taken that has no clear natural
concept (best AUROC in the shipped table < ``--max-natural``) and, among those, ranks the concept's images highest
already (AUROC for the concept over held-out images): the fine-tune then sharpens a weak tendency instead of
rewiring a neuron from scratch. Neurons are taken greedily, each at most once. Deterministic.

Every factor of a planted conjunction also gets a detector of its own in the conjunction's block, unless the block
has one already (planted, or natural with AUROC >= ``CLEAR``): CLIP-Dissect's prior is the mean over the layer, so
where no other neuron of the layer sees "blue", a "blue & top" neuron scores "blue" and "blue & top" alike at the
``log(width)`` ceiling, and no method of naming by population can tell which it is (``factor_detectors``).

``--refinements`` also plants the plan's conjunctions in each block that plants one of their factors, and
``--closed`` repeats both rules until neither adds a concept (``closed_detectors``).

``--keep PLAN`` keeps an earlier plan's assignments (planting further from weights that were planted with it) and
adds only what is missing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import clipviz
from clipviz.world.groundtruth import HELDOUT_SEED, auroc, bundled_selectivity, patch_means, world_images, world_size
from clipviz.world.planting import concept_labels, load_plan, parse_concept

#: A natural neuron with this AUROC for a factor counts as the block's detector of it (``factor_detectors``).
CLEAR = 0.95

CONCEPTS_BY_BLOCK: dict[int, list[str]] = {
    1: [
        "colour:red",
        "colour:green",
        "colour:blue",
        "colour:yellow",
        "colour:purple",
        "colour:orange",
        "colour:white",
        "colour:black",
        "background:plain",
        "background:noise",
        "background:gradient",
        "size:large",
    ],
    2: [
        "position:left",
        "position:right",
        "position:top",
        "position:bottom",
        "position:center",
        "size:small",
        "count:one",
        "count:three",
        "texture:striped",
        "texture:dotted",
        "colour:red&position:left",
        "colour:blue&position:top",
    ],
    3: [
        "shape:circle",
        "shape:square",
        "shape:triangle",
        "shape:star",
        "shape:cross",
        "shape:ring",
        "colour:green&position:right",
        "colour:yellow&size:large",
        "colour:red&shape:circle",
        "colour:purple&position:bottom",
        "colour:orange&position:center",
        "colour:white&size:small",
    ],
}


def factor_detectors(concepts: list[str], natural: list[tuple[int, str, str, float]]) -> list[str]:
    """The single factors of the conjunctions in ``concepts`` that neither ``concepts`` nor a natural clear neuron
    of the block (``(neuron, family, value, auroc)`` rows) detects, in the conjunctions' order.

    >>> factor_detectors(["colour:red", "colour:blue&position:top"], [(7, "position", "top", 0.97)])
    ['colour:blue']
    """
    have = set(concepts) | {f"{family}:{value}" for _, family, value, a in natural if a >= CLEAR}
    missing: list[str] = []
    for concept in concepts:
        for family, value in parse_concept(concept) if "&" in concept else []:
            factor = f"{family}:{value}"
            if factor not in have and factor not in missing:
                missing.append(factor)
    return missing


def refinement_detectors(concepts: list[str], conjunctions: list[str]) -> list[str]:
    """The ``conjunctions`` (of the whole plan) that contain a single factor planted in ``concepts`` (one block's)
    and are not planted there: ``--refinements`` plants them too, so that the block's prior of a conjunction is not
    its factor detector's own (docs/validation.md, the v2.1 candidate).

    >>> refinement_detectors(["colour:red", "colour:blue&position:top"], ["colour:red&position:left"])
    ['colour:red&position:left']
    """
    singles = {c for c in concepts if "&" not in c}
    return [d for d in conjunctions if d not in concepts and any(f"{f}:{v}" in singles for f, v in parse_concept(d))]


def closed_detectors(
    concepts: list[str], conjunctions: list[str], natural: list[tuple[int, str, str, float]]
) -> list[str]:
    """``factor_detectors`` and ``refinement_detectors`` applied in turn until neither adds a concept: ``--closed``
    plants, in each block, every factor of a conjunction planted there and every conjunction (of the plan) that
    contains a factor planted there, so that no planted concept of the block shares its images with a coarser or
    finer concept that the block has no detector of. Terminates: both only add concepts of a finite vocabulary.

    >>> closed_detectors(["colour:red"], ["colour:red&position:left"], [])
    ['colour:red&position:left', 'position:left']
    """
    added: list[str] = []
    while True:
        more = factor_detectors(concepts + added, natural)
        more += refinement_detectors(concepts + added + more, conjunctions)
        if not more:
            return added
        added += more


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="world-clip")
    ap.add_argument("--out", type=Path, default=Path("plan.json"))
    ap.add_argument("--max-natural", type=float, default=0.8)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument(
        "--blocks",
        default=",".join(map(str, CONCEPTS_BY_BLOCK)),
        help="the blocks that receive the three groups of concepts, shallowest group first (a deeper tower: e.g. "
        "2,3,5 of 6 blocks)",
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument("--keep", type=Path, help="an earlier plan whose assignments stay (its model's blocks)")
    ap.add_argument(
        "--refinements",
        action="store_true",
        help="also plant, in each block, the plan's conjunctions that contain a factor planted there",
    )
    ap.add_argument(
        "--closed",
        action="store_true",
        help="--refinements and factor detectors repeated until each block's planted concepts are closed under both",
    )
    args = ap.parse_args()
    kept = []
    if args.keep:
        try:
            load_plan(args.keep)  # checks every row: block, neuron, a concept of the world, each neuron once
        except (OSError, ValueError, KeyError, TypeError) as e:
            ap.error(f"--keep {args.keep}: not a readable plan ({type(e).__name__}: {e})")
        kept = json.loads(args.keep.read_text())["planted"]
    torch.set_num_threads(1)
    model = clipviz.load(args.model, device=args.device)
    try:
        blocks = [int(b) for b in args.blocks.split(",")]
    except ValueError:
        ap.error(f"--blocks {args.blocks!r}: give block numbers separated by commas, e.g. 2,3,5")
    if len(blocks) != len(CONCEPTS_BY_BLOCK) or len(set(blocks)) != len(blocks):
        ap.error(f"--blocks needs {len(CONCEPTS_BY_BLOCK)} different blocks, got {args.blocks!r}")
    if not all(0 <= b < model.n_blocks for b in blocks):
        ap.error(f"--blocks {args.blocks}: this model has blocks 0..{model.n_blocks - 1}")
    natural = bundled_selectivity(args.model)
    images, factors = world_images(args.n, seed=HELDOUT_SEED + 7, size=world_size(model))
    groups = dict(zip(blocks, CONCEPTS_BY_BLOCK.values(), strict=True))
    for row in kept:
        if row["block"] not in groups:
            ap.error(f"--keep {args.keep}: block {row['block']} is not one of --blocks {args.blocks}")
    means = patch_means(model, [f"blocks.{b}.mlp.hook_post" for b in groups], images)
    conjunctions = [c for group in groups.values() for c in group if "&" in c]
    plan = []
    for block, concepts in groups.items():
        hook = f"blocks.{block}.mlp.hook_post"
        for c in concepts:
            parse_concept(c)
        natural_rows = natural.natural_clear(hook, threshold=CLEAR)
        concepts = concepts + factor_detectors(concepts, natural_rows)
        if args.refinements:
            concepts = concepts + refinement_detectors(concepts, conjunctions)
        if args.closed:
            concepts = concepts + closed_detectors(concepts, conjunctions, natural_rows)
        table = auroc(means[hook], concept_labels(concepts, factors))  # (neurons, concepts)
        free = natural.best(hook)[0] < args.max_natural
        own = [row for row in kept if row["block"] == block]
        plan += own
        taken = {row["neuron"] for row in own}
        for k, concept in enumerate(concepts):
            if any(row["concept"] == concept for row in own):
                continue
            score = torch.where(free, table[:, k], torch.tensor(-1.0))
            if taken:
                score[list(taken)] = -1.0
            neuron = int(score.argmax())
            taken.add(neuron)
            plan.append(
                {
                    "block": block,
                    "neuron": neuron,
                    "concept": concept,
                    "auroc_before": round(float(table[neuron, k]), 4),
                }
            )
            print(json.dumps(plan[-1]))
    args.out.write_text(
        json.dumps({"model": args.model, "max_natural": args.max_natural, "planted": plan}, indent=2) + "\n"
    )
    print("wrote", args.out)


if __name__ == "__main__":
    main()
