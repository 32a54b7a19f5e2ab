"""DVC stage `math500`: MATH-500 accuracy of every model of the comparison (off in the tiny profile)."""

from cola.pipeline import StageContext, run_stage


def main(stage: StageContext) -> None:
    from cola.eval.math500 import run_math500

    args = stage.args
    stage.finish(run_math500(stage.cfg, args.models, args.out, cola_start=stage.params.rl.cola_start))


if __name__ == "__main__":
    run_stage("math500", main, paths=["models", "out"])
