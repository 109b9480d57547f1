"""SoftWPMI on a synthetic probe set of concept bags: neurons that fire on one concept each are named right."""

from __future__ import annotations

import pytest
import torch

from clipviz.dissect import softwpmi
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
