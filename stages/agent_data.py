"""DVC stage `agent_data`: TextWorld games of every split (train, seen, unseen) and the walkthrough data."""

from cola.pipeline import StageContext, run_stage


def main(stage: StageContext) -> None:
    from cola.envs.data import build_agent_data

    stage.finish(build_agent_data(stage.cfg, stage.args.out))


if __name__ == "__main__":
    run_stage("agent_data", main, paths=["out"], section="agent")
