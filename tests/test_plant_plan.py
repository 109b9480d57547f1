"""The planting plan gives every planted conjunction's factors a detector in its block (scripts/plant_world_clip.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from script_loader import loaded_script

from clipviz.world.groundtruth import bundled_selectivity

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    with loaded_script("plant_world_clip") as module:
        yield module


def test_factor_detectors_names_only_the_missing_factors(script):
    concepts = ["position:top", "colour:blue&position:top", "colour:red&position:left", "colour:blue&size:large"]
    natural = [(3, "colour", "red", 0.96), (4, "position", "left", 0.94), (5, "size", "large", 0.99)]
    # top is planted, red and large have clear natural detectors; left's is not clear (0.94 < 0.95); blue once
    assert script.factor_detectors(concepts, natural) == ["colour:blue", "position:left"]
    assert script.factor_detectors(["colour:red", "shape:star"], []) == []  # no conjunction, nothing to add


def test_refinement_detectors_are_the_plans_conjunctions_that_contain_a_factor_of_the_block(script):
    block = ["colour:red", "position:left", "colour:red&position:left", "shape:star"]
    every = [
        "colour:red&position:left",
        "colour:red&shape:circle",
        "colour:blue&position:top",
        "size:small&colour:white",
    ]
    # red&left is planted in the block already; red circle contains red; blue & top and white & small nothing here
    assert script.refinement_detectors(block, every) == ["colour:red&shape:circle"]
    assert script.refinement_detectors(["colour:red&position:left"], every) == []  # a conjunction alone: no factor


def test_closed_detectors_reach_the_fixed_point_of_both_rules(script):
    every = [
        "colour:red&position:left",
        "colour:blue&position:left",
        "colour:blue&shape:star",
        "colour:green&size:small",
    ]
    natural = [(9, "shape", "star", 0.99)]
    added = script.closed_detectors(["colour:red"], every, natural)
    # red -> red & left -> left -> blue & left -> blue -> blue & star (star: the block's natural detector); never
    # green & small, which shares no factor with the chain
    assert added == [
        "colour:red&position:left",
        "position:left",
        "colour:blue&position:left",
        "colour:blue",
        "colour:blue&shape:star",
    ]
    closed = ["colour:red", *added]
    assert script.factor_detectors(closed, natural) == []  # closed under both rules
    assert script.refinement_detectors(closed, every) == []
    assert script.closed_detectors(closed, every, natural) == []
    one_step = script.refinement_detectors(["colour:red"], every)
    assert one_step == ["colour:red&position:left"]  # --refinements alone stops after the first step


def test_clip_dissect_separates_a_conjunction_from_its_factors_only_where_the_layer_detects_each_factor():
    """Why the plan adds factor detectors, on a known-answer layer: one blue & top detector among 63 noise neurons
    scores blue, top and blue & top alike at SoftWPMI's ``log(width)`` ceiling (v2's blue & top and purple & bottom
    did, docs/validation.md); a blue detector removes blue from the tie, a top detector as well names the neuron."""
    from clipviz.analysis.concepts import words_table
    from clipviz.analysis.dissect import CEILING_TIE, softwpmi

    g = torch.Generator().manual_seed(0)
    n = 4000
    blue, top = torch.rand(n, generator=g) < 0.5, torch.rand(n, generator=g) < 0.5
    concepts = ["blue", "red", "top", "bottom", "blue&top"]
    holds = torch.stack([blue, ~blue, top, ~top, blue & top], dim=1).float()
    sims = 0.1 + 0.3 * holds + 0.15 * holds[:, 4:] * torch.tensor([0, 0, 0, 0, 1.0])  # the conjunction fits best
    sims = sims + 0.02 * torch.randn(n, 5, generator=g)

    def detector(hit: torch.Tensor) -> torch.Tensor:
        return (hit.float() + 0.1 * torch.randn(n, generator=g))[:, None]

    conjunction, noise = detector(blue & top), torch.randn(n, 63, generator=g)
    layers = {
        "none": [conjunction, noise],
        "blue": [conjunction, noise, detector(blue)],
        "both": [conjunction, noise, detector(blue), detector(top)],
    }
    rows = {
        name: words_table(softwpmi(torch.cat(parts, 1), sims, a=3.88), concepts, 5, tolerance=CEILING_TIE)
        for name, parts in layers.items()
    }
    tied = {name: set(r[0]["words"][: r[0]["tied"]]) for name, r in rows.items()}
    assert tied["none"] == {"blue", "top", "blue&top"}
    assert tied["blue"] == {"top", "blue&top"}
    assert tied["both"] == {"blue&top"}
    assert [r["words"][0] for r in rows["both"][-2:]] == ["blue", "top"]  # the detectors are named too


def test_keep_holds_an_earlier_plan_and_adds_the_missing_factor_detectors(script, tmp_path, monkeypatch):
    shipped = json.loads((ROOT / "scripts" / "world_clip_plan.json").read_text())["planted"]
    earlier = [r for r in shipped if r["concept"] in script.CONCEPTS_BY_BLOCK[r["block"]]]
    (tmp_path / "earlier.json").write_text(json.dumps({"model": "world-clip", "planted": earlier}))
    out = tmp_path / "plan.json"
    argv = ["plant_world_clip.py", "--keep", str(tmp_path / "earlier.json"), "--n", "400", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    plan = json.loads(out.read_text())["planted"]
    assert [r for r in plan if r in earlier] == earlier  # kept verbatim, in order
    truth = bundled_selectivity()
    for block, concepts in script.CONCEPTS_BY_BLOCK.items():
        natural = truth.natural_clear(f"blocks.{block}.mlp.hook_post", threshold=script.CLEAR)
        added = [r for r in plan if r["block"] == block and r not in earlier]
        assert [r["concept"] for r in added] == script.factor_detectors(concepts, natural)
        neurons = [r["neuron"] for r in plan if r["block"] == block]
        assert len(set(neurons)) == len(neurons)  # each neuron planted once


def test_closed_plans_every_block_closed_under_both_rules(script, tmp_path, monkeypatch):
    out = tmp_path / "plan.json"
    monkeypatch.setattr(sys, "argv", ["plant_world_clip.py", "--closed", "--n", "400", "--out", str(out)])
    script.main()
    plan = json.loads(out.read_text())["planted"]
    every = [c for concepts in script.CONCEPTS_BY_BLOCK.values() for c in concepts if "&" in c]
    truth = bundled_selectivity()
    for block, listed in script.CONCEPTS_BY_BLOCK.items():
        natural = truth.natural_clear(f"blocks.{block}.mlp.hook_post", threshold=script.CLEAR)
        concepts = [r["concept"] for r in plan if r["block"] == block]
        assert concepts[: len(listed)] == listed
        assert script.factor_detectors(concepts, natural) == []
        assert script.refinement_detectors(concepts, every) == []
        neurons = [r["neuron"] for r in plan if r["block"] == block]
        assert len(set(neurons)) == len(neurons)
    assert {r["concept"] for r in plan if r["block"] == 1} >= {"position:left", "colour:red&position:left"}


@pytest.mark.parametrize(
    "text, why",
    [
        (None, "FileNotFoundError"),
        ("{not json", "JSONDecodeError"),
        ('{"planted": [{"block": 1, "neuron": 3, "concept": "colour:mauve"}]}', "unknown concept term 'colour:mauve'"),
        ('{"planted": [{"block": 1, "neuron": 3}]}', "KeyError"),
    ],
)
def test_keep_refuses_an_unreadable_plan_in_one_line(script, tmp_path, monkeypatch, capsys, text, why):
    plan = tmp_path / "earlier.json"
    if text is not None:
        plan.write_text(text)
    monkeypatch.setattr(sys, "argv", ["plant_world_clip.py", "--keep", str(plan), "--out", str(tmp_path / "p.json")])
    with pytest.raises(SystemExit) as stop:
        script.main()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and err.startswith(f"plant_world_clip.py: error: --keep {plan}: not a readable plan")
    assert why in err and not (tmp_path / "p.json").exists()
