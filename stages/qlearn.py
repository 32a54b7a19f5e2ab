"""DVC stage `qlearn` (spec stage 5a): MCTS-Q's Q-network by double DQN on the CoLA math policy's rollouts."""

from cola.pipeline import StageContext, run_stage


def main(stage: StageContext) -> None:
    from cola.search.qlearn import run_qlearn

    args = stage.args
    result = run_qlearn(stage.cfg, tasks_dir=args.tasks, policy_dir=args.policy, out_dir=args.out,
                        checkpoint_dir=args.checkpoints, on_log=stage.on_log)
    stage.finish(result, figures={"loss": args.loss_plot}, records={"loss": args.loss_curve})


if __name__ == "__main__":
    run_stage("qlearn", main, paths=["tasks", "policy", "out", "checkpoints", "loss_plot", "loss_curve"])
