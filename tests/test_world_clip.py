"""The bundled synthetic-world CLIP: loads offline, works, and its shipped ground truth is reproducible."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import clipviz
from clipviz.world.groundtruth import CONCEPTS, bundled_selectivity, selectivity, zero_shot_accuracy


@pytest.fixture(scope="module")
def model():
    return clipviz.load("world-clip")


def test_loads_offline_through_the_public_path(model):
    assert clipviz.resolve_spec("world-clip")[0] == "open_clip"
    assert model.is_clip and model.n_blocks == 4 and model.d_mlp == 512 and model.prefix_tokens == ("cls",)
    weights = Path(clipviz.bundled_models()["world-clip"]) / "open_clip_model.safetensors"
    assert weights.stat().st_size <= 20 * 2**20
    images = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        img = model.encode_image(images)
        txt = model.encode_text(["two large red striped triangles on the left", "a small blue ring at the top"])
    assert img.shape == (4, 128) and txt.shape == (2, 128)
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()


def test_logit_scale_is_the_trained_temperature_and_sets_clip_dissects_softmax(model):
    from clipviz.analysis.dissect import labeller_a

    trained = float(model.native.logit_scale.exp())
    assert model.logit_scale == pytest.approx(trained) and 1 < trained < 100
    assert labeller_a(model) == pytest.approx(10 * trained / 100)


def test_zero_shot_colour_accuracy_stays_above_the_bar(model):
    acc = zero_shot_accuracy(model, n=200, seed=123)
    assert acc["colour"] >= 0.95


def test_shipped_ground_truth_matches_a_recomputation(model):
    shipped = bundled_selectivity()
    fresh = selectivity(model, n=600, seed=shipped.seed + 1)
    for hook, table in shipped.auroc.items():
        assert table.shape == fresh.auroc[hook].shape == (512, len(CONCEPTS))
        corr = torch.corrcoef(torch.stack([table.flatten(), fresh.auroc[hook].flatten()]))[0, 1]
        assert corr > 0.9, hook
        for neuron, family, value, _ in shipped.clear(hook):
            concept = CONCEPTS.index((family, value))
            assert fresh.auroc[hook][neuron, concept] > 0.85


def test_demo_shows_planted_neurons_first_with_tallies_and_a_searchable_truth(tmp_path, capsys):
    from clipviz.apps import demo
    from clipviz.apps.cli import main

    known = bundled_selectivity().known()
    page = demo.run_demo(tmp_path / "demo", per_block=1, steps=4, examples=120, top_k=3, planted=3, progress=False)
    text = page.read_text()
    cards = 3 + 4  # the first three planted known answers, then one natural neuron per block
    sources = re.findall(r"src='([^']+)'", text)
    assert len(sources) == 2 + cards * (1 + 3)  # two labelled grids; per neuron one visualization, three examples
    for src in sources:
        assert (page.parent / src).is_file()
    assert text.count("Direct-lens words") == cards and text.count("Ground truth") == cards
    assert text.index("(planted)") < text.index("(natural)")
    for p in known[:3]:  # each planted neuron with its known concept
        assert f"blocks.{p['block']}.mlp.hook_post #{p['neuron']} (planted)" in text
        assert f"<b>{p['concept']}</b>" in text
    assert "Planted neurons (known answers): 3" in text
    for name in demo.METHOD_NAMES.values():  # a tally per method, each explained in one line
        assert re.search(rf"<b>{name}: (\d+/\d+ right|\d+% precise|n/a)</b> &mdash; \S", text), name
    assert re.search(r"CLIP-Dissect: \d/3 right", text)
    atlas = json.loads((page.parent / "atlas" / "atlas.json").read_text())  # the demo's results, browsable
    assert sorted(atlas["hooks"]) == [f"blocks.{b}.mlp.hook_post" for b in range(4)]
    for entry in atlas["hooks"].values():
        for neuron in entry["neurons"]:
            assert neuron["visualizations"] and len(neuron["examples"]) == 3 and len(neuron["words"]["direct"]) == 3
            assert neuron["truth"], neuron  # every shown neuron has a known concept, and the atlas knows it
            assert neuron["visualization_kinds"] == ["data-guided"]  # what visualize renders for world-clip
    # each image is guided by its neuron's top images among the demo's own, the first of which it shows
    from clipviz.results import read_examples

    hook = f"blocks.{known[0]['block']}.mlp.hook_post"
    tensors, _ = read_examples(page.parent / "results" / "examples", hook)
    meta = json.loads(
        (
            page.parent / "results" / "visualizations" / hook / f"neuron-{known[0]['neuron']:05d}.data-guided.json"
        ).read_text()
    )
    assert meta["guide"]["source"] == "world:120" and meta["guide"]["k"] == 16
    row = tensors["neurons"].tolist().index(known[0]["neuron"])
    assert meta["guide"]["images"][:3] == tensors["indices"][row].tolist()
    first = known[0]
    truth = next(
        n for n in atlas["hooks"][f"blocks.{first['block']}.mlp.hook_post"]["neurons"] if n["neuron"] == first["neuron"]
    )
    assert truth["truth"].startswith("planted: ") and first["concept"] in truth["truth"]
    index = (page.parent / "atlas" / "assets" / "index-data.js").read_text()
    assert first["concept"] in index  # what the atlas search box searches
    assert "href='atlas/index.html'" in text
    code = main(["demo", "--out", str(tmp_path / "bad"), "--planted", "-1"])
    assert code == 2 and "--planted: must be" in capsys.readouterr().err
