"""Concept neurons planted by training: labels, prompts, the loss, and the shipped model's planted neurons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

import clipviz
from clipviz import world
from clipviz.world.groundtruth import HELDOUT_SEED, bundled_selectivity
from clipviz.world.planting import (
    Plant,
    PlantLoss,
    concept_labels,
    concept_prompt,
    parse_concept,
    planted_auroc,
    prompt_loss,
    prompt_targets,
)


def test_conjunction_labels_are_the_and_of_their_terms():
    b = world.generate(300, seed=3)
    labels = concept_labels(["colour:red", "position:left", "colour:red&position:left"], b.factors)
    assert torch.equal(labels[:, 2], labels[:, 0] & labels[:, 1])
    assert int(labels[:, 2].sum()) > 0
    with pytest.raises(ValueError, match="unknown concept"):
        parse_concept("colour:teal")
    with pytest.raises(ValueError, match="each family once"):
        parse_concept("colour:red&colour:blue")


def test_concept_prompts_are_the_worlds_captions():
    assert concept_prompt("colour:red") == world.prompt("colour", "red") == "a red object"
    assert concept_prompt("colour:red&position:left") == "a red object on the left"
    assert concept_prompt("colour:yellow&size:large") == "a large yellow object"
    assert concept_prompt("colour:red&shape:circle") == "a red circle"
    assert concept_prompt("colour:orange&position:center") == "an orange object in the center"
    vocab = set(world.vocabulary())
    for text in ("a red object on the left", "a large yellow object", "an orange object in the center"):
        assert set(text.split()) <= vocab


def test_plant_loss_trains_a_neuron_of_a_tiny_clip_into_a_detector():
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16),
        text_cfg=dict(width=32, heads=2, layers=1),
    )
    plan = [Plant(1, 5, "colour:red")]
    loss_fn = PlantLoss(plan)
    loss_fn.attach(model)
    opt = torch.optim.Adam([*model.visual.parameters(), *loss_fn.parameters()], lr=3e-3)
    losses = []
    for step in range(40):
        b = world.generate(64, seed=step, size=32)
        x = (torch.from_numpy(b.images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
        model.encode_image(x)
        loss = loss_fn(concept_labels(["colour:red"], b.factors))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[:5]) > 0.6 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    loss_fn.detach_hooks()
    assert not model.visual.transformer.resblocks[1].mlp.gelu._forward_hooks


def test_prompt_loss_is_the_zero_shot_cross_entropy():
    b = world.generate(40, seed=1)
    prompts, rows, target = prompt_targets(b.factors)
    assert len(prompts) == sum(len(v) for f, v in world.FACTORS.items() if f != "count")
    assert all(int(b.factors["count"][r]) == 0 for r in rows)
    # an image embedding equal to its true prompts' sum gets a lower loss than a random one
    text = torch.randn(len(prompts), 8)
    good = torch.stack([text[t].sum(0) for t in target])
    image = torch.zeros(40, 8)
    image[rows] = good
    assert prompt_loss(image, text, torch.tensor(10.0), rows, target) < prompt_loss(
        torch.randn(40, 8), text, torch.tensor(10.0), rows, target
    )


SHIPPED = Path(clipviz.bundled_models()["world-clip"])


def _planted():
    return bundled_selectivity().planted or []


def test_shipped_ground_truth_records_the_plan():
    planted = _planted()
    meta = json.loads((SHIPPED / "ground_truth.json").read_text())
    assert meta["planted"] == planted
    per_block = {b: sum(p["block"] == b for p in planted) for b in (1, 2, 3)}
    assert all(12 <= n <= 32 for n in per_block.values()), per_block  # v3's closed plan: 27, 19 and 16
    known = bundled_selectivity().known()
    families = {f for p in known for f, _ in parse_concept(p["concept"])}
    assert {"colour", "shape", "position", "size", "background", "texture", "count"} <= families
    assert sum("&" in p["concept"] for p in known) >= 4
    # 58 of the 62 reached 0.98 (docs/validation.md says which did not, and why); only those are known answers
    assert len(known) >= 58 and all(p["auroc"] >= 0.98 for p in known)
    assert sum("&" in p["concept"] for p in known) >= 16  # the conjunctions, planted in every block of a factor


def test_planted_neurons_of_the_shipped_model_detect_their_concepts_on_new_held_out_images():
    model = clipviz.load("world-clip")
    known = bundled_selectivity().known()
    plan = [Plant(p["block"], p["neuron"], p["concept"]) for p in known]
    fresh = planted_auroc(model, plan, n=1000, seed=HELDOUT_SEED + 21)
    # 0.98 is the ground truth's bar on its 3000 images; on 1000 others an AUROC of 0.98 has a standard error of
    # about 0.008 (a third of the images carry a background), so a known answer may read 0.97 here, no lower
    low = [(f["concept"], f["auroc"]) for f in fresh if f["auroc"] < 0.97]
    assert not low, low
    assert float(np.median([f["auroc"] for f in fresh])) >= 0.995
