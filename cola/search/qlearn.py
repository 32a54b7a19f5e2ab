"""Training MCTS-Q's Q-network (cola-spec.md §3 stage 5a): rollouts of an RL policy with verifiable rewards,
then double DQN through the shared training core.

A rollout is one row: the prompt's and response's token ids, the action behind each response token (CoLA: its
latent action; the token baseline: the token itself, so its Q-head has one output per vocabulary entry) and
the task's 0/1 score of the completion, which is the reward of the last action (0 before it). The Q-network
reads the state of response action t at position P − 1 + t of prompt + response.
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
from cola.rl.policies import LatentActionPolicy, Policy, TokenPolicy
from cola.search.qlearning import double_dqn_targets, td_loss
from cola.search.qnetwork import QNetwork
from cola.tasks import TASKS
from cola.tasks.base import Example, Task
from cola.train.core import LogFn, Trainer
from cola.train.sft_data import load_task_examples


@dataclass
class RecordedRollout:
    """One rollout: prompt and response ids, one action per response token, the completion's score."""

    prompt_ids: list[int]
    response_ids: list[int]
    actions: list[int]
    reward: float


@torch.no_grad()
def collect_rollouts(policy: Policy, task: Task, examples: list[Example], samples: int,
                     max_new_tokens: int, seed: int, batch_prompts: int = 16) -> list[RecordedRollout]:
    """`samples` sampled rollouts of each example's prompt (as the policy samples in RL: CoLA top-k actions
    and greedy world-model tokens, or sampled tokens), each scored by `task.score` (1 when correct)."""
    generator = torch.Generator().manual_seed(seed)
    out: list[RecordedRollout] = []
    for start in range(0, len(examples), batch_prompts):
        chunk = examples[start : start + batch_prompts]
        rollout = policy.rollout([ex["prompt"] for ex in chunk], samples, max_new_tokens, generator)
        p = rollout.prompt_length
        actions = rollout.actions if rollout.actions is not None else rollout.response_tokens
        for b, completion in enumerate(rollout.completions):
            valid = rollout.response_mask[b].bool()
            prompt = rollout.sequences[b, :p][rollout.attention_mask[b, :p].bool()]
            out.append(RecordedRollout(prompt.tolist(), rollout.sequences[b, p:][valid].tolist(),
                                       actions[b][valid].tolist(),
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
    every ``cfg.target_sync`` steps (and checkpointed with the run).

    Under several processes every process draws the same global minibatch and keeps its block of rows
    (`cola.train.distributed`); its TD loss, a mean over its valid steps, is weighted by its share of the
    batch's steps, so the average over processes is the global batch's mean (tests/test_distributed.py)."""

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
        start, stop = self.processes.rows(self.cfg.batch_size, "Q-learning minibatch")
        batch = collate([self.rollouts[i] for i in index[start:stop].tolist()], self.pad_id)
        batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
        q = state_values(self.model, batch)
        with torch.no_grad():
            q_target = state_values(self.target, batch)
        targets = double_dqn_targets(batch["rewards"], q.detach(), q_target, batch["mask"], self.cfg.gamma)
        share = self.processes.share(float(batch["mask"].sum()))
        loss = td_loss(q, batch["actions"], targets, batch["mask"]) * share
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


def run_qlearn(cfg: QLearnConfig, *, tasks_dir: Path, policy_dir: Path, rl_task: str, max_new_tokens: int,
               out_dir: Path, checkpoint_dir: Path | None = None,
               on_log: LogFn | None = None) -> StageResult:
    """The `qlearn` stage: roll out the RL policy of `policy_dir` (CoLA or a plain LM) on the first
    ``n_prompts`` training problems of `rl_task` (``samples_per_prompt`` each, scored by the task), train a
    Q-network on a copy of its base by double DQN, and measure its calibration on rollouts of held-out
    validation problems before and after. Saves the Q-network (with the tokenizer) to `out_dir`."""
    model, tokenizer, kind = load_model_and_tokenizer(policy_dir)
    if rl_task not in RL_TASKS:
        raise ColaError(f"unknown RL task {rl_task!r}; expected one of {sorted(RL_TASKS)}")
    split = RL_TASKS[rl_task]
    task = TASKS[split]
    train = load_task_examples(tasks_dir, "train", [split])[: cfg.n_prompts]
    heldout = load_task_examples(tasks_dir, "val", [split])[: cfg.heldout_prompts]
    if kind == "cola":
        policy: Policy = LatentActionPolicy(model, tokenizer, top_k=cfg.action_top_k)
        qnet = QNetwork.from_base(model.base, model.config.num_actions)
    else:  # the token baseline samples its tokens as in RL (full vocabulary, temperature 1)
        policy, qnet = TokenPolicy(model, tokenizer), QNetwork.from_base(model, model.config.vocab_size)
    rollouts = collect_rollouts(policy, task, train, cfg.samples_per_prompt, max_new_tokens, cfg.seed)
    held = collect_rollouts(policy, task, heldout, cfg.samples_per_prompt, max_new_tokens, cfg.seed + 1)
    pad = tokenizer.pad_token_id
    before = calibration(qnet, held, pad, cfg.gamma)
    trainer = QTrainer(qnet, cfg, rollouts, pad, checkpoint_dir=checkpoint_dir, on_log=on_log,
                       fingerprint=fingerprint(asdict(cfg), file_digest(policy_dir), len(rollouts)),
                       description=f"qlearn {kind} {rl_task}")
    last = trainer.train()
    after = calibration(qnet, held, pad, cfg.gamma)
    save_hf_folder(qnet.eval(), tokenizer, out_dir)
    metrics = {**last, "rollouts": len(rollouts), "train_success_rate": sum(r.reward for r in rollouts)
               / len(rollouts), **{f"heldout_{k}_before": v for k, v in before.items()},
               **{f"heldout_{k}": v for k, v in after.items()}}
    history = trainer.history
    return StageResult(metrics, {"loss": plots.curves(history, ["td_loss"], "Q-network: TD loss")},
                       records={"loss": plots.curve_records(history, ["td_loss"])}, models=[out_dir])
