"""``clipviz demo``: visualizations, dataset examples and words for neurons of the bundled CLIP with known concepts.

Offline, a few minutes on a 2-core CPU. Shows first the neurons planted by training (each trained to detect a
known concept: the ground truth's ``planted`` section, those whose held-out AUROC reached 0.98), then natural
neurons whose concept is clear (best AUROC over the world's factor values). For each it renders the feature
visualization, finds its top examples in held-out world images (the heat map in cyan, none of the world's
colours), names it with CLIP-Dissect and the direct lens, asks the model which concept its visualization shows,
and tallies per method how often each is right. The results are also written in the standard layout and built
into an atlas, where the known concepts are searchable.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from clipviz.images import grid, overlay, pil_to_tensor, tensor_to_pil
from clipviz.results import write_png, write_text
from clipviz.visualization.guidance import GUIDED_DEFAULT

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel

#: What ``visualize`` renders for world-clip when no recipe is named (data-guided, measured best on its colour
#: neurons: docs/validation.md), guided by each neuron's top images among the demo's own held-out world images.
DEMO_RECIPE = GUIDED_DEFAULT

#: What each method's score means, one line each (the page shows them next to the tallies).
METHOD_NOTES = {
    "examples": "share of the neuron's top held-out images that carry its concept",
    "dissect": "SoftWPMI over the held-out images with the model as its own labeller; right when its top-1 "
    "concept is the truth, alone (a tie of several concepts at the top names nothing)",
    "lens": "the neuron's direct write into the image embedding ranked against the concepts' text; right when "
    "its top-1 is the truth (the whole effect, up to the final LayerNorm's linearisation, only for the last block, "
    "so scored there)",
    "visual": "the concept the model itself reads in the neuron's feature visualization more than in the other "
    "neurons' (pointwise mutual information); right when it is the truth",
}
METHOD_NAMES = {
    "examples": "Top examples",
    "dissect": "CLIP-Dissect",
    "lens": "Direct lens",
    "visual": "Visualization read by the model",
}


def pick_neurons(selectivity, per_block: int = 2, blocks: list[int] | None = None) -> list[tuple[str, int, str, float]]:
    """(hook, neuron, concept, auroc): the clearest natural (not planted) neurons of each block, one per concept."""
    picked = []
    hooks = sorted(selectivity.auroc)
    if blocks is not None:
        hooks = [h for h in hooks if int(h.split(".")[1]) in blocks]
    for hook in hooks:
        seen: set[str] = set()
        for neuron, family, value, score in sorted(selectivity.natural_clear(hook, threshold=0.0), key=lambda r: -r[3]):
            concept = f"{family}:{value}"
            if concept in seen:
                continue
            seen.add(concept)
            picked.append((hook, neuron, concept, score))
            if len(seen) == per_block:
                break
    return picked


def planted_neurons(selectivity, limit: int | None = None) -> list[tuple[str, int, str, float]]:
    """(hook, neuron, concept, auroc) of the planted known answers (held-out AUROC >= 0.98), the first ``limit``."""
    rows = [
        (f"blocks.{p['block']}.mlp.hook_post", int(p["neuron"]), p["concept"], float(p["auroc"]))
        for p in selectivity.known()
    ]
    return rows if limit is None else rows[:limit]


def _named(row: dict, concept: str) -> bool:
    """Whether a words-table row names ``concept``: it comes first, and alone (not one of several equal scores)."""
    return row["words"][0] == concept and row.get("tied", 1) == 1


def _reading(row: dict) -> str:
    """A words-table row's top-1, or its tie: ``tie: a red object = a red circle``."""
    if row.get("tied", 1) > 1:
        return "tie: " + " = ".join(row["words"][: row["tied"]])
    return row["words"][0]


def tally(cards: list[dict], kind: str) -> dict[str, str]:
    """Per method, ``"right/total right"`` over the cards of ``kind`` (the examples: their mean precision).

    >>> cards = [{"kind": "planted", "right": {"examples": 1.0, "dissect": True, "lens": None, "visual": False}},
    ...          {"kind": "planted", "right": {"examples": 0.5, "dissect": True, "lens": True, "visual": False}}]
    >>> tally(cards, "planted")
    {'examples': '75% precise', 'dissect': '2/2 right', 'lens': '1/1 right', 'visual': '0/2 right'}
    """
    rows = [c for c in cards if c["kind"] == kind]
    out = {}
    for method in METHOD_NOTES:
        vals = [c["right"][method] for c in rows if c["right"][method] is not None]
        if not vals:
            out[method] = "n/a"
        elif method == "examples":
            out[method] = f"{100 * float(np.mean(vals)):.0f}% precise"
        else:
            out[method] = f"{sum(vals)}/{len(vals)} right"
    return out


def run_demo(
    out: Path,
    *,
    model_name: str = "world-clip",
    per_block: int = 2,
    steps: int = 150,
    examples: int = 2000,
    top_k: int = 6,
    planted: int | None = None,
    progress: bool = True,
) -> Path:
    """Build the demo page under ``out`` and return the path of its ``index.html``.

    ``planted``: how many of the planted known answers to show first (all by default, 0 for none);
    ``per_block``: natural clear neurons per block after them (0 for none)."""
    from clipviz.analysis.dissect import check_probe_size
    from clipviz.errors import ClipvizError

    if per_block < 0 or steps < 1 or examples < top_k or (planted is not None and planted < 0):
        raise ClipvizError("steps must be >= 1, per-block and planted >= 0, and examples >= top-k")
    check_probe_size(examples, f"world:{examples}")  # the examples are CLIP-Dissect's probe set too
    return _run(out, model_name, per_block, steps, examples, top_k, planted, progress)


def _run(
    out: Path,
    model_name: str,
    per_block: int,
    steps: int,
    examples: int,
    top_k: int,
    planted: int | None,
    progress: bool,
) -> Path:
    from clipviz.analysis.concepts import Vocabulary, direct_lens, visual_words, words_table, write_table
    from clipviz.analysis.dissect import CEILING_TIE, labeller_a, softwpmi
    from clipviz.analysis.examples import mine_examples, write_thumbnails
    from clipviz.apps.atlas import build_atlas
    from clipviz.data.sources import open_source
    from clipviz.errors import ClipvizError
    from clipviz.model.loading import load
    from clipviz.visualization.visualize import visualize
    from clipviz.world.groundtruth import (
        CONCEPTS,
        bundled_selectivity,
        image_embeddings,
        patch_means,
        prompt_embeddings,
        world_images,
        world_size,
    )
    from clipviz.world.planting import concept_labels, concept_prompt
    from clipviz.world.plugin import source_seed, world_spec

    truth = bundled_selectivity(model_name)
    if planted is not None and planted > len(truth.known()):
        raise ClipvizError(
            f"--planted {planted}: {model_name} has {len(truth.known())} planted known answers; give at most that"
        )
    model = load(model_name)
    chosen = [(*c, "planted") for c in planted_neurons(truth, planted)]
    chosen += [(*c, "natural") for c in pick_neurons(truth, per_block=per_block)] if per_block else []
    if not chosen:
        raise ClipvizError("nothing to show: give --planted or --per-block above 0")
    concepts = [f"{f}:{v}" for f, v in CONCEPTS]
    concepts += sorted({c[2] for c in chosen} - set(concepts))  # the planted conjunctions
    prompts = [concept_prompt(c) for c in concepts]
    vocab = Vocabulary("world-demo", tuple(prompts), ("{}",), "generated by clipviz")
    # the source's images and, with their factors, the probe set: drawn at the model's own size
    source = open_source(world_spec(examples, world_size(model)))
    probe, factors = world_images(examples, seed=source_seed(), size=world_size(model))
    labels = concept_labels(concepts, factors)
    img, text = image_embeddings(model, probe), prompt_embeddings(model, prompts)
    hooks = sorted(dict.fromkeys(c[0] for c in chosen), key=lambda h: int(h.split(".")[1]))
    dissect = {h: softwpmi(m, img @ text.T, a=labeller_a(model)) for h, m in patch_means(model, hooks, probe).items()}
    last = f"blocks.{model.n_blocks - 1}.mlp.hook_post"
    cards = []
    for hook in hooks:
        rows = [c for c in chosen if c[0] == hook]
        neurons = list(dict.fromkeys(c[1] for c in rows))
        vis = visualize(
            model,
            hook,
            neurons,
            recipe=DEMO_RECIPE,
            guide=f"world:{examples}",  # the images its examples come from: its top ones guide it
            steps=steps,
            out=out / "results" / "visualizations",
            progress=progress,
        )
        ex = mine_examples(model, hook, source, neurons=neurons, top_k=top_k, progress=progress)
        ex.save(out / "results" / "examples")  # the standard results layout, for the atlas
        write_thumbnails(source, ex, out / "results" / "examples", model=model)
        words = direct_lens(model, hook, neurons, vocab, top_k=3, embeddings=text)
        write_table(out / "results" / "words", hook, words, "direct", vocab, identity=model.identity())
        named = words_table(dissect[hook][neurons], vocab.concepts, 3, neurons, tolerance=CEILING_TIE)
        write_table(out / "results" / "words", hook, named, "dissect", vocab, identity=model.identity())
        wanted = set(ex.indices.flatten().tolist())
        pictures = {i: im for i, im, _ in source if i in wanted}
        for _, neuron, concept, score, kind in rows:
            j, c = neurons.index(neuron), concepts.index(concept)
            exs = []
            for r in range(ex.indices.shape[1]):
                idx = int(ex.indices[j, r])
                name = f"examples/{hook}/neuron-{neuron:05d}-{r}.png"
                write_png(out / name, overlay(tensor_to_pil(model.preprocess_pil(pictures[idx])), ex.maps[j, r]))
                exs.append((name, float(ex.scores[j, r]), ex.captions.get(idx, ""), bool(labels[idx, c])))
            cards.append(
                {
                    "hook": hook,
                    "neuron": neuron,
                    "concept": concept,
                    "prompt": prompts[c],
                    "auroc": score,
                    "kind": kind,
                    "vis": vis[j],
                    "examples": exs,
                    "words": words[j],
                    "dissect": _reading(named[j]),
                    "right": {  # a first word that is one of several equals names nothing: not right
                        "examples": float(np.mean([e[3] for e in exs])),
                        "dissect": _named(named[j], prompts[c]),
                        "lens": _named(words[j], prompts[c]) if hook == last else None,
                    },
                }
            )
    cards.sort(key=lambda c: c["kind"] != "planted")  # the known answers first, each kind in block order
    images = torch.stack([pil_to_tensor(c["vis"].image) for c in cards])[:, None]
    for c, read in zip(cards, visual_words(model, images, vocab, 1, embeddings=text), strict=True):
        c["seen_as"] = (read["words"][0], read["scores"][0])  # against all shown neurons' visualizations
        c["right"]["visual"] = _named(read, c["prompt"])
    for kind in ("planted", "natural"):
        shown = [c for c in cards if c["kind"] == kind]
        if shown:
            labelled = grid(
                [c["vis"].image for c in shown], labels=[f"{c['hook'].split('.')[1]}:{c['neuron']}" for c in shown]
            )
            write_png(out / f"grid-{kind}.png", labelled)
    build_atlas(out / "results", out / "atlas")
    page = out / "index.html"
    write_text(page, _html(model, cards, out))
    return page


def _html(model: HookedVisionModel, cards: list[dict], out: Path) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>clipviz demo</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2rem;background:#fafafa;color:#222}",
        ".card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:1rem;margin:1rem 0;display:flex;"
        "gap:1.5rem;flex-wrap:wrap}",
        "img.px{image-rendering:pixelated;width:192px;height:192px;border:1px solid #ccc}",
        "img.grid{image-rendering:pixelated;max-width:100%}",
        ".ex img{width:96px;height:96px;image-rendering:pixelated;margin:2px}.ex img.miss{outline:3px solid #a00}",
        "table{border-collapse:collapse}td{padding:2px 8px}.ok{color:#070}.no{color:#a00}",
        "</style></head><body>",
        f"<h1>clipviz demo: {esc(model.spec)}</h1>",
        f"<p>{model.n_blocks} blocks, d_mlp {model.d_mlp}. The neurons <b>planted</b> by training come first: each "
        "was trained to detect a known concept, so every method below is checked against a fact. Natural neurons "
        "with a clear concept (best AUROC of the patch-mean activation over the world's factor values) follow.</p>",
    ]
    titles = {"planted": "Planted neurons (known answers)", "natural": "Natural clear neurons"}
    for kind, title in titles.items():
        count = sum(c["kind"] == kind for c in cards)
        if not count:
            continue
        scores = tally(cards, kind)
        parts.append(f"<h2>{title}: {count}</h2><ul>")
        parts += [
            f"<li><b>{esc(METHOD_NAMES[m])}: {esc(scores[m])}</b> &mdash; {esc(note)}</li>"
            for m, note in METHOD_NOTES.items()
        ]
        parts.append(
            f"</ul><p><img class='grid' src='grid-{kind}.png' alt='{kind} visualizations, labelled block:neuron'></p>"
        )
    parts.append(
        f"<p>Visualizations: recipe <code>{DEMO_RECIPE}</code> (what <code>visualize</code> renders for this "
        f"model), each guided by its neuron's top {cards[0]['vis'].meta['guide']['k']} of the same held-out "
        "world images as its examples. Top examples: held-out world images; the "
        "<span style='color:#0aa'>cyan</span> heat map marks where the neuron fires (cyan is none of the world's "
        "colours); a red frame marks an example without the concept. The same results in the standard layout "
        "are in <code>results/</code>; browse them in the atlas, where the known concepts are searchable: "
        "<a href='atlas/index.html'>atlas/index.html</a>.</p>"
    )
    for c in cards:
        right, meta = c["right"], c["vis"].meta

        def mark(ok: bool) -> str:
            return "ok" if ok else "no"

        words = "".join(
            f"<tr><td>{esc(w)}</td><td>{s:.3f}</td></tr>"
            for w, s in zip(c["words"]["words"], c["words"]["scores"], strict=True)
        )
        examples = "".join(
            f"<img src='{esc(p)}' class='{'hit' if has else 'miss'}' title='{esc(cap)} (activation {s:.2f})' "
            "alt='example'>"
            for p, s, cap, has in c["examples"]
        )
        lens = (
            ""
            if right["lens"] is None
            else f" <span class='{mark(right['lens'])}'>({'right' if right['lens'] else 'wrong'})</span>"
        )
        parts.append(
            f"<div class='card'><div><h3>{esc(c['hook'])} #{c['neuron']} ({c['kind']})</h3>"
            f"<img class='px' src='{esc(c['vis'].path.relative_to(out).as_posix())}' alt='visualization'>"
            f"<p>objective {meta['objective_start']:.2f} &rarr; {meta['objective_end']:.2f}</p></div>"
            f"<div><h4>Ground truth{' (planted)' if c['kind'] == 'planted' else ''}</h4><p><b>{esc(c['concept'])}"
            f"</b> &ldquo;{esc(c['prompt'])}&rdquo; (held-out AUROC {c['auroc']:.3f})</p>"
            f"<h4>Model sees in the visualization</h4><p class='{mark(right['visual'])}'>{esc(c['seen_as'][0])} "
            f"(PMI {c['seen_as'][1]:.2f})</p><h4>CLIP-Dissect</h4><p class='{mark(right['dissect'])}'>"
            f"{esc(c['dissect'])}</p><h4>Direct-lens words{lens}</h4><table>{words}</table></div>"
            f"<div class='ex'><h4>Top examples ({100 * right['examples']:.0f}% carry the concept)</h4>{examples}"
            "</div></div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
