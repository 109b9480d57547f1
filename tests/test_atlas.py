"""The atlas: built from the bundled model's visualize / examples / concepts results, checked against them, and
browsed in headless Chromium."""

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from browser import chromium, console_errors, screenshot
from PIL import Image

from clipviz.apps.atlas import build_atlas, collect
from clipviz.apps.cli import main
from clipviz.errors import ClipvizError

HOOK = "blocks.2.mlp.hook_post"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Visualizations of neurons 0-2 (2 samples each) and of a prompt, examples and direct-lens words of 0-3."""
    import clipviz
    from clipviz.analysis.concepts import direct_lens, load_vocabulary, write_table
    from clipviz.analysis.examples import mine_examples, write_thumbnails
    from clipviz.data import open_source
    from clipviz.visualization.visualize import visualize

    root = tmp_path_factory.mktemp("results")
    model = clipviz.load("world-clip")
    vis = visualize(model, HOOK, [0, 1, 2], recipe="default", steps=3, samples=2, out=root / "vis", progress=False)
    visualize(model, texts=["a red object"], recipe="default", steps=3, out=root / "vis", progress=False)
    source = open_source("world:120")
    ex = mine_examples(model, HOOK, source, neurons=[0, 1, 2, 3], top_k=4, progress=False)
    ex.save(root / "ex")
    write_thumbnails(source, ex, root / "ex")
    vocab = load_vocabulary("world")
    words = direct_lens(model, HOOK, [0, 1, 2, 3], vocab, top_k=5)
    write_table(
        root / "con",
        HOOK,
        [{"neuron": n, **w} for n, w in zip([0, 1, 2, 3], words, strict=True)],
        "direct",
        vocab,
        identity=model.identity(),
    )
    return {"root": root, "vis": vis, "examples": ex, "words": words}


@pytest.fixture(scope="module")
def site(results, tmp_path_factory):
    return build_atlas(results["root"], tmp_path_factory.mktemp("atlas") / "site")


def _neurons(site: Path) -> dict[int, dict]:
    data = json.loads((site / "atlas.json").read_text())
    return {e["neuron"]: e for e in data["hooks"][HOOK]["neurons"]}


def test_atlas_data_equals_the_results(results, site):
    data = json.loads((site / "atlas.json").read_text())
    assert data["model"] == "world-clip"
    neurons = _neurons(site)
    assert sorted(neurons) == [0, 1, 2, 3]
    by_neuron = {}
    for v in results["vis"]:
        by_neuron.setdefault(v.meta["neuron"], []).append(v.path.read_bytes())
    for n in (0, 1, 2):  # every sample copied byte for byte
        assert sorted((site / p).read_bytes() for p in neurons[n]["visualizations"]) == sorted(by_neuron[n])
    assert neurons[3]["visualizations"] == [] and neurons[3]["thumb"]  # examples only: an example is its thumbnail
    ex = results["examples"]
    for j, n in enumerate(ex.neurons):
        got = neurons[n]["examples"]
        assert [e["index"] for e in got] == ex.indices[j].tolist()
        assert np.allclose([e["score"] for e in got], ex.scores[j].numpy(), atol=1e-4)
        assert [e["caption"] for e in got] == [ex.captions[i] for i in ex.indices[j].tolist()]
        assert all((site / e["thumb"]).is_file() for e in got)
    for n, w in zip([0, 1, 2, 3], results["words"], strict=True):
        assert [x[0] for x in neurons[n]["words"]["direct"]] == w["words"]
    assert [p["target"] for p in data["prompts"]] == ["a red object"]


def test_heat_maps_peak_where_the_neuron_fires(results, site):
    ex = results["examples"]
    page = (site / "neurons" / HOOK / "1.html").read_text()
    uris = re.findall(r"class='heat' src='data:image/png;base64,([^']+)'", page)
    assert len(uris) == ex.indices.shape[1]
    j = ex.neurons.index(1)
    for r, uri in enumerate(uris):
        alpha = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))))[..., 3]
        assert alpha.shape == tuple(ex.maps.shape[-2:])
        assert np.unravel_index(alpha.argmax(), alpha.shape) == np.unravel_index(
            int(ex.maps[j, r].argmax()), alpha.shape
        )


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("href", "src") and value and not value.startswith(("data:", "http", "#")):
                self.targets.append(value.split("?")[0])


def test_every_link_and_image_of_the_site_exists(site):
    pages = list(site.rglob("*.html"))
    assert len(pages) == 1 + 1 + 4  # index, one grid page, four neuron pages
    for page in pages:
        parser = _Links()
        parser.feed(page.read_text())
        assert parser.targets, page
        for target in parser.targets:
            assert (page.parent / target).resolve().is_file(), f"{page.relative_to(site)} -> {target}"


def test_pagination_and_search_index(results, site, tmp_path):
    small = build_atlas(results["root"], tmp_path / "paged", page_size=3)
    assert sorted(p.name for p in (small / "hooks" / HOOK).iterdir()) == ["page-1.html", "page-2.html"]
    assert "#3" in (small / "hooks" / HOOK / "page-2.html").read_text()
    text = (site / "assets" / "index-data.js").read_text()
    entries = json.loads(text[text.index("[") : text.rindex("]") + 1])
    assert {(e["hook"], e["neuron"]) for e in entries} == {(HOOK, n) for n in range(4)}
    words = {e["neuron"]: e["words"] for e in entries}
    assert words[1][:3] == results["words"][1]["words"][:3]


def test_rebuild_replaces_an_atlas_but_never_other_folders(results, site, tmp_path):
    stale = site / "stale.txt"
    stale.write_text("from an older build")
    build_atlas(results["root"], site)
    assert not stale.exists() and (site / "index.html").is_file()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ClipvizError, match="holds no atlas.json"):
        build_atlas(results["root"], other)
    assert (other / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mine")]  # no staging folder left behind


def test_bad_results_folders(tmp_path, results, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipvizError, match="no clipviz results"):
        collect(tmp_path / "empty")
    other = tmp_path / "two-models"
    import shutil

    shutil.copytree(results["root"] / "vis", other / "vis")
    meta = next((other / "vis" / HOOK).glob("*.json"))
    data = json.loads(meta.read_text())
    meta.write_text(json.dumps({**data, "model": "another-model"}))
    with pytest.raises(ClipvizError, match="several models"):
        collect(other)
    assert main(["atlas", str(tmp_path / "missing"), "--out", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err
    assert not (tmp_path / "site").exists()


def test_cli_builds_the_atlas(results, tmp_path, capsys):
    assert main(["atlas", str(results["root"]), "--out", str(tmp_path / "site")]) == 0
    assert capsys.readouterr().out.strip().endswith("index.html")
    assert (tmp_path / "site" / "neurons" / HOOK / "0.html").is_file()


def test_atlas_in_chromium(results, site):
    """The index loads without console errors, search by a word finds the neuron, and its page shows its images
    and words."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    word = results["words"][1]["words"][0]
    with chromium() as driver:
        driver.get((site / "index.html").as_uri())
        assert console_errors(driver) == []
        box = driver.find_element(By.ID, "search")
        box.send_keys(word)
        WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.ID, "count"))
        links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#results a.cell")]
        assert any(h.endswith(f"neurons/{HOOK}/1.html") for h in links), links
        screenshot(driver, "atlas-search.png")
        box.clear()
        box.send_keys(f"{HOOK} 2")
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "count").text.startswith("1 neuron"))
        driver.get((site / "neurons" / HOOK / "1.html").as_uri())
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == 2 + 2 * 4  # two visualizations, four examples each with a heat map
        loaded = "return arguments[0].complete && arguments[0].naturalWidth > 0"
        WebDriverWait(driver, 20).until(lambda d: all(d.execute_script(loaded, img) for img in images))
        body = driver.find_element(By.TAG_NAME, "body").text
        assert all(w in body for w in results["words"][1]["words"])
        assert console_errors(driver) == []
        screenshot(driver, "atlas-neuron.png")


def test_data_guided_image_next_to_the_plain_one(tmp_path):
    """A neuron rendered plain and data-guided shows both, plain first, each labelled, in the site and its data
    (which the Space's atlas tab reads)."""
    import clipviz
    from clipviz.apps.space import SpaceBackend
    from clipviz.visualization.visualize import visualize

    model = clipviz.load("world-clip")
    common = dict(steps=2, progress=False, out=tmp_path / "results")  # one folder: each kind has its own name
    visualize(model, HOOK, [5], recipe="vital", guide="world:64", guide_k=4, **common)
    visualize(model, HOOK, [5], recipe="default", **common)
    names = sorted(p.name for p in (tmp_path / "results" / HOOK).iterdir())
    assert names == sorted(
        [
            "grid.png",
            "grid.data-guided.png",
            *(f"neuron-00005{k}.{e}" for k in ("", ".data-guided") for e in ("png", "json")),
        ]
    )
    site = build_atlas(tmp_path / "results", tmp_path / "site")
    entry = _neurons(site)[5]
    assert entry["visualization_kinds"] == ["plain", "data-guided"]
    page = (site / entry["url"]).read_text()
    assert page.index("<b>plain</b>: default") < page.index("<b>data-guided</b>: vital")
    images, _, _ = SpaceBackend(atlas=site).atlas_neuron(HOOK, 5)
    assert [label for _, label in images] == ["plain", "data-guided"]


def test_a_rerun_replaces_an_old_style_data_guided_image_and_keeps_a_plain_one(tmp_path):
    """Folders written before each kind had its own name hold data-guided images as ``<key>.png``: the rerun that
    writes ``<key>.data-guided.png`` removes that copy (the atlas would show the neuron twice), not a plain image."""
    import clipviz
    from clipviz.visualization.visualize import visualize

    model = clipviz.load("world-clip")
    out, folder = tmp_path / "results", tmp_path / "results" / HOOK
    guided = dict(recipe="vital", guide="world:64", guide_k=4, steps=2, progress=False, out=out)
    visualize(model, HOOK, [5, 6, 7], **guided)
    for key in ("neuron-00005", "neuron-00006", "neuron-00007"):  # the old layout's names
        for ext in ("png", "json"):
            new = folder / f"{key}.data-guided.{ext}"
            (folder / f"{key}.{ext}").write_bytes(new.read_bytes())
            if key != "neuron-00007":  # 7 keeps its new copy too: the rerun finds it finished
                new.unlink()
    visualize(model, HOOK, [6], recipe="default", steps=2, progress=False, out=out)  # a plain image replaces one
    visualize(model, HOOK, [5, 6, 7], **guided)
    names = {p.name for p in folder.iterdir() if p.name.startswith("neuron-")}
    assert names == {
        *(f"neuron-0000{n}.data-guided.{e}" for n in (5, 7) for e in ("png", "json")),
        *(f"neuron-00006{k}.{e}" for k in ("", ".data-guided") for e in ("png", "json")),
    }
    entries = _neurons(build_atlas(out, tmp_path / "site"))
    assert entries[5]["visualization_kinds"] == entries[7]["visualization_kinds"] == ["data-guided"]
    assert entries[6]["visualization_kinds"] == ["plain", "data-guided"]


def test_another_models_words_are_not_put_on_this_models_neurons(tmp_path, results):
    """Found from outside (2026-12-02): concepts tables recorded no model, so another model's words were shown."""
    import shutil

    from clipviz.analysis.concepts import load_vocabulary, write_table

    mixed = tmp_path / "mixed"
    shutil.copytree(results["root"] / "vis", mixed / "vis")
    import clipviz

    other = clipviz.wrap(clipviz.load("world-clip").native, spec="my-world-clip")
    table = [{"neuron": 0, "words": ["a red object"], "scores": [1.0]}]
    write_table(mixed / "con", HOOK, table, "direct", load_vocabulary("world"), identity=other.identity())
    with pytest.raises(ClipvizError, match="several models"):
        collect(mixed)


def test_one_model_spelled_two_ways_is_one_atlas(tmp_path, tiny):
    """Found from outside: results of `hf:DIR` and of `DIR` (one model) were refused as two models; and every
    spelling of a bundled model is loaded under its one name, which its ground truth is found by."""
    import clipviz
    from clipviz.analysis.examples import mine_examples
    from clipviz.data import open_source
    from clipviz.visualization.visualize import visualize

    folder = tiny["vit"][1].removeprefix("hf:")
    hook = "blocks.0.mlp.hook_post"
    visualize(
        clipviz.load(f"hf:{folder}"), hook, [0], recipe="default", steps=1, out=tmp_path / "r" / "vis", progress=False
    )
    mine_examples(clipviz.load(folder), hook, open_source("world:20"), neurons=[0], top_k=2, progress=False).save(
        tmp_path / "r" / "ex"
    )
    found = collect(tmp_path / "r")
    assert len(found.neurons[hook][0].visualizations) == 1 and len(found.neurons[hook][0].examples) == 2
    for spelling in ("clipviz:world-clip", str(clipviz.bundled_models()["world-clip"]) + "/"):
        assert clipviz.load(spelling).spec == "world-clip"
    # results recorded under another spelling of the bundled model keep its ground truth in the atlas
    from clipviz.analysis.concepts import load_vocabulary, write_table

    model = clipviz.load("world-clip")
    table = [{"neuron": 179, "words": ["a purple object"], "scores": [0.5], "tied": 1}]
    for i, spelling in enumerate(("world-clip", "clipviz:world-clip")):
        identity = {**model.identity(), "model": spelling}
        write_table(
            tmp_path / "w" / str(i),
            "blocks.3.mlp.hook_post",
            table,
            "direct" if i else "dissect",
            load_vocabulary("world"),
            identity=identity,
        )
    found = collect(tmp_path / "w")
    assert found.neurons["blocks.3.mlp.hook_post"][179].truth  # purple & bottom, planted
