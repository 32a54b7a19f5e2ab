"""Training MCTS-Q's Q-network (cola-spec.md §3 stage 5a): rollouts of the CoLA policy with verifiable
rewards, then double DQN through the shared training core.

A rollout is one row: the prompt's and response's token ids, the latent action behind each response token
and the task's 0/1 score of the completion, which is the reward of the last action (0 before it). The
Q-network reads the state of response action t at position P − 1 + t of prompt + response.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cola import plots
from cola.comparison import RL_TASKS
from cola.config.search import QLearnConfig
from cola.errors import ColaError
from cola.io import file_digest, fingerprint
from cola.model.checkpoint import load_model_and_tokenizer, save_hf_folder
from cola.results import StageResult
from cola.rl.policies import LatentActionPolicy
from cola.search.qlearning import double_dqn_targets, td_loss
from cola.search.qnetwork import QNetwork
from cola.tasks import TASKS
from cola.tasks.base import Example, Task
from cola.train.core import LogFn, Trainer
from cola.train.sft_data import load_task_examples


@dataclass
class RecordedRollout:
    """One CoLA rollout: prompt and response ids, one action per response token, the completion's score."""

    prompt_ids: list[int]
    response_ids: list[int]
    actions: list[int]
    reward: float


@torch.no_grad()
def collect_rollouts(policy: LatentActionPolicy, task: Task, examples: list[Example], samples: int,
                     max_new_tokens: int, seed: int, batch_prompts: int = 16) -> list[RecordedRollout]:
    """`samples` sampled rollouts of each example's prompt (top-k actions, greedy world-model tokens, as in
    RL), each scored by `task.score` (1 when correct)."""
    generator = torch.Generator().manual_seed(seed)
    out: list[RecordedRollout] = []
    for start in range(0, len(examples), batch_prompts):
        chunk = examples[start : start + batch_prompts]
        rollout = policy.rollout([ex["prompt"] for ex in chunk], samples, max_new_tokens, generator)
        p = rollout.prompt_length
        for b, completion in enumerate(rollout.completions):
            valid = rollout.response_mask[b].bool()
            prompt = rollout.sequences[b, :p][rollout.attention_mask[b, :p].bool()]
            out.append(RecordedRollout(prompt.tolist(), rollout.sequences[b, p:][valid].tolist(),
                                       rollout.actions[b][valid].tolist(),
                                       float(task.score(chunk[b // samples], completion))))
    return out


def collate(rollouts: list[RecordedRollout], pad_id: int) -> dict[str, Tensor]:
    """Right-padded ids and mask (B, L) and, per response action (B, N): the state's position, the action,
    the reward (on the last action) and the mask."""
    length = max(len(r.prompt_ids) + len(r.response_ids) for r in rollouts)
    n = max(max(len(r.actions) for r in rollouts), 1)
    ids = torch.full((len(rollouts), length), pad_id, dtype=torch.long)
    attention = torch.zeros(len(rollouts), length, dtype=torch.long)
    positions = torch.zeros(len(rollouts), n, dtype=torch.long)
    actions, rewards = torch.zeros(len(rollouts), n, dtype=torch.long), torch.zeros(len(rollouts), n)
    mask = torch.zeros(len(rollouts), n, dtype=torch.bool)
    for i, r in enumerate(rollouts):
        row = r.prompt_ids + r.response_ids
        ids[i, : len(row)], attention[i, : len(row)] = torch.tensor(row), 1
        k, p = len(r.actions), len(r.prompt_ids)
        if k:
            positions[i, :k] = torch.arange(p - 1, p - 1 + k)
            actions[i, :k], mask[i, :k], rewards[i, k - 1] = torch.tensor(r.actions), True, r.reward
    return {"ids": ids, "attention": attention, "positions": positions, "actions": actions,
            "rewards": rewards, "mask": mask}


def state_values(qnet: QNetwork, batch: dict[str, Tensor]) -> Tensor:
    """(B, N, K) Q-values at the states of the response actions."""
    q = qnet(batch["ids"], batch["attention"])
    index = batch["positions"].unsqueeze(-1).expand(-1, -1, q.shape[-1])
    return q.gather(1, index)


class QTrainer(Trainer):
    """Double DQN on recorded rollouts: one minibatch per step, a frozen target copy of the Q-network synced
    every ``cfg.target_sync`` steps (and checkpointed with the run)."""

    def __init__(self, qnet: QNetwork, cfg: QLearnConfig, rollouts: list[RecordedRollout], pad_id: int,
                 **kwargs: Any) -> None:
        if not rollouts:
            raise ValueError("Q-learning needs at least one rollout")
        super().__init__(qnet, cfg, seed=cfg.seed, **kwargs)
        self.rollouts, self.pad_id = rollouts, pad_id
        self.target = copy.deepcopy(qnet).eval().requires_grad_(False)
        self.batch_generator = torch.Generator().manual_seed(cfg.seed)

    def training_step(self) -> dict[str, float]:
        if self.global_step % self.cfg.target_sync == 0:
            self.target.load_state_dict(self.model.state_dict())
        index = torch.randint(len(self.rollouts), (self.cfg.batch_size,), generator=self.batch_generator)
        batch = collate([self.rollouts[i] for i in index.tolist()], self.pad_id)
        q = state_values(self.model, batch)
        with torch.no_grad():
            q_target = state_values(self.target, batch)
        targets = double_dqn_targets(batch["rewards"], q.detach(), q_target, batch["mask"], self.cfg.gamma)
        loss = td_loss(q, batch["actions"], targets, batch["mask"])
        return {"td_loss": loss.item(), "grad_norm": self.optimize(loss),
                "n_tokens": int(batch["attention"].sum())}

    def extra_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {f"target.{k}": v.detach().clone() for k, v in self.target.state_dict().items()}
        tensors["rng.batches"] = self.batch_generator.get_state()
        return tensors, {}

    def load_extra_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        self.target.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("target.")})
        self.batch_generator.set_state(tensors["rng.batches"])


@torch.no_grad()
def calibration(qnet: QNetwork, rollouts: list[RecordedRollout], pad_id: int,
                gamma: float) -> dict[str, float]:
    """How well Q predicts held-out outcomes: the mean Q(s₀, a₀) of the first action against the observed
    success rate and against the discounted return γ^(N−1)·r it estimates, and their mean squared error."""
    batch = collate(rollouts, pad_id)
    first = state_values(qnet.eval(), batch)[:, 0].gather(-1, batch["actions"][:, :1]).squeeze(-1)
    lengths = batch["mask"].sum(1).clamp(min=1)
    rewards = batch["rewards"].sum(1)
    returns = rewards * gamma ** (lengths - 1).float()
    return {"q_first_mean": first.mean().item(), "success_rate": rewards.mean().item(),
            "return_mean": returns.mean().item(), "q_first_mse": ((first - returns) ** 2).mean().item()}


def run_qlearn(cfg: QLearnConfig, *, tasks_dir: Path, policy_dir: Path, out_dir: Path,
               checkpoint_dir: Path | None = None, on_log: LogFn | None = None) -> StageResult:
    """The `qlearn` stage: roll out the CoLA RL policy of `policy_dir` on the first ``n_prompts`` arith
    training problems (``samples_per_prompt`` each, scored by the task), train a Q-network on a copy of its
    base by double DQN, and measure its calibration on rollouts of held-out validation problems before and
    after. Saves the Q-network (with the tokenizer) to `out_dir`."""
    model, tokenizer, kind = load_model_and_tokenizer(policy_dir)
    if kind != "cola":
        raise ColaError(f"{policy_dir}: the Q-network learns from a CoLA policy, found a plain LM")
    split = RL_TASKS["math"]
    task = TASKS[split]
    train = load_task_examples(tasks_dir, "train", [split])[: cfg.n_prompts]
    heldout = load_task_examples(tasks_dir, "val", [split])[: cfg.heldout_prompts]
    policy = LatentActionPolicy(model, tokenizer, top_k=cfg.action_top_k)
    rollouts = collect_rollouts(policy, task, train, cfg.samples_per_prompt, cfg.max_new_tokens, cfg.seed)
    held = collect_rollouts(policy, task, heldout, cfg.samples_per_prompt, cfg.max_new_tokens, cfg.seed + 1)
    pad = tokenizer.pad_token_id
    qnet = QNetwork.from_base(model.base, model.config.num_actions)
    before = calibration(qnet, held, pad, cfg.gamma)
    trainer = QTrainer(qnet, cfg, rollouts, pad, checkpoint_dir=checkpoint_dir, on_log=on_log,
                       fingerprint=fingerprint(asdict(cfg), file_digest(policy_dir), len(rollouts)),
                       description="qlearn")
    last = trainer.train()
    after = calibration(qnet, held, pad, cfg.gamma)
    save_hf_folder(qnet.eval(), tokenizer, out_dir)
    metrics = {**last, "rollouts": len(rollouts), "train_success_rate": sum(r.reward for r in rollouts)
               / len(rollouts), **{f"heldout_{k}_before": v for k, v in before.items()},
               **{f"heldout_{k}": v for k, v in after.items()}}
    history = trainer.history
    return StageResult(metrics, {"loss": plots.curves(history, ["td_loss"], "Q-network: TD loss")},
                       records={"loss": plots.curve_records(history, ["td_loss"])}, models=[out_dir])
