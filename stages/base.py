"""DVC stage `base`: the base LM folder (tiny from scratch, or an imported pretrained model)."""

from cola.pipeline import StageContext, run_stage


def main(stage: StageContext) -> None:
    from cola.train.base_lm import run_base

    args = stage.args
    result = run_base(stage.cfg, args.corpus, args.out, checkpoint_dir=args.checkpoints, on_log=stage.on_log)
    stage.finish(result, figures={"loss": args.loss_plot}, records={"loss": args.loss_curve})


if __name__ == "__main__":
    run_stage("base", main, paths=["corpus", "out", "checkpoints", "loss_plot", "loss_curve"],
              launchable=True)
