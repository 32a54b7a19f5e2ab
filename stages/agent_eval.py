"""DVC stage `agent_eval`: every agent model on seen and unseen games, with retention against its start."""

from cola.pipeline import StageContext, run_stage


def main(stage: StageContext) -> None:
    from cola.envs.evaluation import run_agent_eval

    args = stage.args
    stage.finish(run_agent_eval(stage.params, args.models, args.data, args.tests, args.heldout))


if __name__ == "__main__":
    run_stage("agent_eval", main, paths=["models", "data", "tests", "heldout"], section="agent")
