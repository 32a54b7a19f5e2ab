"""DVC stage `agent_rl@<method>`: multi-turn GRPO on the training games, latent actions or tokens."""

from cola.pipeline import StageContext, run_stage


def main(stage: StageContext) -> None:
    from cola.envs.rl_stage import run_agent_rl

    args = stage.args
    stage.finish(run_agent_rl(stage.params, args.method, args.data, args.start, args.out,
                              checkpoint_dir=args.checkpoints, on_log=stage.on_log))


if __name__ == "__main__":
    run_stage("agent_rl", main, choices={"method": ["cola", "token"]},
              paths=["data", "start", "out", "checkpoints"], section="agent", launchable=True)
