"""DVC stage `rl_eval`: every model of the RL comparison (each seed of each RL run) scored the same way."""

from cola.pipeline import StageContext, run_stage


def main(stage: StageContext) -> None:
    from cola.rl.evaluation import run_rl_eval

    args = stage.args
    stage.finish(run_rl_eval(stage.cfg, args.models, args.tests, args.heldout, args.out, args.cache))


if __name__ == "__main__":
    run_stage("rl_eval", main, paths=["models", "tests", "heldout", "out", "cache"])
