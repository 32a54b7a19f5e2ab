"""What one process of a multi-process run (`accelerate launch`, torchrun) does differently from a lone one.

The rule that keeps a run with N processes equal to a run with one (within float tolerance, tested): every
process draws the same *global* batch from the same seeded streams, keeps its own contiguous block of rows
(:meth:`Processes.rows`), and takes its random numbers as that block of the whole batch's numbers
(`cola.model.sampling.BatchRows`). Gradients are averaged over processes after the backward pass, so a
process's loss is the mean over its rows and the average is the global batch's mean when the blocks are
equal. Metrics are averaged too (token counts summed); only the main process logs, writes checkpoints and
files. Because the streams are global, a checkpoint written with one process count resumes with another.

Gradients are all-reduced here rather than by wrapping the model in DDP: the losses call the model's pieces
(`base_hidden`, `policy_logits`, ...) rather than its `forward`, which DDP's hooks would not see.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist
from accelerate import Accelerator

from cola.errors import ColaError

__all__ = ["Processes"]


class Processes:
    """This process's place in the run: rank, world size, and the collective operations the trainers use."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.is_main = accelerator.is_main_process

    def rows(self, total: int, what: str = "batch") -> tuple[int, int]:
        """This process's block ``start, stop`` of a global batch of `total` rows (equal blocks)."""
        if total % self.world:
            raise ColaError(f"a {what} of {total} rows cannot be split evenly over {self.world} processes; "
                            f"make it a multiple of {self.world}")
        size = total // self.world
        return self.rank * size, (self.rank + 1) * size

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over processes (one flat all-reduce)."""
        if self.world == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def share(self, count: float) -> float:
        """This process's `count` (tokens, steps) over the mean count per process: 1 with one process. A loss
        that is a mean over this process's `count` items, times its share, averages over processes to the
        mean over all items of the global batch."""
        if self.world == 1:
            return 1.0
        total = self.reduce({"n": float(count)}, summed=("n",))["n"]
        return float(count) * self.world / max(total, 1.0)

    def reduce(self, metrics: Mapping[str, float], summed: Iterable[str] = ()) -> dict[str, float]:
        """Metrics averaged over processes (the keys in `summed` are added up instead)."""
        if self.world == 1:
            return dict(metrics)
        keys = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64,
                              device=self.accelerator.device)
        dist.all_reduce(values)
        summed = set(summed)
        return {k: v if k in summed else v / self.world for k, v in zip(keys, values.tolist(), strict=True)}

    def gather(self, tensor: torch.Tensor, pad_value: float = 0) -> torch.Tensor:
        """Every process's rows, in rank order (the global batch); dimension 1 is padded to the longest."""
        if self.world == 1:
            return tensor
        if tensor.ndim > 1:
            tensor = self.accelerator.pad_across_processes(tensor, dim=1, pad_index=pad_value)
        return self.accelerator.gather(tensor.contiguous())

    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()
