"""The ``agent`` section: text-game agent tasks (TextWorld), from game generation to multi-turn RL.

Seen games share the training games' settings (held-out seeds); unseen games come from other settings (more
rooms and objects), as ALFWorld's seen / unseen splits do. Fine-tuning on the walkthroughs uses the ``fta``
(CoLA) and ``sft`` (token baseline) sections' optimiser; agent RL uses the ``rl`` section's algorithm knobs
with the budget and group shape given here.
"""

from __future__ import annotations

from dataclasses import dataclass

from cola.config.fields import param
from cola.config.training import RuntimeConfig


@dataclass
class AgentConfig(RuntimeConfig):
    """Games, the prompt protocol, walkthrough fine-tuning, multi-turn RL and evaluation of agent tasks."""

    world_size: int = param(2, "Rooms of the training (and seen) games.", min=1)
    nb_objects: int = param(4, "Objects of the training (and seen) games.", min=1)
    quest_length: int = param(2, "Walkthrough length of the training (and seen) games.", min=1)
    unseen_world_size: int = param(3, "Rooms of the unseen games.", min=1)
    unseen_nb_objects: int = param(6, "Objects of the unseen games.", min=1)
    train_games: int = param(24, "Training games (seeds 0 … N-1): walkthrough data and RL.", min=1)
    eval_games: int = param(12, "Seen and unseen evaluation games each (seeds after the training ones).",
                            min=1)
    max_steps: int = param(8, "Step limit of an episode.", min=1)
    history: int = param(2, "Past turns shown in the prompt (a bounded history).", min=0)
    max_observation_chars: int = param(160, "Observations are cut to this length in the prompt.", min=16)
    max_objective_chars: int = param(400, "The goal is cut to this length in the prompt (TextWorld's goals "
                                          "name every quest step after a flavour sentence: ~150-320 "
                                          "characters).", min=16)
    show_admissible: bool = param(True, "List the commands the game accepts in the prompt.")
    max_new_tokens: int = param(32, "The longest reply per turn (the tiny tokenizer spells a TextWorld "
                                    "command in up to 33 tokens; 12 cut a fifth of them).", min=1)
    ft_steps: int = param(200, "Optimizer steps of walkthrough fine-tuning (FTA for CoLA, SFT for the "
                               "token baseline; the rest of their optimiser from the fta / sft sections).",
                          min=1)
    ft_lr: float = param(1e-4, "Peak learning rate of walkthrough fine-tuning (the fta / sft sections' 3e-4 "
                               "over the walkthrough data erased the retention tasks).", min=0,
                         exclusive_min=True)
    ft_batch_size: int = param(8, "Walkthrough examples per fine-tuning step (the data is a few dozen "
                                  "steps of walkthrough: small batches, many passes).", min=1)
    ft_seq_len: int = param(512, "Tokens per walkthrough example in fine-tuning (prompts hold the goal, the "
                                 "history and the commands: longer than the task examples).", min=16)
    rl_steps: int = param(60, "Multi-turn GRPO steps (the rest of the algorithm from the rl section).", min=1)
    games_per_step: int = param(4, "Games per GRPO step.", min=1)
    group_size: int = param(4, "Episodes per game per step (group environments).", min=2)
    win_bonus: float = param(1.0, "Added to a won episode's return (the score gained).", min=0)
    random_episodes: int = param(4, "Episodes per game of the random admissible agent scored beside the "
                                    "models (seeded by `seed`).", min=1)
    retention_limit: int = param(100, "Problems per retention task (spell, wrev) scored for each agent "
                                      "model.", min=1)
    seed: int = param(0, "Seed of the RL episodes.")
