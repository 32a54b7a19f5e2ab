"""DVC stage `qlearn@<method>-<task>` (spec stage 5a): MCTS-Q's Q-network by double DQN on the rollouts of one
RL run (CoLA: a head over the K latent actions; the token baseline: a head over the vocabulary)."""

from cola.comparison import METHODS, RL_TASKS
from cola.pipeline import StageContext, run_stage


def main(stage: StageContext) -> None:
    from cola.search.qlearn import run_qlearn

    args = stage.args
    result = run_qlearn(stage.cfg, tasks_dir=args.tasks, policy_dir=args.policy, rl_task=args.task,
                        max_new_tokens=stage.params.rl.task(args.task).max_new_tokens, out_dir=args.out,
                        checkpoint_dir=args.checkpoints, on_log=stage.on_log)
    stage.finish(result, figures={"loss": args.loss_plot}, records={"loss": args.loss_curve})


if __name__ == "__main__":
    run_stage("qlearn", main, choices={"method": METHODS, "task": list(RL_TASKS)},
              paths=["tasks", "policy", "out", "checkpoints", "loss_plot", "loss_curve"], launchable=True)
