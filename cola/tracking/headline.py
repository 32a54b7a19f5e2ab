"""The headline metrics: the few dozen numbers that say what a pipeline run did, out of several hundred.

`cola compare` shows these by default (`--all` for everything). Names are ``<stage>/<metric>`` as the pipeline
parent run carries them (a foreach entry's stage is ``rl@cola-math``, which MLflow stores as ``rl_cola-math``:
both spellings match).
"""

from __future__ import annotations

import fnmatch

HEADLINE = (
    "base/val_loss",                               # the base LM
    "latent/wm_idm_over_base",                     # spec §10: the IDM leaks the next token (well below 1)
    "latent/codes_alive", "latent/max_code_share",  # spec §10: no codebook collapse
    "bc/bc_top1", "bc/marginal_over_base",          # spec §10: BC clones the IDM; likelihood ≈ base's
    "evaluate/cola_minus_base_*",                  # CoLA-BC against its base, per task
    "fta/val_response_ce_after", "sft/val_response_ce_after",
    "rl@*/reward_end",                             # the sampled reward each RL run reached
    "rl@*/val_greedy_acc", "rl@*/val_greedy_acc_sd",  # greedy validation accuracy: what choices are made on
    "report/cola_minus_token/*",                   # the paper's comparison, per RL task
    "report/cola_over_token_threshold_seconds/*",  # "half the compute"
    "report/*/delta_*_acc",                        # each RL run's task gain and retention
    "report/cola_mcts_minus_bon_oracle/*",         # does MCTS-Q beat sampling more at the same budget?
    "report/cola_minus_token_math500/*",           # the paper's headline benchmark (profiles with an LLM)
    "report/agent/cola_minus_token/*",             # agent tasks: CoLA-RL − token-RL on unseen games
)


def is_headline(name: str) -> bool:
    """Whether metric ``<stage>/<metric>`` is a headline one."""
    return any(fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern.replace("@", "_"))
               for pattern in HEADLINE)
