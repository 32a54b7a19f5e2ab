"""MCTS-Q's sections: `qlearn` (the Q-network, by double DQN on the RL policy's rollouts, spec §3 5a) and
`mcts` (the search against best-of-n at equal budget, spec §3 5b)."""

from __future__ import annotations

from dataclasses import dataclass

from cola.config.fields import override, param
from cola.config.training import OptimConfig


@dataclass
class QLearnConfig(OptimConfig):
    """Double DQN on best-of-n CoLA rollouts of the training problems, rewarded by the task's verifier.

    Overrides of the training core's defaults: lr 1e-4 (the paper: 5e-6 on an 8B base), weight_decay 0,
    warmup 10, log_every 10.
    """

    samples_per_prompt: int = param(16, "Rollouts per training problem (the paper: best-of-16).", min=1)
    n_prompts: int = param(256, "Training problems rolled out (the first N of the task's train split).",
                           min=1)
    heldout_prompts: int = param(32, "Validation problems whose rollouts measure the Q-values' calibration.",
                                 min=1)
    batch_size: int = param(32, "Rollouts per optimizer step.", min=1)
    gamma: float = param(0.99, "Discount γ of the TD target (the paper's).", min=0, max=1)
    target_sync: int = param(50, "Copy the online network into the target network every N steps (the "
                                 "paper: every 50 micro-steps).", min=1)
    action_top_k: int = param(40, "Top-k of the policy's action sampling in the rollouts.", min=1)
    seed: int = param(0, "Seed of the rollouts and the minibatches.")
    steps: int = override(OptimConfig, "steps", 200)
    lr: float = override(OptimConfig, "lr", 1e-4)
    weight_decay: float = override(OptimConfig, "weight_decay", 0.0)
    warmup_steps: int = override(OptimConfig, "warmup_steps", 10)
    log_every: int = override(OptimConfig, "log_every", 10)


@dataclass
class SearchConfig:
    """One search's budget and knobs (defaults: the authors' `_mcts` script, cola-spec.md §3 stage 5b)."""

    rounds: int = param(128, "Search rounds: each selects a node and adds one child.", min=1)
    root_children: int = param(4, "b1: children of the root (the policy's top-b1 actions).", min=1)
    children: int = param(2, "b2: children of every other node.", min=1)
    max_depth: int = param(256, "D: the deepest node, in tokens from the root.", min=1)
    chunk_tokens: int = param(64, "Most greedy tokens a child grows by when its TD error is small "
                                  "(adaptive chunking); 0 turns chunking off.", min=0)
    td_threshold: float = param(0.01, "Chunk a child while δ² = (q − γ·max Q(s′))² is below this.", min=0)
    c_puct: float = param(0.7, "PUCT exploration weight.", min=0)
    gamma: float = param(0.99, "Discount in the backup and the TD error.", min=0, max=1)
    rollout_tokens: int = param(1024, "Longest completion: a node's greedy rollout stops this many tokens "
                                      "after the prompt (as best-of-n's samples do).", min=1)


@dataclass
class MctsConfig(SearchConfig):
    """The `mcts` stage: MCTS-Q for CoLA and for the token baseline, against best-of-n at equal budget, on
    the first `problems` test problems of each RL task, in two scoring modes (oracle, q_only).

    Overrides of the authors' budget, to fit a laptop: 16 rounds, depth 64, chunks of 16 tokens. Rollouts
    stop at the RL task's `max_new_tokens` too (the length its policies learned to answer in).
    """

    budgets: list[int] = param([2, 4], "More search rounds for the accuracy-vs-budget plot (beside `rounds`, "
                                       "the report's budget); best-of-n is sized to each.")
    problems: int = param(100, "Test problems per task (the first N).", min=1)
    threads: int = param(2, "Torch CPU threads.", min=1)
    seed: int = param(0, "Seed of best-of-n's sampling.")
    rounds: int = override(SearchConfig, "rounds", 16)
    max_depth: int = override(SearchConfig, "max_depth", 64)
    chunk_tokens: int = override(SearchConfig, "chunk_tokens", 16)

    def __post_init__(self) -> None:
        if any(rounds < 1 for rounds in self.budgets):
            raise ValueError(f"budgets must be search rounds of at least 1, got {self.budgets}")

    @property
    def all_budgets(self) -> list[int]:
        """Every budget searched, smallest first (`rounds` included once)."""
        return sorted({*self.budgets, self.rounds})
