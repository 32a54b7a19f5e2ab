"""DVC stage `report`: markdown tables + PNG plots comparing base, SFT, CoLA-BC/FTA, token-RL and CoLA-RL."""

from cola.pipeline import StageContext, run_stage


def main(stage: StageContext) -> None:
    from cola.report import run_report

    args = stage.args
    result = run_report(stage.cfg, args.out, profile=stage.params.profile,
                        cola_start=stage.params.rl.cola_start, evals_dir=args.evals,
                        rl_metrics_dir=args.rl_metrics, rl_curves_dir=args.rl_curves,
                        stage_metrics_dir=args.stage_metrics)
    stage.finish(result, figures={name: args.out / name for name in result.figures})


if __name__ == "__main__":
    run_stage("report", main, paths=["evals", "rl_metrics", "rl_curves", "stage_metrics", "out"])
