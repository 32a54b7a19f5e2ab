"""DVC stage `latent` (spec stage 1): IDM + world model on the frozen base, with collapse diagnostics."""

from cola.pipeline import StageContext, run_stage


def main(stage: StageContext) -> None:
    from cola.train.latent import run_latent

    args = stage.args
    result = run_latent(stage.cfg, args.corpus, args.base, args.out, checkpoint_dir=args.checkpoints,
                        on_log=stage.on_log)
    stage.finish(result, figures={"loss": args.loss_plot, "usage": args.usage_plot},
                 records={"loss": args.loss_curve})


if __name__ == "__main__":
    run_stage("latent", main,
              paths=["corpus", "base", "out", "checkpoints", "loss_plot", "loss_curve", "usage_plot"],
              launchable=True)
