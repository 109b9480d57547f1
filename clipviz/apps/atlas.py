"""A static, self-contained atlas of a model's neurons, built from the outputs of ``visualize``, ``examples`` and
``concepts`` (any subset), in the spirit of OpenAI Microscope.

>>> from pathlib import Path
>>> import tempfile, clipviz
>>> from clipviz import visualize
>>> from clipviz.apps.atlas import build_atlas
>>> results = Path(tempfile.mkdtemp())
>>> _ = visualize(clipviz.load("world-clip"), "blocks.2.mlp.hook_post", [0, 1], steps=2, out=results / "vis",
...               progress=False)
>>> site = build_atlas(results, results / "site")
>>> sorted(p.name for p in site.iterdir())
['assets', 'atlas.json', 'hooks', 'img', 'index.html', 'neurons']

The site opens from the file system (``index.html``, no server): an index of hooks with search by neuron id, by
word and by ground truth (the known concepts a plug-in ships for its bundled models), one paginated grid per hook
(lazy-loaded thumbnails), and one page per neuron with every visualization (all recipes and samples), the top
dataset examples with their heat maps and captions, the concept words of every method with scores, and the exact
settings. ``atlas.json`` holds the same data for programs (the Space reads it). The site is built in a temporary
folder and renamed into place, so a failed build leaves no half-written site.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import numpy as np
from PIL import Image

from clipviz.apps.validate import check_new_folder
from clipviz.errors import ClipvizError
from clipviz.images import HEAT_RGB
from clipviz.plugins import registry
from clipviz.results import (
    ATLAS_FILE,
    VISUALIZATION_KINDS,
    atomic_folder,
    find_concepts,
    find_examples,
    find_visualizations,
    thumbnail_path,
    versions,
    visualization_kind,
)

THUMB = 96
ASSETS = ("atlas.css", "search.js", "heat.js")  # package data in atlas_assets/, copied into every site
# Order in which concept methods are preferred for the words shown in grids and search.
METHOD_ORDER = ("dissect", "visual", "direct")


@dataclass
class NeuronRecord:
    """Everything the results say about one neuron."""

    hook: str
    neuron: int
    visualizations: list[dict] = field(default_factory=list)  # {"png": Path, "meta": dict}
    examples: list[dict] = field(default_factory=list)  # {"index", "score", "caption", "name", "thumb", "map"}
    words: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # method -> ranked (word, score)
    ties: dict[str, int] = field(default_factory=dict)  # method -> how many concepts share the top score
    truth: str | None = None  # the known concept of a bundled model's neuron (its plug-in's ground truth)

    def top_words(self, k: int = 3) -> list[str]:
        for method in sorted(self.words, key=lambda m: (METHOD_ORDER + (m,)).index(m)):
            return [w for w, _ in self.words[method][:k]]
        return []


@dataclass
class Results:
    """What ``collect`` found under a results folder."""

    root: Path
    model: str | None
    neurons: dict[str, dict[int, NeuronRecord]]  # hook -> neuron -> record
    prompts: list[dict]  # text / class visualizations: {"png", "meta"}
    examples_settings: dict[str, dict]  # hook -> settings, images seen, skipped
    concept_settings: dict[str, dict]  # hook -> method -> vocabulary


def collect(
    root: str | Path,
    only: Mapping[str, Sequence[int]] | None = None,
    visualizations: Callable[[Path, dict], bool] | None = None,
) -> Results:
    """Find every visualization sidecar, examples result and concepts table under ``root`` (with ``only``, those of
    these hooks' neurons alone, and with ``visualizations``, the images it keeps given their path and sidecar: a
    sweep's atlas shows its plan, not what earlier runs with other recipes or samples left in its folder).

    Results of one model spec with different weights are refused: a folder rerun after the weights changed keeps
    the older results of targets the rerun did not redo, and one atlas must not show two models as one."""
    from clipviz.analysis.examples import ExampleResult
    from clipviz.model.loading import canonical_spec, same_model

    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ClipvizError(f"results folder '{root}' is a file, not a folder: give the --out folder of a clipviz run")
    if not root.is_dir():
        raise ClipvizError(f"results folder '{root}' does not exist")
    neurons: dict[str, dict[int, NeuronRecord]] = {}
    prompts: list[dict] = []
    models: set[str] = set()
    examples_settings: dict[str, dict] = {}
    concept_settings: dict[str, dict] = {}

    weights: dict[str, str] = {}  # weights hash -> a file that has it

    def record(hook: str, neuron: int) -> NeuronRecord:
        return neurons.setdefault(hook, {}).setdefault(neuron, NeuronRecord(hook, neuron))

    def wanted(hook: str, neuron: int | None) -> bool:
        return only is None or (hook in only and (neuron is None or neuron in only[hook]))

    for png, meta in find_visualizations(root):
        if not wanted(meta.get("hook"), int(meta["target"]) if meta["kind"] == "neuron" else -1):
            continue
        if visualizations is not None and not visualizations(png, meta):
            continue
        weights.setdefault(meta.get("weights"), str(png))
        models.add(meta.get("model"))
        if meta["kind"] == "neuron":
            record(meta["hook"], int(meta["target"])).visualizations.append({"png": png, "meta": meta})
        else:
            prompts.append({"png": png, "meta": meta})

    for base, hook in find_examples(root):
        if not wanted(hook, None):
            continue
        try:
            result = ExampleResult.load(base, hook)
        except (OSError, KeyError, ValueError) as error:
            raise ClipvizError(f"cannot read the examples in '{base / hook}': {error}") from None
        weights.setdefault(result.settings.get("weights"), str(base / hook))
        if result.settings.get("model"):
            models.add(result.settings["model"])
        if hook in examples_settings:
            raise ClipvizError(
                f"'{root}' holds two examples results for '{hook}' (from {examples_settings[hook].get('source')} "
                f"and {result.settings.get('source')}): build the atlas from a folder with one"
            )
        examples_settings[hook] = {**result.settings, "seen": result.seen, "skipped": len(result.skipped)}
        for j, n in enumerate(result.neurons):
            if not wanted(hook, n):
                continue
            rec = record(hook, n)
            for r in range(result.indices.shape[1]):
                idx = int(result.indices[j, r])
                thumb = thumbnail_path(base, idx, result.settings)
                rec.examples.append(
                    {
                        "index": idx,
                        "score": float(result.scores[j, r]),
                        "caption": result.captions.get(idx, ""),
                        "name": result.names.get(idx, ""),
                        "thumb": thumb if thumb.is_file() else None,
                        "map": result.maps[j, r].numpy(),
                    }
                )

    tables = find_concepts(root)
    while True:
        try:
            _, rows = next(tables)
        except StopIteration:
            break
        except (OSError, ValueError) as error:
            raise ClipvizError(f"cannot read a concepts table under '{root}': {error}") from None
        for row in sorted(rows, key=lambda r: (r["neuron"], r["rank"])):
            if not wanted(row["hook"], int(row["neuron"])):
                continue
            models.add(row.get("model"))  # None: a table of a clipviz that did not record it
            weights.setdefault(row.get("weights"), row["hook"])
            rec = record(row["hook"], int(row["neuron"]))
            rec.words.setdefault(row["method"], []).append((row["word"], float(row["score"])))
            rec.ties[row["method"]] = int(row.get("tied") or 1)  # tables of an older clipviz did not count ties
            concept_settings.setdefault(row["hook"], {})[row["method"]] = row["vocabulary"]

    models.discard(None)
    models = {canonical_spec(m) for m in models}  # a bundled model's one name: its ground truth is found by it
    if len(models) > 1 and all(same_model(m, sorted(models)[0]) for m in models):  # hf:/dir and /dir
        models = {sorted(models)[0]}
    if len(models) > 1:
        raise ClipvizError(
            f"results from several models under '{root}' ({', '.join(sorted(models))}): build one atlas per model"
        )
    weights.pop(None, None)  # results of a clipviz that did not record the weights
    if len(weights) > 1:
        first, second = list(weights.values())[:2]
        raise ClipvizError(
            f"results of different weights under '{root}' (e.g. '{first}' and '{second}'): a rerun after the "
            "weights changed keeps older results of targets it did not redo; build the atlas from one run's folder"
        )
    known = registry().ground_truths.get(next(iter(models))) if models else None
    for hook, truths in (known() if known else {}).items():
        for neuron, rec in neurons.get(hook, {}).items():
            rec.truth = truths.get(neuron)
    if not neurons and not prompts:
        raise ClipvizError(
            f"no clipviz results under '{root}': expected outputs of `clipviz visualize` (PNG + JSON), "
            "`clipviz examples` (examples.json) or `clipviz concepts` (concepts-*.parquet)"
        )
    for recs in neurons.values():
        for rec in recs.values():
            rec.visualizations.sort(
                key=lambda v: (
                    VISUALIZATION_KINDS.index(visualization_kind(v["meta"])),
                    v["meta"]["recipe"].get("name", ""),
                    v["meta"]["seed"],
                )
            )
    return Results(root, models.pop() if models else None, neurons, prompts, examples_settings, concept_settings)


# ----------------------------------------------------------------------------------------------------- rendering


def _page(title: str, body: str, depth: int, scripts: tuple[str, ...] = ()) -> str:
    up = "../" * depth
    tags = "".join(f"<script src='{up}assets/{s}'></script>" for s in scripts)
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<link rel='icon' href='data:,'><meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<link rel='stylesheet' href='{up}assets/atlas.css'></head><body>"
        f"<header><a href='{up}index.html'>clipviz atlas</a> &middot; {html.escape(title)}</header>"
        f"<main>{body}</main>{tags}</body></html>\n"
    )


def _heat_uri(heat: np.ndarray) -> str:
    """A tiny RGBA PNG (one pixel per patch) in the heat-map colour whose alpha is the normalised activation, as a
    data URI; the
    browser scales it smoothly over the example."""
    h = heat.astype(np.float32)
    h = (h - h.min()) / (h.max() - h.min() + 1e-8)
    rgba = np.zeros((*h.shape, 4), dtype=np.uint8)
    rgba[..., :3] = HEAT_RGB
    rgba[..., 3] = (h * 150).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def heat_code(heat) -> dict:
    """A patch activation map, min-max normalised (as every overlay shows it) and quantised to bytes, compactly
    for ``atlas.json``: ``{"shape": [rows, cols], "uint8": base64}``; ``heat_decode`` reads it back.

    >>> heat_decode(heat_code(np.array([[0.0, 2.0], [1.0, 2.0]]))).tolist()
    [[0.0, 1.0], [0.5019607843137255, 1.0]]
    """
    h = np.asarray(heat, dtype=np.float32)
    h = (h - h.min()) / (h.max() - h.min() + 1e-8)
    raw = np.round(h * 255).astype(np.uint8)
    return {"shape": list(raw.shape), "uint8": base64.b64encode(raw.tobytes()).decode()}


def heat_decode(code: dict) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(code["uint8"]), dtype=np.uint8)
    return raw.reshape(code["shape"]).astype(np.float64) / 255


def _slug(hook: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in hook)


def _words_table(words: dict[str, list[tuple[str, float]]], vocabularies: dict[str, str], ties: dict[str, int]) -> str:
    esc = html.escape
    parts = []
    for method in sorted(words, key=lambda m: (METHOD_ORDER + (m,)).index(m)):
        rows = "".join(f"<tr><td>{esc(w)}</td><td>{s:.4f}</td></tr>" for w, s in words[method])
        vocab = vocabularies.get(method, "")
        tied = ties.get(method, 1)
        tie = (
            f"<p class='words'><b>{tied} concepts share the top score</b>: the first is one of equals, not the "
            "neuron's name</p>"
            if tied > 1
            else ""
        )
        parts.append(
            f"<div style='display:inline-block;vertical-align:top;margin-right:2rem'><h3>{esc(method)}"
            f"</h3><p class='words'>vocabulary: {esc(vocab)}</p>{tie}<table><tr><th>word</th><th>score</th>"
            f"</tr>{rows}</table></div>"
        )
    return "".join(parts) or "<p>No concept words for this neuron (run <code>clipviz concepts</code>).</p>"


class _SiteWriter:
    def __init__(self, results: Results, site: Path, page_size: int):
        self.r, self.site, self.page_size = results, site, page_size
        self.copied: dict[Path, str] = {}
        self.rank = {hook: {n: k for k, n in enumerate(sorted(recs))} for hook, recs in results.neurons.items()}

    def copy(self, src: Path, rel: str) -> str:
        if src not in self.copied:
            dst = self.site / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            self.copied[src] = rel
        return self.copied[src]

    def thumb(self, src: Path, rel: str) -> str:
        dst = self.site / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as img:
            small = img.convert("RGB")
            small.thumbnail((THUMB, THUMB))
            small.save(dst, format="PNG")
        return rel

    def write(self, rel: str, text: str) -> None:
        path = self.site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    def neuron_page(self, rec: NeuronRecord) -> dict:
        esc, slug = html.escape, _slug(rec.hook)
        up = "../../"
        vis_html, vis_files, vis_kinds = [], [], []
        for k, v in enumerate(rec.visualizations):
            rel = self.copy(v["png"], f"img/vis/{slug}/{rec.neuron}-{k}.png")
            vis_files.append(rel)
            m = v["meta"]
            vis_kinds.append(visualization_kind(m))
            caption = (
                f"<b>{vis_kinds[-1]}</b>: {esc(m['recipe'].get('name', '?'))}, seed {m['seed']}, objective "
                f"{m['objective_start']:.3f} &rarr; {m['objective_end']:.3f}"
            )
            vis_html.append(
                f"<figure><img src='{up}{rel}' alt='visualization {k}'><figcaption>{caption}</figcaption></figure>"
            )
        ex_html, ex_data = [], []
        for e in rec.examples:
            # under the thumbnail's source key: two datasets' image 5 are two files
            thumb = (
                None
                if e["thumb"] is None
                else self.copy(e["thumb"], f"img/examples/{e['thumb'].parent.name}/{e['index']}.png")
            )
            img = (
                "<div style='padding:40px 8px'>no thumbnail</div>"
                if thumb is None
                else f"<img src='{up}{thumb}' alt='example {e['index']}' loading='lazy'>"
            )
            label = e["caption"] or e["name"] or f"image {e['index']}"
            ex_html.append(
                f"<div class='ex'><div class='stack'>{img}<img class='heat' src='{_heat_uri(e['map'])}' "
                f"alt=''></div><div>{esc(label)}</div><div class='words'>#{e['index']} &middot; "
                f"{e['score']:.3f}</div></div>"
            )
            ex_data.append(
                {
                    "index": e["index"],
                    "score": round(e["score"], 5),
                    "caption": e["caption"],
                    "name": e["name"],
                    "thumb": self.copied.get(e["thumb"]) if e["thumb"] is not None else None,
                    "heat": heat_code(e["map"]),  # the patch activations, for programs (the dataset)
                }
            )
        settings = {
            "visualizations": [v["meta"] for v in rec.visualizations],
            "examples": self.r.examples_settings.get(rec.hook),
            "concepts": self.r.concept_settings.get(rec.hook),
        }
        body = (
            f"<h1>{esc(rec.hook)} &middot; neuron {rec.neuron}</h1>"
            f"<p><a href='{up}hooks/{slug}/page-{self.page_of(rec)}.html'>&larr; {esc(rec.hook)}</a></p>"
            + (f"<p class='truth'>Ground truth: {esc(rec.truth)}</p>" if rec.truth else "")
            + "<h2>Feature visualizations</h2><div class='vis'>"
            f"{''.join(vis_html) or '<p>None (run <code>clipviz visualize</code>).</p>'}</div>"
            f"<h2>Top dataset examples</h2>"
            + (
                "<p><label><input type='checkbox' id='toggle-heat' checked> heat map (where the neuron fires)"
                "</label></p>" + "".join(ex_html)
                if ex_html
                else "<p>None (run <code>clipviz examples</code>).</p>"
            )
            + f"<h2>Words</h2>{_words_table(rec.words, self.r.concept_settings.get(rec.hook, {}), rec.ties)}"
            f"<h2>Settings</h2><details><summary>exact settings used</summary><pre>"
            f"{esc(json.dumps(settings, indent=2, sort_keys=True, default=str))}</pre></details>"
        )
        self.write(f"neurons/{slug}/{rec.neuron}.html", _page(f"{rec.hook} #{rec.neuron}", body, 2, ("heat.js",)))
        thumb = (
            self.thumb(rec.visualizations[0]["png"], f"img/thumbs/{slug}/{rec.neuron}.png")
            if rec.visualizations
            else (ex_data[0]["thumb"] if ex_data and ex_data[0]["thumb"] else None)
        )
        return {
            "hook": rec.hook,
            "neuron": rec.neuron,
            "url": f"neurons/{slug}/{rec.neuron}.html",
            "thumb": thumb,
            "visualizations": vis_files,
            "visualization_kinds": vis_kinds,
            "examples": ex_data,
            "words": {m: [[w, round(s, 5)] for w, s in ws] for m, ws in rec.words.items()},
            "ties": {m: t for m, t in rec.ties.items() if t > 1},
            "top_words": rec.top_words(),
            "truth": rec.truth,
        }

    def page_of(self, rec: NeuronRecord) -> int:
        return self.rank[rec.hook][rec.neuron] // self.page_size + 1

    def hook_pages(self, hook: str, entries: list[dict]) -> int:
        esc, slug = html.escape, _slug(hook)
        pages = max(1, -(-len(entries) // self.page_size))
        for p in range(pages):
            chunk = entries[p * self.page_size : (p + 1) * self.page_size]
            cells = "".join(
                f"<a class='cell' href='../../{e['url']}'>"
                + (f"<img src='../../{e['thumb']}' alt='neuron {e['neuron']}' loading='lazy'>" if e["thumb"] else "")
                + f"<div>#{e['neuron']}</div><div class='words'>{esc(', '.join(e['top_words']))}</div>"
                + (f"<div class='truth'>{esc(e['truth'])}</div>" if e["truth"] else "")
                + "</a>"
                for e in chunk
            )
            nav = "".join(
                f"<span>{q + 1}</span>" if q == p else f"<a href='page-{q + 1}.html'>{q + 1}</a>" for q in range(pages)
            )
            body = (
                f"<h1>{esc(hook)}</h1><p>{len(entries)} neurons; page {p + 1} of {pages}</p>"
                f"<p class='pager'>{nav}</p><div class='grid'>{cells}</div><p class='pager'>{nav}</p>"
            )
            self.write(f"hooks/{slug}/page-{p + 1}.html", _page(hook, body, 2))
        return pages

    def prompt_section(self) -> str:
        if not self.r.prompts:
            return ""
        figures = []
        for k, v in enumerate(self.r.prompts):
            rel = self.copy(v["png"], f"img/prompts/{k}.png")
            m = v["meta"]
            target, recipe = html.escape(str(m["target"])), html.escape(m["recipe"].get("name", "?"))
            figures.append(
                f"<figure><img src='{rel}' alt='{target}'><figcaption>{html.escape(m['kind'])}: "
                f"{target} ({recipe})</figcaption></figure>"
            )
        return f"<h2>Prompts and classes</h2><div class='vis'>{''.join(figures)}</div>"

    def build(self) -> dict:
        hooks = {}
        for hook in sorted(self.r.neurons, key=_hook_order):
            entries = [self.neuron_page(self.r.neurons[hook][n]) for n in sorted(self.r.neurons[hook])]
            pages = self.hook_pages(hook, entries)
            hooks[hook] = {"pages": pages, "neurons": entries}
        esc = html.escape
        rows = "".join(
            f"<tr><td><a href='hooks/{_slug(h)}/page-1.html'>{esc(h)}</a></td><td>{len(d['neurons'])}</td>"
            f"<td>{sum(bool(e['visualizations']) for e in d['neurons'])}</td>"
            f"<td>{sum(bool(e['examples']) for e in d['neurons'])}</td>"
            f"<td>{sum(bool(e['words']) for e in d['neurons'])}</td></tr>"
            for h, d in hooks.items()
        )
        body = (
            f"<h1>{esc(self.r.model or 'clipviz results')}</h1>"
            "<p><input id='search' type='search' placeholder='search: a word or known concept (red), a neuron (17) "
            "or hook and neuron (blocks.2.mlp.hook_post 17)' autofocus></p><div id='results'></div>"
            "<h2>Hooks</h2><table><tr><th>hook</th><th>neurons</th><th>visualized</th><th>with examples</th>"
            f"<th>with words</th></tr>{rows}</table>{self.prompt_section()}"
        )
        index = [
            {
                "hook": e["hook"],
                "neuron": e["neuron"],
                "url": e["url"],
                "thumb": e["thumb"],
                "words": list(dict.fromkeys(e["top_words"] + [w for ws in e["words"].values() for w, _ in ws])),
                "truth": e["truth"],
            }
            for d in hooks.values()
            for e in d["neurons"]
        ]
        for asset in ASSETS:
            self.write(f"assets/{asset}", (files("clipviz.apps") / "atlas_assets" / asset).read_text(encoding="utf-8"))
        self.write("assets/index-data.js", "window.CLIPVIZ_INDEX = " + json.dumps(index) + ";\n")
        self.write("index.html", _page("index", body, 0, ("index-data.js", "search.js")))
        data = {
            "format": 1,
            "model": self.r.model,
            "hooks": hooks,
            "versions": versions(),
            "prompts": [
                {"kind": p["meta"]["kind"], "target": p["meta"]["target"], "png": self.copied[p["png"]]}
                for p in self.r.prompts
            ],
        }
        self.write(ATLAS_FILE, json.dumps(data, indent=1) + "\n")
        return data


def _hook_order(hook: str) -> tuple:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in hook.split("."))


def build_atlas(
    results: str | Path,
    out: str | Path,
    *,
    page_size: int = 256,
    only: Mapping[str, Sequence[int]] | None = None,
    visualizations: Callable[[Path, dict], bool] | None = None,
) -> Path:
    """Build the atlas of the results under ``results`` into ``out`` (replaced atomically) and return ``out``;
    ``only`` and ``visualizations`` choose what it shows, as in ``collect``.

    ``out`` may be an existing atlas (it is replaced) or a new or empty folder; anything else is refused rather
    than overwritten.
    """
    if page_size < 1:
        raise ClipvizError(f"page size must be at least 1, got {page_size}")
    out = check_new_folder(out, "atlas folder", replaceable=ATLAS_FILE)
    found = collect(results, only, visualizations)
    with atomic_folder(out) as staging:
        _SiteWriter(found, staging, page_size).build()
    return out
