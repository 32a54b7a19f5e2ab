"""DVC stage `bc` (spec stage 2): behaviour cloning of the policy on IDM argmax labels."""

from cola.pipeline import StageContext, run_stage


def main(stage: StageContext) -> None:
    from cola.train.bc import run_bc

    args = stage.args
    result = run_bc(stage.cfg, args.corpus, args.latent, args.out, checkpoint_dir=args.checkpoints,
                    on_log=stage.on_log)
    stage.finish(result, figures={"loss": args.loss_plot}, records={"loss": args.loss_curve})


if __name__ == "__main__":
    run_stage("bc", main, paths=["corpus", "latent", "out", "checkpoints", "loss_plot", "loss_curve"],
              launchable=True)
