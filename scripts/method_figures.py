"""Honest figures for every clipviz method on world-clip: planted neurons (known answers) and natural clear ones.

    python scripts/method_figures.py --json docs/method_figures.json

Neurons: the planted ones of the shipped ground truth whose held-out AUROC reached 0.98 (``Selectivity.known``);
the natural clear ones (best AUROC >= 0.95, not planted), the ``--natural-per-block`` clearest per block; and,
reported apart, the planted neurons that stayed below 0.98. Concepts: the world's 30 single-factor prompts plus
the planted conjunctions' prompts ("a red object on the left"). For each neuron:

* top-k example precision: share of its top ``--top-k`` probe images (patch-mean activation, as ``clipviz
  examples`` ranks them) that carry its concept;
* CLIP-Dissect top-1: SoftWPMI (``clipviz.analysis.dissect``), world-clip as its own labeller over the probe set,
  the layer's neurons as the population;
* direct lens top-1, last block only (the lens reads the direct path into the embedding, the whole
  effect only there, up to the final LayerNorm's linearisation);
* visual method top-1: the model's own zero-shot reading of the neuron's feature visualization (``--recipe``, as
  ``clipviz concepts --method visual``) among the same concepts;
* pixels read as the concept (colour and position concepts only): the world colour nearest to the mean of the
  visualization's salient pixels and the region where they lie, as a person would read them (``read_pixels``).

For every method a reading whose top score several concepts share (``words_table``'s ``tied``, as CLIP-Dissect's do
at its ``log(width)`` ceiling) is recorded as ``tie(a, b)`` and counted as a miss: the first of equals is not a name.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import clipviz
from clipviz.analysis.concepts import Vocabulary, direct_lens, visual_words, words_table
from clipviz.analysis.dissect import CEILING_TIE, labeller_a, softwpmi
from clipviz.images import pil_to_tensor
from clipviz.visualization.guidance import default_recipe
from clipviz.visualization.recipes import get_recipe
from clipviz.visualization.visualize import visualize
from clipviz.world.groundtruth import (
    CONCEPTS,
    HELDOUT_SEED,
    bundled_selectivity,
    image_embeddings,
    patch_means,
    prompt_embeddings,
    world_images,
    world_size,
)
from clipviz.world.planting import concept_labels, concept_prompt, parse_concept
from clipviz.world.plugin import OWN_IMAGES, world_spec
from clipviz.world.reading import salient_reading

PROBE_SEED = HELDOUT_SEED + 3
METHODS = ("example_precision", "dissect_top1", "lens_top1", "visual_top1", "pixels_read")
HEADERS = (
    "top-k example precision",
    "CLIP-Dissect top-1",
    "direct lens top-1 (last block)",
    "visual method top-1",
    "pixels read as the concept (colour/position)",
)


def hook_of(row: dict) -> str:
    return f"blocks.{row['block']}.mlp.hook_post"


def neuron_sets(truth, natural_per_block: int) -> dict[str, list[dict]]:
    """The neurons measured, by kind: planted known answers, natural clear ones, planted ones below 0.98."""
    known = truth.known()
    planted = [dict(p, kind="planted") for p in known]
    missed = [dict(p, kind="planted, AUROC < 0.98") for p in truth.planted or [] if p not in known]
    natural = []
    for hook in sorted(truth.auroc):
        rows = sorted(truth.natural_clear(hook), key=lambda r: -r[3])[:natural_per_block]
        natural += [
            {
                "block": int(hook.split(".")[1]),
                "neuron": n,
                "concept": f"{f}:{v}",
                "auroc": round(a, 4),
                "kind": "natural",
            }
            for n, f, v, a in rows
        ]
    return {"planted": planted, "natural": natural, "planted, AUROC < 0.98": missed}


def concept_list(neurons: list[dict]) -> list[str]:
    """The 30 single-factor concepts, then the conjunctions among ``neurons``' concepts."""
    singles = [f"{f}:{v}" for f, v in CONCEPTS]
    return singles + sorted({n["concept"] for n in neurons} - set(singles))


@torch.no_grad()
def probe(model, concepts: list[str], n: int, seed: int = PROBE_SEED) -> dict:
    """Patch means of every block, concept labels and the labeller's image-text cosines over ``n`` probe images."""
    images, factors = world_images(n, seed=seed, size=world_size(model))
    hooks = [f"blocks.{b}.mlp.hook_post" for b in range(model.n_blocks)]
    means = patch_means(model, hooks, images)
    img = image_embeddings(model, images)
    text = prompt_embeddings(model, [concept_prompt(c) for c in concepts])
    labels = concept_labels(concepts, factors)
    return {"means": means, "labels": labels, "sims": img @ text.T, "text": text, "a": labeller_a(model)}


def vocabulary(concepts: list[str]) -> Vocabulary:
    return Vocabulary("world-figures", tuple(concept_prompt(c) for c in concepts), ("{}",))


def example_precision(pr: dict, concepts: list[str], neurons: list[dict], k: int) -> list[float]:
    out = []
    for row in neurons:
        top = pr["means"][hook_of(row)][:, row["neuron"]].topk(k).indices
        out.append(float(pr["labels"][top, concepts.index(row["concept"])].float().mean()))
    return out


def top1(row: dict, name=lambda word: word) -> str:
    """A words-table row's top-1 concept (``name`` maps its words to concepts), or ``tie(a, b, ...)`` where several
    concepts share the top score."""
    if row["tied"] > 1:
        return f"tie({', '.join(name(w) for w in row['words'][: row['tied']])})"
    return name(row["words"][0])


def dissect_reading(pr: dict, concepts: list[str], neurons: list[dict]) -> list[str]:
    """CLIP-Dissect's top-1 concept for each neuron (the layer's neurons as the population)."""
    scores = {hook: softwpmi(m, pr["sims"], a=pr["a"]) for hook, m in pr["means"].items()}
    rows = [
        words_table(scores[hook_of(r)][r["neuron"]][None], concepts, len(concepts), tolerance=CEILING_TIE)[0]
        for r in neurons
    ]
    return [top1(row) for row in rows]


def lens_reading(model, pr: dict, concepts: list[str], neurons: list[dict]) -> list[str | None]:
    """The direct lens's top-1 concept for the neurons of the last block (``None`` for the others)."""
    last = model.n_blocks - 1
    rows = [r for r in neurons if r["block"] == last]
    if not rows:
        return [None] * len(neurons)
    vocab = vocabulary(concepts)
    table = direct_lens(
        model, hook_of(rows[0]), [r["neuron"] for r in rows], vocab, len(concepts), embeddings=pr["text"]
    )
    by_prompt = {concept_prompt(c): c for c in concepts}
    words = {r["neuron"]: top1(t, by_prompt.get) for r, t in zip(rows, table, strict=True)}
    return [words[r["neuron"]] if r["block"] == last else None for r in neurons]


def render(model, neurons: list[dict], recipe: str, overrides: dict, guide: str | None = None) -> list[torch.Tensor]:
    """One visualization (3, H, W) in [0, 1] per neuron, with ``recipe`` and its ``overrides``; a data-guided
    recipe is guided by ``guide`` (``None``: the model's own, as ``visualize`` chooses)."""
    chosen = get_recipe(recipe, **overrides)
    guided = {"guide": guide} if guide is not None and chosen.guided else {}
    images: dict[tuple[int, int], torch.Tensor] = {}
    for block in sorted({r["block"] for r in neurons}):
        ids = sorted({r["neuron"] for r in neurons if r["block"] == block})
        vis = visualize(model, f"blocks.{block}.mlp.hook_post", ids, recipe=chosen, progress=False, **guided)
        for n, v in zip(ids, vis, strict=True):
            images[(block, n)] = pil_to_tensor(v.image)
    return [images[(r["block"], r["neuron"])] for r in neurons]


@torch.no_grad()
def visual_reading(model, pr: dict, concepts: list[str], images: list[torch.Tensor]) -> list[str]:
    """The model's zero-shot top-1 concept for each visualization."""
    table = visual_words(
        model, torch.stack(images)[:, None], vocabulary(concepts), len(concepts), embeddings=pr["text"]
    )
    by_prompt = {concept_prompt(c): c for c in concepts}
    return [top1(t, by_prompt.get) for t in table]


def read_pixels(image: torch.Tensor) -> dict:
    """A person's reading of a visualization (3, H, W) in [0, 1]: the world colour and the region of what stands
    out (``clipviz.world.reading.salient_reading``: the 10% of pixels farthest from the median colour, of those at
    least half as far as the farthest one).

    >>> img = torch.zeros(3, 20, 20); img[0, 8:12, :4] = 1.0
    >>> read_pixels(img)["colour"], read_pixels(img)["position"]
    ('red', 'left')
    """
    return salient_reading(image, share=0.1, floor=0.5)


def pixels_read(concept: str, seen: dict) -> bool | None:
    """Whether ``read_pixels``'s reading shows ``concept`` (``None``: not a colour/position concept)."""
    terms = parse_concept(concept)
    if any(f not in ("colour", "position") for f, _ in terms):
        return None
    return all(seen[f] == v for f, v in terms)


def parse_overrides(items: list[str]) -> dict:
    """``["steps=100", "lr=0.1"]`` -> ``{"steps": 100, "lr": 0.1}`` (recipe fields; JSON values)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: use field=value")
        out[key] = json.loads(value)
    return out


def summarise(rows: list[dict]) -> dict:
    out = {"neurons": len(rows)}
    for m in METHODS:
        vals = [r[m] for r in rows if r.get(m) is not None]
        out[m] = {
            "value": round(float(np.mean(vals)), 4) if vals else None,
            "count": len(vals),
            "hits": int(sum(vals)) if vals and m != "example_precision" else None,
        }
    return out


def measure(model, truth, args) -> dict:
    sets = neuron_sets(truth, args.natural_per_block)
    everyone = [row for rows in sets.values() for row in rows]
    concepts = concept_list(everyone)
    pr = probe(model, concepts, args.probe)
    precision = example_precision(pr, concepts, everyone, args.top_k)
    dissect = dissect_reading(pr, concepts, everyone)
    lens = lens_reading(model, pr, concepts, everyone)
    overrides = parse_overrides(args.set)
    images = render(model, everyone, args.recipe, overrides, args.guide)
    visual = visual_reading(model, pr, concepts, images)
    for i, row in enumerate(everyone):
        seen = read_pixels(images[i])
        row.update(
            example_precision=precision[i],
            dissect=dissect[i],
            dissect_top1=dissect[i] == row["concept"],
            lens=lens[i],
            lens_top1=None if lens[i] is None else lens[i] == row["concept"],
            visual=visual[i],
            visual_top1=visual[i] == row["concept"],
            pixels=seen,
            pixels_read=pixels_read(row["concept"], seen),
        )
    return {
        "model": args.model,
        "probe": args.probe,
        "probe_seed": PROBE_SEED,
        "top_k": args.top_k,
        "recipe": get_recipe(args.recipe, **overrides).to_dict(),
        "guide": args.guide if get_recipe(args.recipe, **overrides).guided else None,
        "concepts": concepts,
        "summary": {name: summarise(rows) for name, rows in sets.items()},
        "neurons": everyone,
    }


def cell(entry: dict) -> str:
    if entry["value"] is None:
        return "n/a"
    if entry["hits"] is None:
        return f"{100 * entry['value']:.1f}%"
    return f"{entry['hits']}/{entry['count']} ({100 * entry['value']:.0f}%)"


def markdown(result: dict) -> str:
    """The figures as a markdown table, one row per kind of neuron (docs/validation.md holds it)."""
    lines = ["| neurons | " + " | ".join(HEADERS) + " |", "|---" * (len(HEADERS) + 1) + "|"]
    for name, s in result["summary"].items():
        lines.append(f"| {name} ({s['neurons']}) | " + " | ".join(cell(s[m]) for m in METHODS) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="world-clip", help="a bundled name, or a directory with its ground truth")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--probe", type=int, default=10000, help="held-out probe images")
    ap.add_argument("--top-k", type=int, default=16)
    ap.add_argument("--natural-per-block", type=int, default=8)
    ap.add_argument(
        "--recipe", help="visualization recipe (default: what visualize renders for the model with its guide)"
    )
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="recipe override, repeatable")
    ap.add_argument(
        "--guide",
        help="reference images of a data-guided recipe (default: the model's own held-out world images, "
        f"world:{OWN_IMAGES} drawn at its input size, for a directory too)",
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    truth = bundled_selectivity(args.model)
    model = clipviz.load(args.model, device=args.device)
    args.guide = args.guide or world_spec(OWN_IMAGES, world_size(model))
    args.recipe = args.recipe or default_recipe(model, args.guide)
    result = measure(model, truth, args)
    result["device"] = str(model.device)
    result["seconds"] = round(time.time() - started, 1)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
