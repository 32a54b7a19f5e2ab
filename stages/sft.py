"""DVC stage `sft`: plain supervised fine-tuning of the base on FTA's data and budget (token RL's start)."""

from cola.pipeline import StageContext, run_stage


def main(stage: StageContext) -> None:
    from cola.train.finetune_stage import run_finetune_stage

    args = stage.args
    result = run_finetune_stage(stage.cfg, args.tasks, args.start, args.out, checkpoint_dir=args.checkpoints,
                                on_log=stage.on_log)
    stage.finish(result, figures={"loss": args.loss_plot}, records={"loss": args.loss_curve})


if __name__ == "__main__":
    run_stage("sft", main, paths=["tasks", "start", "out", "checkpoints", "loss_plot", "loss_curve"],
              launchable=True)
