"""The recipe table in docs/validation.md is the script's, the default follows it, and its readings reproduce."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import loaded_script

ROOT = Path(__file__).resolve().parents[1]
SCORES = ROOT / "docs" / "recipe_scores.json"


@pytest.fixture(scope="module")
def script():
    with loaded_script("score_recipes") as module:
        yield module


@pytest.fixture(scope="module")
def recorded():
    return json.loads(SCORES.read_text())


def _share(text: str) -> float:
    got, total = text.split("/")
    return int(got) / int(total)


def test_the_docs_table_is_the_scripts_table(script, recorded):
    docs = (ROOT / "docs" / "validation.md").read_text()
    for line in script.markdown(recorded).splitlines():
        assert line in docs, line
    assert recorded["command"] in docs


def _eligible(table: dict, name: str) -> bool:
    """Whether a recipe keeps 90% of the best activation reached in no more time per neuron (a recipe that
    optimises longer reaches more: clip-inversion's three stages)."""
    budget = table[name]["seconds_per_neuron"]
    top = max(e["activation_ratio_median"] for e in table.values() if e["seconds_per_neuron"] <= budget)
    return table[name]["activation_ratio_median"] >= 0.9 * top


def test_the_default_is_the_best_recipe_of_the_table(recorded):
    """What ``visualize`` renders with reference images is the recipe that renders the most colour neurons in
    their colour, without giving up more than 10% of the best activation reached in no more time per neuron;
    without them, the unguided recipe that does so best by the same rule (``default``; at the table's 150 steps
    ``lucid`` renders the same images, so it may tie)."""
    from clipviz.visualization.guidance import GUIDED_DEFAULT, UNGUIDED_DEFAULT

    table = recorded["recipes"]
    best = max(table, key=lambda r: (_share(table[r]["colour_dominant"]), table[r]["activation_ratio_median"]))
    assert best == GUIDED_DEFAULT and _eligible(table, best)
    assert _share(table[best]["colour_dominant"]) >= 0.8  # issue 18's bar
    unguided = {r: e for r, e in table.items() if r != GUIDED_DEFAULT and "@" not in r and _eligible(table, r)}
    assert UNGUIDED_DEFAULT in unguided
    assert _share(unguided[UNGUIDED_DEFAULT]["colour_dominant"]) == max(
        _share(e["colour_dominant"]) for e in unguided.values()
    )


def test_colour_readings_reproduce_on_the_shipped_weights(script, recorded):
    """Four colour neurons of one block (planted and natural) rendered again with the default recipe as recorded:
    the dominant colour of each image is the recorded one (images may differ by float rounding across threads)."""
    import clipviz
    from clipviz.visualization.guidance import GUIDED_DEFAULT
    from clipviz.world.reading import dominant_colour

    rows = [
        p
        for p in recorded["recipes"][GUIDED_DEFAULT]["per_neuron"]
        if p["concept"].startswith("colour:") and p["block"] == 2
    ]
    picked = [p for p in rows if p["kind"] == "planted"][:2] + [p for p in rows if p["kind"] == "natural"][:2]
    assert len(picked) == 4
    model = clipviz.load(recorded["model"])
    images = script.render(model, picked, GUIDED_DEFAULT, recorded["steps"], None)
    seen = [dominant_colour(img)["colour"] for img in images]
    assert sum(s == p["dominant"]["colour"] for s, p in zip(seen, picked, strict=True)) >= 3, (seen, picked)
