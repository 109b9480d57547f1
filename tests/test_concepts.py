"""Direct lens and sparse decomposition on CLIPs with planted neurons."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clipviz
from clipviz.analysis.concepts import (
    Vocabulary,
    direct_lens,
    load_vocabulary,
    omp,
    parse_templates,
    sparse_words,
    text_embeddings,
    words_table,
    write_table,
)
from clipviz.errors import ClipvizError

WORDS = ("dog", "cat", "airplane", "banana", "violin", "mountain", "red", "circle", "ocean", "teapot")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPVIZ_CACHE", str(tmp_path / "cache"))


def _plant(model, block: int, neuron: int, direction: torch.Tensor) -> None:
    """Set the neuron's output column so that its direct effect in the joint space is ``direction``."""
    proj = model.backend.projection
    p = proj.matrix().detach().float()  # (E, D)
    d = p.shape[1]
    a = torch.cat([p, torch.full((1, d), 1.0 / d)])  # P c = direction, mean(c) = 0
    b = torch.cat([direction.float(), torch.zeros(1)])
    c = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    gamma = proj.final_norm.weight.detach().float()
    with torch.no_grad():
        model.blocks[block].fc2.weight[:, neuron] = c / gamma


@pytest.mark.parametrize("name", ["clip", "open_clip"])
def test_logit_scale_is_the_native_trained_temperature(tiny, name):
    """Both CLIP backends report exp(logit_scale), read when asked (a changed parameter is seen)."""
    model = clipviz.load(tiny[name][1])
    native = model.native.logit_scale
    assert model.logit_scale == pytest.approx(float(native.exp()))
    with torch.no_grad():
        native.fill_(2.0)
    assert model.logit_scale == pytest.approx(float(torch.tensor(2.0).exp()))


@pytest.mark.parametrize("name", ["clip", "open_clip"])
def test_planted_neuron_ranks_its_word_first(tiny, name):
    model = clipviz.load(tiny[name][1])
    vocab = Vocabulary("test", WORDS)
    text = text_embeddings(model, vocab)
    last = model.n_blocks - 1
    _plant(model, last, 5, text[WORDS.index("violin")])
    _plant(model, 1, 7, text[WORDS.index("banana")] * 3.0)
    table = direct_lens(model, f"blocks.{last}.mlp.hook_post", [5, 6, 9], vocab, top_k=3, embeddings=text)
    assert table[0]["words"][0] == "violin" and table[0]["scores"][0] == pytest.approx(1.0, abs=1e-4)
    for row in table[1:]:  # unplanted neurons: no perfect match
        assert row["scores"][0] < 0.99
    early = direct_lens(model, "blocks.1.mlp.hook_post", [7], vocab, top_k=1, embeddings=text)[0]
    assert early["words"] == ["banana"] and early["scores"][0] == pytest.approx(1.0, abs=1e-4)


def test_text_embeddings_are_cached_and_keyed_by_templates(tiny, tmp_path):
    model = clipviz.load(tiny["open_clip"][1])
    vocab = Vocabulary("test", WORDS)
    first = text_embeddings(model, vocab)
    files = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 1
    assert torch.equal(text_embeddings(model, vocab), first)
    other = text_embeddings(model, Vocabulary("test", WORDS, ("a drawing of a {}.",)))
    assert not torch.allclose(other, first)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2
    expected = F.normalize(model.encode_text([f"a photo of a {w}." for w in WORDS]).float(), dim=-1)
    torch.testing.assert_close(first, expected)


def test_omp_recovers_a_planted_three_word_mixture_exactly():
    torch.manual_seed(0)
    dictionary = F.normalize(torch.randn(300, 64), dim=-1)
    target = 0.6 * dictionary[17] + 0.3 * dictionary[123] - 0.2 * dictionary[250]
    chosen, weights = omp(target, dictionary, k=3)
    recovered = dict(zip(chosen, weights.tolist(), strict=True))
    assert set(recovered) == {17, 123, 250}
    assert recovered[17] == pytest.approx(0.6, abs=1e-5)
    assert recovered[123] == pytest.approx(0.3, abs=1e-5)
    assert recovered[250] == pytest.approx(-0.2, abs=1e-5)


def test_sparse_words_of_a_planted_mixture(tiny):
    model = clipviz.load(tiny["clip"][1])
    vocab = Vocabulary("test", WORDS[:6])
    text = text_embeddings(model, vocab)
    mix = 0.7 * text[0] + 0.4 * text[3] + 0.2 * text[5]
    _plant(model, model.n_blocks - 1, 2, mix)
    words = sparse_words(model, f"blocks.{model.n_blocks - 1}.mlp.hook_post", 2, vocab, k=3, embeddings=text)
    assert [w for w, _ in words] == ["dog", "banana", "mountain"]
    norm = mix.norm()
    assert [round(v * float(norm), 3) for _, v in words] == pytest.approx([0.7, 0.4, 0.2], abs=1e-3)


def test_vocabularies_and_errors(tiny, tmp_path):
    world = load_vocabulary("world")
    assert "a red object" in world.concepts and "an object on the left" in world.concepts
    words = load_vocabulary("words-2k")
    assert len(words.concepts) == 2000 and "water" in words.concepts and "wordfreq" in words.license
    assert not {"the", "and", "with", "which", "their"} & set(words.concepts)  # function words name nothing
    assert load_vocabulary("words-1500").concepts == words.concepts[:1500]
    for bad in ("words-1k5", "words-1.5k", "words-", "words-k", "words-0", "words-٣", "words-2K"):
        with pytest.raises(ClipvizError, match="use words-<N> or words-<N>k"):
            load_vocabulary(bad)
    with pytest.raises(ClipvizError, match="wordfreq lists only"):
        load_vocabulary("words-900k")
    cifar = load_vocabulary("cifar100", parse_templates("ensemble"))
    assert len(cifar.concepts) == 100 and "aquarium fish" in cifar.concepts and len(cifar.templates) == 6
    assert load_vocabulary("cifar10", parse_templates("a sketch of a {}.")).templates == ("a sketch of a {}.",)
    with pytest.raises(ClipvizError, match="each template needs exactly one"):
        parse_templates("no placeholder")
    imagenet = load_vocabulary("imagenet")
    assert len(imagenet.concepts) == 1000 and len(set(imagenet.concepts)) == 1000
    path = tmp_path / "mine.txt"
    path.write_text("zebra\n\ngiraffe\nzebra\n")
    assert load_vocabulary(str(path)).concepts == ("zebra", "giraffe")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ClipvizError, match="is empty: it needs one concept per line"):
        load_vocabulary(str(tmp_path / "empty.txt"))
    with pytest.raises(ClipvizError, match="unknown vocabulary 'nope'"):
        load_vocabulary("nope")
    vit = clipviz.load(tiny["vit"][1])
    with pytest.raises(ClipvizError, match="has no text tower"):
        direct_lens(vit, "blocks.0.mlp.hook_post", [0], Vocabulary("t", WORDS))
    model = clipviz.load(tiny["open_clip"][1])
    with pytest.raises(ClipvizError, match="neuron index 999 out of range"):
        direct_lens(model, "blocks.0.mlp.hook_post", [999], Vocabulary("t", WORDS))


def test_cli_concepts_all_methods_write_tables(tmp_path, capsys):
    import csv

    from clipviz.apps.cli import main

    out = tmp_path / "words"
    hook = "blocks.3.mlp.hook_post"
    assert main(["concepts", "world-clip", "--hook", hook, "--neurons", "0:3", "--top-k", "2", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / hook / "concepts-direct.csv").open()))
    assert len(rows) == 6 and {r["neuron"] for r in rows} == {"0", "1", "2"}
    import pyarrow.parquet as pq

    assert pq.read_table(out / hook / "concepts-direct.parquet").num_rows == 6
    assert (
        main(
            [
                "concepts",
                "world-clip",
                "--hook",
                hook,
                "--neurons",
                "0:2",
                "--method",
                "dissect",
                "--probe",
                "world:150",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert len(list(csv.DictReader((out / hook / "concepts-dissect.csv").open()))) == 2 * 5
    assert (
        main(
            [
                "concepts",
                "world-clip",
                "--hook",
                hook,
                "--neurons",
                "4",
                "--method",
                "visual",
                "--steps",
                "3",
                "--samples",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert len(list(csv.DictReader((out / hook / "concepts-visual.csv").open()))) == 5
    capsys.readouterr()
    assert main(["concepts", "world-clip", "--hook", hook, "--method", "dissect", "--out", str(out)]) == 2
    assert "needs --probe" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert main(["concepts", "world-clip", "--hook", hook, "--vocab", str(empty), "--out", str(out)]) == 2
    assert "is empty" in capsys.readouterr().err


def test_visual_words_names_groups_of_images_by_their_shared_concept():
    """Groups of world images of one colour (standing in for a neuron's visualizations) get that colour's prompt."""
    from clipviz import world
    from clipviz.analysis.concepts import visual_words

    model = clipviz.load("world-clip")
    vocab = Vocabulary("colours", tuple(world.prompt("colour", c) for c in world.COLOURS), ("{}",))
    batch = world.generate(200, seed=11, single_object=True)
    groups = []
    for colour in ("red", "blue", "white"):
        rows = (batch.factors["colour"] == world.FACTORS["colour"].index(colour)).nonzero()[0][:4]
        groups.append(torch.from_numpy(batch.images[rows]).permute(0, 3, 1, 2).float() / 255)
    table = visual_words(model, torch.stack(groups), vocab, top_k=2)
    assert [row["words"][0] for row in table] == ["a red object", "a blue object", "a white object"]


def test_visual_words_contrast_removes_a_hub_every_visualization_resembles():
    """Known answer: every group's embedding is a shared look (the hub) plus a little of its own concept. By cosine
    every group reads as the hub; against the population of groups each reads as its own concept, and one group
    alone (no population) keeps the cosine reading."""
    from clipviz.analysis.concepts import visual_words

    basis = torch.eye(4)  # concept 0 is the hub; groups 1-3 each carry a bit of concepts 1-3

    class Labeller:
        def encode_image(self, images):  # (groups * samples, 3, H, W) -> the embeddings chosen below
            return torch.stack([basis[0] + 0.3 * basis[int(img[0, 0, 0])] for img in images])

    groups = torch.stack([torch.full((2, 3, 4, 4), float(c)) for c in (1, 2, 3)])
    vocab = Vocabulary("planted", ("hub", "one", "two", "three"), ("{}",))
    plain = visual_words(Labeller(), groups, vocab, top_k=1, embeddings=basis, contrast=False)
    assert [row["words"][0] for row in plain] == ["hub"] * 3
    contrasted = visual_words(Labeller(), groups, vocab, top_k=1, embeddings=basis)
    assert [row["words"][0] for row in contrasted] == ["one", "two", "three"]
    alone = visual_words(Labeller(), groups[:1], vocab, top_k=1, embeddings=basis)
    assert alone[0]["words"] == ["hub"]


def test_dissect_reuses_the_activation_matrix_stored_by_examples(tmp_path, capsys):
    """The stored matrix is the probe activations (to float16), and dissect on it equals SoftWPMI on it."""
    import pyarrow.parquet as pq

    from clipviz.analysis.concepts import text_embeddings
    from clipviz.analysis.dissect import (
        image_text_similarities,
        labeller_a,
        layer_softwpmi,
        probe_activations,
        random_prior,
        softwpmi,
        stored_activations,
    )
    from clipviz.apps.cli import main
    from clipviz.data import open_source

    hook = "blocks.2.mlp.hook_post"
    assert (
        main(
            [
                "examples",
                "world-clip",
                "--hook",
                hook,
                "--neurons",
                "0:6",
                "--dataset",
                "world:150",
                "--save-activations",
                "--workers",
                "0",
                "--out",
                str(tmp_path / "ex"),
            ]
        )
        == 0
    )
    model = clipviz.load("world-clip")
    source = open_source("world:150")
    fresh, kept = probe_activations(model, hook, source, [1, 4])
    stored = stored_activations(tmp_path / "ex", hook, [1, 4])
    acts, stored_kept, probe, neurons = stored.activations, stored.indices, stored.source, stored.neurons
    assert probe == "world:150" and neurons == [1, 4] and stored_kept == kept
    torch.testing.assert_close(acts, fresh.half().float())
    assert (
        main(
            [
                "concepts",
                "world-clip",
                "--hook",
                hook,
                "--method",
                "dissect",
                "--activations",
                str(tmp_path / "ex"),
                "--neurons",
                "1,4",
                "--top-k",
                "3",
                "--out",
                str(tmp_path / "w"),
            ]
        )
        == 0
    )
    rows = pq.read_table(tmp_path / "w" / hook / "concepts-dissect.parquet").to_pylist()
    vocab = load_vocabulary("world")
    sims = image_text_similarities(model, source, kept, text_embeddings(model, vocab))
    # the stored neurons are a part of the layer, yet the prior is the whole layer's (the layer's top sets are
    # kept beside them): the words and scores are those of the probe path, which runs every neuron of the layer
    whole, _ = probe_activations(model, hook, source, None)
    whole = whole.clone()
    whole[:, [1, 4]] = acts.to(whole)  # the named neurons as they were stored (float16)
    width = model.hook_width(hook)
    scores = layer_softwpmi(whole, list(range(width)), [1, 4], width, sims, a=labeller_a(model))
    expected = scores.topk(3, dim=1)
    assert [r["word"] for r in rows] == [vocab.concepts[int(i)] for i in expected.indices.flatten()]
    torch.testing.assert_close(torch.tensor([r["score"] for r in rows]), expected.values.flatten(), atol=0.05, rtol=0)
    random_set = softwpmi(acts, sims, a=labeller_a(model), prior=random_prior(sims, a=labeller_a(model)))
    assert not torch.allclose(random_set.topk(3, dim=1).values, expected.values, atol=0.05)  # the prior matters
    capsys.readouterr()
    assert (
        main(
            [
                "concepts",
                "world-clip",
                "--hook",
                hook,
                "--method",
                "dissect",
                "--activations",
                str(tmp_path / "ex"),
                "--neurons",
                "7",
                "--out",
                str(tmp_path / "w"),
            ]
        )
        == 2
    )
    assert "neuron 7 has no stored activations" in capsys.readouterr().err
    assert (
        main(
            [
                "examples",
                "world-clip",
                "--hook",
                hook,
                "--neurons",
                "0:2",
                "--dataset",
                "world:40",
                "--out",
                str(tmp_path / "plain"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "concepts",
                "world-clip",
                "--hook",
                hook,
                "--method",
                "dissect",
                "--activations",
                str(tmp_path / "plain"),
                "--out",
                str(tmp_path / "w"),
            ]
        )
        == 2
    )
    assert "kept no activation matrix" in capsys.readouterr().err


def test_concepts_the_tokenizer_cannot_tell_apart_are_ranked_once(tmp_path, capsys):
    """'Red', 'RED' and 'red' are one text to world-clip's lower-casing tokenizer: one embedding, so they would tie
    on every score and fill three places of a top-3. They are kept once, by their first spelling, with a warning."""
    import csv

    from clipviz.analysis.concepts import merge_same_text
    from clipviz.apps.cli import main

    model = clipviz.load("world-clip")
    vocab = Vocabulary("mine", ("Red", "a blue object", "red", "RED", "a  blue   object", "green"), ("{}",))
    with pytest.warns(UserWarning, match=r"3 concepts read as the same text.*'red', 'RED' as 'Red'"):
        assert merge_same_text(model, vocab).concepts == ("Red", "a blue object", "green")
    assert merge_same_text(model, load_vocabulary("world")) == load_vocabulary("world")  # nothing to merge: as is
    mine = tmp_path / "mine.txt"
    mine.write_text("Red\nred\nblue\nRED\ngreen\n")
    out, hook = tmp_path / "words", "blocks.3.mlp.hook_post"
    args = ["concepts", "world-clip", "--hook", hook, "--neurons", "0:4", "--vocab", str(mine), "--out", str(out)]
    args += ["--templates", "a {} object"]
    assert main([*args, "--top-k", "3"]) == 0
    rows = list(csv.DictReader((out / hook / "concepts-direct.csv").open()))
    assert {r["word"] for r in rows} == {"Red", "blue", "green"} and len(rows) == 4 * 3
    assert "kept once" in capsys.readouterr().err
    assert main([*args, "--top-k", "4"]) == 2
    assert "larger than the 3 concepts of vocabulary 'mine' that the model's tokenizer tells apart" in (
        capsys.readouterr().err
    )


def test_a_tie_at_the_top_is_counted_written_and_shown(tmp_path, capsys):
    """Two concepts whose scores differ by float noise (as CLIP-Dissect's do at their log(width) ceiling) are one
    score: the table says how many share it, lists them in the vocabulary's order, writes the count with every row,
    and the atlas says the first word is one of equals."""
    import csv

    from clipviz.apps.atlas import build_atlas

    concepts = ["a blue object", "a blue object at the top", "a red object", "a star"]
    scores = torch.tensor(
        [
            [6.2383, 6.2383 + 3e-7, 1.0, 0.5],  # a tie: noise put the second concept first
            [0.3, 0.1, 0.9, 0.89],  # 0.01 apart: two scores, no tie
        ]
    )
    table = words_table(scores, concepts, 3, neurons=[5, 6])
    assert table[0]["words"] == ["a blue object", "a blue object at the top", "a red object"]
    assert (
        table[0]["tied"] == 2
        and table[1]["tied"] == 1
        and table[1]["words"] == ["a red object", "a star", "a blue object"]
    )
    model = clipviz.load("world-clip")
    vocab = Vocabulary("mine", tuple(concepts))
    write_table(tmp_path / "con", "blocks.3.mlp.hook_post", table, "dissect", vocab, identity=model.identity())
    rows = list(csv.DictReader((tmp_path / "con" / "blocks.3.mlp.hook_post" / "concepts-dissect.csv").open()))
    assert [(r["neuron"], r["tied"]) for r in rows] == [("5", "2")] * 3 + [("6", "1")] * 3
    site = build_atlas(tmp_path / "con", tmp_path / "site")
    assert "2 concepts share the top score" in (site / "neurons" / "blocks.3.mlp.hook_post" / "5.html").read_text()
    assert "share the top score" not in (site / "neurons" / "blocks.3.mlp.hook_post" / "6.html").read_text()


def test_visual_words_of_a_neuron_do_not_depend_on_who_is_named_with_it(tmp_path):
    """The visual method's population is a fixed set of the layer's neurons: neuron 4's words are the same named
    alone, with neuron 5, or with three others."""
    import csv

    from clipviz.apps.cli import main

    hook = "blocks.3.mlp.hook_post"

    def words(neurons: str) -> tuple[list[str], list[float]]:
        out = tmp_path / neurons.replace(",", "_")
        args = ["concepts", "world-clip", "--hook", hook, "--neurons", neurons, "--method", "visual"]
        assert main([*args, "--steps", "3", "--samples", "1", "--recipe", "default", "--out", str(out)]) == 0
        rows = [r for r in csv.DictReader((out / hook / "concepts-visual.csv").open()) if r["neuron"] == "4"]
        return [r["word"] for r in rows], [float(r["score"]) for r in rows]

    alone, scores = words("4")
    assert len(alone) == 5
    for others in ("4,5", "4,100,200,300"):  # other batches: the same images up to float rounding
        named, again = words(others)
        assert named == alone and again == pytest.approx(scores, abs=1e-3)


def test_words_the_text_tower_never_learned_are_left_out_or_refused(tmp_path, capsys):
    """world-clip's text tower learned the world's 60 words; every other token's embedding is initialisation noise,
    yet it can outrank every trained concept. Such concepts are left out with a warning, a template with such a word
    or a vocabulary of nothing else is refused, and the library refuses to embed them."""
    from clipviz.analysis.concepts import known_words_only
    from clipviz.apps.cli import main

    model = clipviz.load("world-clip")
    vocab = Vocabulary("mine", ("a red object", "a zebra", "a blue giraffe", "a circle"), ("{}",))
    with pytest.warns(UserWarning, match=r"2 concepts left out.*'a zebra' \(zebra\), 'a blue giraffe' \(giraffe\)"):
        assert known_words_only(model, vocab).concepts == ("a red object", "a circle")
    with pytest.raises(ClipvizError, match="never trained on.*known_words_only"):
        text_embeddings(model, vocab)
    with pytest.raises(ClipvizError, match="template 'a photo of a {}.' uses 'photo', '.'"):
        known_words_only(model, load_vocabulary("world", ("a photo of a {}.",)))
    assert known_words_only(model, load_vocabulary("world")) == load_vocabulary("world")
    hook = "blocks.3.mlp.hook_post"
    args = ["concepts", "world-clip", "--hook", hook, "--neurons", "0:2", "--out", str(tmp_path / "w")]
    assert main([*args, "--vocab", "cifar10"]) == 2
    assert "template 'a photo of a {}.' uses 'photo'" in capsys.readouterr().err
    assert main([*args, "--vocab", "cifar10", "--templates", "{}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "every concept uses words world-clip's text tower was never trained on" in err
    mine = tmp_path / "mine.txt"
    mine.write_text("red\nzebra\nblue\n")
    assert main([*args, "--vocab", str(mine), "--templates", "a {} object", "--top-k", "2"]) == 0
    assert "1 concepts left out" in capsys.readouterr().err
    assert "zebra" not in (tmp_path / "w" / hook / "concepts-direct.csv").read_text()
