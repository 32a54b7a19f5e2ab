"""DVC stage `prepare`: procedural task splits and the pretraining corpus, offline and deterministic."""

from cola.pipeline import StageContext, run_stage


def main(stage: StageContext) -> None:
    from cola.data.prepare import prepare_stage

    stage.finish(prepare_stage(stage.cfg, stage.args.out))


if __name__ == "__main__":
    run_stage("prepare", main, paths=["out"])
