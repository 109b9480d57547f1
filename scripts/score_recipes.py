"""Score every feature-visualization recipe on world-clip's neurons with known concepts; the default is the best.

    python scripts/score_recipes.py --json docs/recipe_scores.json              # every recipe, its own steps
    python scripts/score_recipes.py --recipes default,vital --steps 150         # a quick comparison

Neurons: the planted ones of the shipped ground truth whose held-out AUROC reached 0.98, and the natural clear
colour and position neurons (best AUROC >= 0.95): those whose concept a person can read from pixels. Per recipe:

* activation reached: the neuron's patch-mean activation on the visualization over its largest patch-mean
  activation on ``--probe`` held-out world images (> 1: it beats every natural image of the probe);
* read by the model: the model's own zero-shot reading of the visualization, among the world's single-factor
  prompts and the planted conjunctions' prompts, is the neuron's concept;
* colour right (colour neurons and colour conjunctions), two readers (``clipviz.world.reading``): the dominant
  world colour by pixel count, and the world colour of the most salient pixels; position right: the region of
  the salient pixels;
* distance to natural images: at ``--stat-hook`` (a middle block), the mean over channels of the 1-D Wasserstein
  distance between the visualization's patch-token values and those of natural images, in units of the natural
  values' standard deviation; natural images themselves score the ``natural`` baseline;
* seconds per neuron (batches of up to 16 neurons, ``--threads`` threads).

Data-guided recipes are guided by ``--guide`` (default: world-clip's own, ``world:2000``), whose images are
held-out world images drawn with another seed than the probe set's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import clipviz
from clipviz.images import pil_to_tensor, tensor_to_pil
from clipviz.visualization.recipes import RECIPES, get_recipe
from clipviz.visualization.vital import reference_quantiles
from clipviz.world.groundtruth import HELDOUT_SEED, bundled_selectivity, patch_means, world_images, world_size
from clipviz.world.planting import concept_prompt, parse_concept
from clipviz.world.reading import dominant_colour, salient_reading

PROBE_SEED = HELDOUT_SEED + 3


def chosen_neurons(truth) -> list[dict]:
    rows = [dict(p, kind="planted") for p in truth.known()]
    for hook in sorted(truth.auroc):
        for n, family, value, a in truth.natural_clear(hook):
            if family in ("colour", "position"):
                block = int(hook.split(".")[1])
                rows.append(
                    {"block": block, "neuron": n, "concept": f"{family}:{value}", "auroc": a, "kind": "natural"}
                )
    return rows


def parse_recipe(spec: str) -> tuple[str, dict]:
    """``"vital@match_weight=5;steps=100;match=hook_resid_pre+hook_resid_mid"`` -> ("vital", {"match_weight":
    5, "steps": 100, "match": ("hook_resid_pre", "hook_resid_mid")}): numbers, or hook names joined by ``+``."""
    name, _, rest = spec.partition("@")
    overrides: dict = {}
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = int(value) if value.isdigit() else float(value)
        except ValueError:
            overrides[key] = tuple(value.split("+"))
    return name, overrides


def render(model, rows: list[dict], spec: str, steps: int | None, guide: str | None) -> list[torch.Tensor]:
    name, overrides = parse_recipe(spec)
    if steps:
        overrides.setdefault("steps", steps)
    recipe = get_recipe(name, **overrides)
    images: dict[tuple[int, int], torch.Tensor] = {}
    for block in sorted({r["block"] for r in rows}):
        neurons = sorted({r["neuron"] for r in rows if r["block"] == block})
        vis = clipviz.visualize(
            model,
            f"blocks.{block}.mlp.hook_post",
            neurons,
            recipe=recipe,
            guide=guide if recipe.match else None,
            progress=False,
        )
        for n, v in zip(neurons, vis, strict=True):
            images[(block, n)] = pil_to_tensor(v.image)
    return [images[(r["block"], r["neuron"])] for r in rows]


@torch.no_grad()
def token_values(model, hook: str, images: torch.Tensor) -> torch.Tensor:
    _, cache = model.run_with_cache(images, [hook])
    return cache[hook][:, model.hook_layout(hook).patches].float()  # (n, T, C)


def wasserstein(values: torch.Tensor, pool_q: torch.Tensor, pool_std: torch.Tensor) -> torch.Tensor:
    """(n, T, C) -> (n,): mean over channels of W1(the image's token values, the pool's) / the pool's std."""
    q = pool_q[None].expand(values.shape[0], -1, -1)
    return ((values.sort(dim=1).values - q).abs().mean(dim=1) / pool_std).mean(dim=1)


@torch.no_grad()
def model_reading(model, images: list[torch.Tensor], prompts: list[str]) -> list[str]:
    text = torch.nn.functional.normalize(model.encode_text(prompts).float(), dim=-1)
    img = torch.nn.functional.normalize(model.encode_image(torch.stack(images)).float(), dim=-1)
    return [prompts[int(i)] for i in (img @ text.T).argmax(dim=1)]


def score(model, rows, images, best_natural, prompts, stat) -> dict:
    hooks = {r["block"]: f"blocks.{r['block']}.mlp.hook_post" for r in rows}
    acts = []
    for r, img in zip(rows, images, strict=True):
        means = patch_means(model, [hooks[r["block"]]], img[None])[hooks[r["block"]]]
        acts.append(float(means[0, r["neuron"]]))
    ratio = [a / max(best_natural[(r["block"], r["neuron"])], 1e-6) for a, r in zip(acts, rows, strict=True)]
    read = model_reading(model, images, prompts)
    seen = [rd == concept_prompt(r["concept"]) for rd, r in zip(read, rows, strict=True)]
    per, colour_dom, colour_sal, position = [], [], [], []
    for r, img, s in zip(rows, images, seen, strict=True):
        terms = dict(parse_concept(r["concept"]))
        dom, sal = dominant_colour(img), salient_reading(img)
        if "colour" in terms:
            colour_dom.append(dom["colour"] == terms["colour"])
            colour_sal.append(sal["colour"] == terms["colour"])
        if "position" in terms:
            position.append(sal["position"] == terms["position"])
        per.append({**{k: r[k] for k in ("block", "neuron", "concept", "kind")}, "read_by_model": s, "dominant": dom})
        per[-1]["salient"] = sal
    dist = wasserstein(torch.cat([token_values(model, stat["hook"], img[None]) for img in images]), *stat["pool"])

    def share(v: list[bool]) -> str:
        return f"{sum(v)}/{len(v)}"

    return {
        "activation_ratio_median": round(float(np.median(ratio)), 3),
        "beats_natural": share([x > 1 for x in ratio]),
        "read_by_model": share(seen),
        "colour_dominant": share(colour_dom),
        "colour_salient": share(colour_sal),
        "position_right": share(position),
        "distance_to_natural": round(float(dist.mean()), 4),
        "per_neuron": [dict(p, ratio=round(x, 3)) for p, x in zip(per, ratio, strict=True)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="world-clip")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--recipes", default=",".join(r for r in RECIPES if r != "accentuate"))
    ap.add_argument("--steps", type=int, default=0, help="steps for every recipe (0: each recipe's own)")
    ap.add_argument("--probe", type=int, default=2000)
    ap.add_argument("--stat-hook", default="blocks.2.hook_resid_pre")
    ap.add_argument("--guide", default=None, help="reference images of data-guided recipes (default: the model's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--families", help="only neurons whose concept names one of these families, e.g. colour")
    ap.add_argument("--save", type=Path, help="also write each recipe's images here, one PNG per neuron")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = clipviz.load(args.model)
    truth = bundled_selectivity(args.model)
    rows = chosen_neurons(truth)
    if args.families:
        wanted = set(args.families.split(","))
        rows = [r for r in rows if wanted & {f for f, _ in parse_concept(r["concept"])}]
    from clipviz.world.scene import FACTORS, prompt

    prompts = list(dict.fromkeys([prompt(f, v) for f, vs in FACTORS.items() for v in vs]))
    prompts += [concept_prompt(r["concept"]) for r in rows if concept_prompt(r["concept"]) not in prompts]
    natural, _ = world_images(args.probe, seed=PROBE_SEED, size=world_size(model))
    hooks = sorted({f"blocks.{r['block']}.mlp.hook_post" for r in rows})
    means = patch_means(model, hooks, natural)
    best_natural = {
        (r["block"], r["neuron"]): float(means[f"blocks.{r['block']}.mlp.hook_post"][:, r["neuron"]].max())
        for r in rows
    }
    nat_tokens = torch.cat([token_values(model, args.stat_hook, natural[i : i + 250]) for i in range(0, 800, 250)])
    pool = nat_tokens[:400].flatten(0, 1)
    stat = {
        "hook": args.stat_hook,
        "pool": (reference_quantiles(pool[None], nat_tokens.shape[1])[0], pool.std(0).clamp(min=1e-6)),
    }
    baseline = float(wasserstein(nat_tokens[400:800], *stat["pool"]).mean())
    results = {
        "model": args.model,
        "command": "python scripts/score_recipes.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k not in ("json", "save")
        ),
        "steps": args.steps or "each recipe's own",
        "threads": args.threads,
        "natural_baseline": round(baseline, 4),
        "neurons": len(rows),
        "recipes": {},
    }
    for spec in filter(None, args.recipes.split(",")):
        started = time.time()
        images = render(model, rows, spec, args.steps, args.guide)
        seconds = time.time() - started
        if args.save:
            folder = args.save / spec.replace("@", "_").replace(";", "_")
            folder.mkdir(parents=True, exist_ok=True)
            for r, img in zip(rows, images, strict=True):
                name = f"b{r['block']}-n{r['neuron']}-{r['concept'].replace(':', '_').replace('&', '+')}.png"
                tensor_to_pil(img).save(folder / name)
        entry = {
            **score(model, rows, images, best_natural, prompts, stat),
            "seconds_per_neuron": round(seconds / len(rows), 3),
        }
        results["recipes"][spec] = entry
        print(spec, json.dumps({k: v for k, v in entry.items() if k != "per_neuron"}), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [
        "| recipe | activation / best natural (median) | beats every natural image | read as the concept by the "
        "model | colour neurons in their colour (dominant) | (salient pixels) | position neurons in their region | "
        f"distance to natural features (natural: {results['natural_baseline']:.3f}) | s / neuron |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in results["recipes"].items():
        lines.append(
            f"| {name} | {e['activation_ratio_median']:.2f} | {e['beats_natural']} | {e['read_by_model']} | "
            f"{e['colour_dominant']} | {e['colour_salient']} | {e['position_right']} | "
            f"{e['distance_to_natural']:.3f} | {e['seconds_per_neuron']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
