"""SoftWPMI on a synthetic probe set of concept bags: neurons that fire on one concept each are named right."""

from __future__ import annotations

import pytest
import torch

from clipviz.analysis.dissect import softwpmi
from clipviz.errors import ClipvizError


def _bags(n_images: int = 2000, n_concepts: int = 40, per_image: int = 3, seed: int = 0):
    """Each image holds ``per_image`` random concepts; its cosine with a concept's text is higher when it holds it;
    neuron c fires (noisily) on the images that hold concept c."""
    g = torch.Generator().manual_seed(seed)
    holds = torch.zeros(n_images, n_concepts, dtype=torch.bool)
    for i in range(n_images):
        holds[i, torch.randperm(n_concepts, generator=g)[:per_image]] = True
    sims = 0.18 + 0.06 * holds.float() + 0.02 * torch.randn(n_images, n_concepts, generator=g)
    acts = holds.float() + 0.5 * torch.randn(n_images, n_concepts, generator=g)
    return acts, sims


def test_softwpmi_names_concept_neurons():
    acts, sims = _bags()
    scores = softwpmi(acts, sims)
    accuracy = (scores.argmax(dim=1) == torch.arange(acts.shape[1])).float().mean()
    assert accuracy >= 0.95


def test_single_neuron_gets_non_degenerate_scores():
    acts, sims = _bags()
    for c in (3, 17):
        scores = softwpmi(acts[:, c : c + 1], sims)[0]
        assert scores.std() > 0.1
        assert int(scores.argmax()) == c


def test_the_population_prior_is_the_mean_conditional():
    acts, sims = _bags(n_images=300, n_concepts=10)
    flat = softwpmi(acts, sims, lam=0.0)  # log p(c|E)
    scored = softwpmi(acts, sims)
    prior = torch.logsumexp(flat.double(), 0) - torch.log(torch.tensor(10.0, dtype=torch.float64))
    torch.testing.assert_close(scored, (flat.double() - prior).float(), rtol=1e-5, atol=1e-4)


def test_shape_errors():
    with pytest.raises(ClipvizError, match="must share the image axis"):
        softwpmi(torch.zeros(5, 2), torch.zeros(4, 3))
    with pytest.raises(ClipvizError, match="must not be empty"):
        softwpmi(torch.zeros(5, 2), torch.zeros(5, 0))


def test_a_neurons_words_do_not_depend_on_the_neurons_named_with_it():
    """Found from outside (2026-12-02): two neurons asked for became the whole population of the prior, and every
    score collapsed to log 2. The layer's prior is used however few of its neurons are named."""
    from clipviz.analysis.dissect import layer_softwpmi

    acts, sims = _bags(n_images=600, n_concepts=12)
    columns, width = list(range(12)), 12
    whole = layer_softwpmi(acts, columns, list(range(12)), width, sims, a=10.0)
    for asked in ([3], [3, 7], [7, 3, 0]):
        scores = layer_softwpmi(acts, columns, asked, width, sims, a=10.0)
        torch.testing.assert_close(scores, whole[asked])
    pair = layer_softwpmi(acts, columns, [3, 7], width, sims, a=10.0)
    assert pair[0].std() > 0.1 and int(pair[0].argmax()) == 3
    # a part of the layer with every neuron's top images (what examples --save-activations keeps): the layer's prior
    top = acts.topk(100, dim=0).indices.T
    torch.testing.assert_close(
        layer_softwpmi(acts[:, [3, 5]], [3, 5], [3], width, sims, a=10.0, layer_top=top), whole[[3]]
    )
    # a part of the layer only (stored by an older clipviz): the random-set prior, still independent
    part = layer_softwpmi(acts[:, :6], columns[:6], [3], width, sims, a=10.0)
    torch.testing.assert_close(part, layer_softwpmi(acts[:, :6], columns[:6], [3, 5], width, sims, a=10.0)[:1])
    with pytest.raises(ClipvizError, match="no activations for neurons"):
        layer_softwpmi(acts[:, :6], columns[:6], [9], width, sims, a=10.0)


def test_the_concepts_command_names_a_neuron_alike_alone_or_beside_others(tmp_path):
    import csv

    from clipviz.apps.cli import main

    hook, words = "blocks.1.mlp.hook_post", {}
    for asked in ("242", "242,452"):
        out = tmp_path / asked.replace(",", "-")
        common = ["--method", "dissect", "--probe", "world:300", "--neurons", asked, "--top-k", "3"]
        assert main(["concepts", "world-clip", "--hook", hook, *common, "--out", str(out)]) == 0
        with open(out / hook / "concepts-dissect.csv") as table:
            words[asked] = [(r["word"], float(r["score"])) for r in csv.DictReader(table) if r["neuron"] == "242"]
    assert words["242"] == words["242,452"] and words["242"][0][0] == "a red object"
    assert words["242"][0][1] - words["242"][1][1] > 1.0  # a clear winner, not the tie of a two-neuron prior
