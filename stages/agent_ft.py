"""DVC stage `agent_ft@<method>`: walkthrough fine-tuning, FTA for CoLA and SFT for the token baseline."""

from cola.pipeline import StageContext, run_stage


def main(stage: StageContext) -> None:
    from cola.envs.finetune import run_agent_ft

    args = stage.args
    result = run_agent_ft(stage.params, args.method, args.data, args.start, args.out,
                          checkpoint_dir=args.checkpoints, on_log=stage.on_log)
    stage.finish(result, figures={"loss": args.loss_plot})


if __name__ == "__main__":
    run_stage("agent_ft", main, choices={"method": ["cola", "token"]},
              paths=["data", "start", "out", "checkpoints", "loss_plot"], section="agent", launchable=True)
