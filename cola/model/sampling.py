"""Random draws that do not depend on how a batch is split: sampling, random actions and Gumbel noise.

Every random choice of training and decoding goes through :func:`uniform`. Its source is a seeded
``torch.Generator``, a :class:`BatchRows`: rows ``start:stop`` of a batch of ``total`` rows, or
:class:`RowStreams`: one generator per row. A `BatchRows` draws the *whole* batch's numbers and keeps its own
rows, so a batch split across processes (or into micro-batches) sees exactly the numbers it would see in one
piece, and a multi-process run reproduces a single-process one (`cola.train.distributed`); the extra draws
cost one uniform per row and step for sampling, far below a forward pass. `RowStreams` serves batches whose
rows come and go (the episodes of a text game still running at a turn): a row's numbers depend on nothing
but its own stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["BatchRows", "NoiseSource", "RowStreams", "sample_top_k", "uniform"]


@dataclass(frozen=True)
class BatchRows:
    """Rows ``start:stop`` of a batch of ``total`` rows whose random numbers come from ``generator``."""

    generator: torch.Generator
    start: int
    stop: int
    total: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.stop <= self.total:
            raise ValueError(f"rows {self.start}:{self.stop} are not inside a batch of {self.total}")

    def shifted(self, start: int, stop: int) -> BatchRows:
        """Rows ``start:stop`` of this slice (a micro-batch of a process's shard), in batch coordinates."""
        return BatchRows(self.generator, self.start + start, self.start + stop, self.total)


@dataclass(frozen=True)
class RowStreams:
    """Row r of a batch draws its numbers from ``generators[r]`` alone."""

    generators: tuple[torch.Generator, ...]


NoiseSource = torch.Generator | BatchRows | RowStreams | None


def uniform(shape: tuple[int, ...], source: NoiseSource, device: torch.device | str = "cpu",
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U[0, 1) numbers of `shape`; with a `BatchRows` or `RowStreams` source, `shape[0]` must be its row
    count."""
    if isinstance(source, RowStreams):
        if shape[0] != len(source.generators):
            raise ValueError(f"asked for {shape[0]} rows of noise from {len(source.generators)} streams")
        rows = [torch.rand(shape[1:], generator=g, dtype=dtype) for g in source.generators]
        return torch.stack(rows).to(device)
    if not isinstance(source, BatchRows):
        if source is None:
            return torch.rand(shape, device=device, dtype=dtype)
        # Drawn where the generator lives (a seeded CPU stream), then moved: the same numbers on any device.
        return torch.rand(shape, generator=source, dtype=dtype, device=source.device).to(device)
    rows = source.stop - source.start
    if shape[0] != rows:
        raise ValueError(f"asked for {shape[0]} rows of noise from a slice of {rows}")
    whole = torch.rand((source.total, *shape[1:]), generator=source.generator, dtype=dtype)
    return whole[source.start : source.stop].to(device)


def sample_top_k(logits: torch.Tensor, top_k: int | None, temperature: float,
                 source: NoiseSource) -> torch.Tensor:
    """One sample per row of softmax(logits / temperature) truncated to the top k (None or 0: no cut).

    Inverse-CDF sampling: one uniform per row. ``torch.multinomial`` draws one exponential per vocabulary
    entry, which on CPU costs more than the tiny model's whole decoding step, and cannot be split by rows.
    """
    logits = logits.float() / max(temperature, 1e-6)
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)
    u = uniform((logits.shape[0], 1), source, logits.device) * cdf[:, -1:]
    # The first index whose cdf exceeds u; a zero-probability entry never does (its cdf equals its
    # predecessor's), so truncated entries cannot be drawn.
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)
