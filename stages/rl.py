"""DVC stage `rl@<method>-<task>` (spec stage 4): GRPO of CoLA's latent-action policy or of token RL."""

from cola.comparison import METHODS, RL_TASKS
from cola.pipeline import StageContext, run_stage


def main(stage: StageContext) -> None:
    from cola.rl.stage import run_rl

    args = stage.args
    result = run_rl(stage.cfg, args.method, args.task, tasks_dir=args.tasks, start_dir=args.start,
                    out_dir=args.out, checkpoint_dir=args.checkpoints, on_log=stage.on_log)
    stage.finish(result, figures={"curves": args.curves_plot}, records={"curves": args.curves})


if __name__ == "__main__":
    run_stage("rl", main, choices={"method": METHODS, "task": list(RL_TASKS)},
              paths=["tasks", "start", "out", "checkpoints", "curves", "curves_plot"], launchable=True)
