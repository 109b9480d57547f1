"""``clipviz demo``: visualizations, dataset examples and words for clear-concept neurons of the bundled CLIP.

Offline, a few minutes on a 2-core CPU. Picks neurons whose ground-truth concept is clear (best AUROC over the
world's factor values), renders each one's feature visualization, finds its top examples in held-out world
images, names it with the direct lens over the world's vocabulary, asks the model itself which concept its
visualization shows, and writes one HTML page with the PNGs next to it.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from clipviz.images import overlay, pil_to_tensor
from clipviz.results import write_png, write_text

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel

DEMO_RECIPE = "default"


def pick_neurons(selectivity, per_block: int = 2, blocks: list[int] | None = None) -> list[tuple[str, int, str, float]]:
    """(hook, neuron, concept, auroc): the clearest neurons of each block, one per concept."""
    picked = []
    hooks = sorted(selectivity.auroc)
    if blocks is not None:
        hooks = [h for h in hooks if int(h.split(".")[1]) in blocks]
    for hook in hooks:
        seen: set[str] = set()
        rows = sorted(selectivity.clear(hook, threshold=0.0), key=lambda r: -r[3])
        for neuron, family, value, score in rows:
            concept = f"{family}:{value}"
            if concept in seen:
                continue
            seen.add(concept)
            picked.append((hook, neuron, concept, score))
            if len(seen) == per_block:
                break
    return picked


@torch.no_grad()
def _zero_shot(model: HookedVisionModel, images: torch.Tensor, prompts: list[str]) -> list[tuple[str, float]]:
    img = F.normalize(model.encode_image(images).float(), dim=-1)
    txt = F.normalize(model.encode_text(prompts).float(), dim=-1)
    probs = (100.0 * img @ txt.T).softmax(dim=-1)
    best = probs.argmax(dim=-1)
    return [(prompts[int(b)], float(probs[i, b])) for i, b in enumerate(best)]


def run_demo(
    out: Path,
    *,
    model_name: str = "world-clip",
    per_block: int = 2,
    steps: int = 150,
    examples: int = 2000,
    top_k: int = 6,
    progress: bool = True,
) -> Path:
    """Build the demo page under ``out`` and return the path of its ``index.html``."""
    if per_block < 1 or steps < 1 or examples < top_k:
        from clipviz.errors import ClipvizError

        raise ClipvizError("per-block and steps must be >= 1, and examples >= top-k")
    return _run(out, model_name, per_block, steps, examples, top_k, progress)


def _run(out: Path, model_name: str, per_block: int, steps: int, examples: int, top_k: int, progress: bool) -> Path:
    from clipviz.analysis.concepts import direct_lens, load_vocabulary, write_table
    from clipviz.analysis.examples import mine_examples, write_thumbnails
    from clipviz.apps.atlas import build_atlas
    from clipviz.data.sources import open_source
    from clipviz.model.loading import load
    from clipviz.visualization.visualize import visualize
    from clipviz.world import scene as world
    from clipviz.world.groundtruth import bundled_selectivity

    model = load(model_name)
    truth = bundled_selectivity(model_name)
    chosen = pick_neurons(truth, per_block=per_block)
    vocab = load_vocabulary("world")
    concept_prompts = [world.prompt(f, v) for f, vals in world.FACTORS.items() for v in vals]
    source = open_source(f"world:{examples}")
    cards = []
    for hook in dict.fromkeys(h for h, *_ in chosen):
        neurons = [n for h, n, *_ in chosen if h == hook]
        vis = visualize(
            model,
            hook,
            neurons,
            recipe=DEMO_RECIPE,
            steps=steps,
            out=out / "results" / "visualizations",
            progress=progress,
        )
        ex = mine_examples(model, hook, source, neurons=neurons, top_k=top_k, progress=progress)
        words = direct_lens(model, hook, neurons, vocab, top_k=3)
        ex.save(out / "results" / "examples")  # the standard results layout, for the atlas
        write_thumbnails(source, ex, out / "results" / "examples", model=model)
        rows = [{"neuron": n, **w} for n, w in zip(neurons, words, strict=True)]
        write_table(out / "results" / "words", hook, rows, "direct", vocab)
        images = torch.stack([pil_to_tensor(v.image) for v in vis])
        seen_as = _zero_shot(model, images, concept_prompts)
        wanted = set(ex.indices.flatten().tolist())
        pictures = {i: img for i, img, _ in source if i in wanted}
        for j, (_, neuron, concept, score) in enumerate(c for c in chosen if c[0] == hook):
            exs = []
            for r in range(ex.indices.shape[1]):
                idx = int(ex.indices[j, r])
                name = f"examples/{hook}/neuron-{neuron:05d}-{r}.png"
                write_png(out / name, overlay(pictures[idx], ex.maps[j, r]))
                exs.append((name, float(ex.scores[j, r]), ex.captions.get(idx, "")))
            cards.append(
                {
                    "hook": hook,
                    "neuron": neuron,
                    "concept": concept,
                    "auroc": score,
                    "vis": vis[j].path.relative_to(out).as_posix(),
                    "vis_meta": vis[j].meta,
                    "examples": exs,
                    "words": words[j],
                    "seen_as": seen_as[j],
                }
            )
    build_atlas(out / "results", out / "atlas")
    page = out / "index.html"
    write_text(page, _html(model, cards))
    return page


def _html(model: HookedVisionModel, cards: list[dict]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>clipviz demo</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2rem;background:#fafafa;color:#222}",
        ".card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:1rem;margin:1rem 0;display:flex;"
        "gap:1.5rem;flex-wrap:wrap}",
        "img.px{image-rendering:pixelated;width:192px;height:192px;border:1px solid #ccc}",
        ".ex img{width:96px;height:96px;image-rendering:pixelated;margin:2px}",
        "table{border-collapse:collapse}td{padding:2px 8px}.ok{color:#070}.no{color:#a00}",
        "</style></head><body>",
        f"<h1>clipviz demo: {esc(model.spec)}</h1>",
        f"<p>{model.n_blocks} blocks, d_mlp {model.d_mlp}. For each neuron: its feature visualization "
        f"(recipe <code>{DEMO_RECIPE}</code>), the held-out world images that excite it most (cyan: where the "
        "neuron fires), the "
        "words of the direct lens, the concept the model itself sees in the visualization, and the ground truth "
        "(best AUROC of the neuron's patch-mean activation over the world's factor values).</p>",
        "<p>The same results in the standard layout are in <code>results/</code>; browse them in the atlas that "
        "<code>clipviz atlas</code> built from them: <a href='atlas/index.html'>atlas/index.html</a>.</p>",
    ]
    for c in cards:
        truth_prompt = _prompt_of(c["concept"])
        hit = c["seen_as"][0] == truth_prompt
        meta = c["vis_meta"]
        words = "".join(
            f"<tr><td>{esc(w)}</td><td>{s:.3f}</td></tr>"
            for w, s in zip(c["words"]["words"], c["words"]["scores"], strict=True)
        )
        examples = "".join(
            f"<img src='{esc(p)}' title='{esc(cap)} (activation {s:.2f})' alt='example'>" for p, s, cap in c["examples"]
        )
        parts.append(
            f"<div class='card'><div><h3>{esc(c['hook'])} #{c['neuron']}</h3>"
            f"<img class='px' src='{esc(c['vis'])}' alt='visualization'>"
            f"<p>objective {meta['objective_start']:.2f} &rarr; {meta['objective_end']:.2f}</p></div>"
            f"<div><h4>Ground truth</h4><p><b>{esc(c['concept'])}</b> (AUROC {c['auroc']:.3f})</p>"
            f"<h4>Model sees in the visualization</h4><p class='{'ok' if hit else 'no'}'>{esc(c['seen_as'][0])} "
            f"({c['seen_as'][1]:.2f})</p><h4>Direct-lens words</h4><table>{words}</table></div>"
            f"<div class='ex'><h4>Top examples</h4>{examples}</div></div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _prompt_of(concept: str) -> str:
    from clipviz.world import scene as world

    family, value = concept.split(":", 1)
    return world.prompt(family, value)
