"""DVC stage `rl_eval`: every model of the RL comparison (each seed of each RL run) scored the same way."""

from pathlib import Path

from cola.comparison import rows
from cola.params import cli_main
from cola.pipeline import stage
from cola.rl.evaluation import evaluate_folder, headline


def main() -> None:
    with stage("rl_eval") as (cfg, run):
        metrics = {}
        for row in rows():
            summary, reused = evaluate_folder(row.folder, cfg, out_dir=Path("eval_rl") / row.name,
                                              cache_dir=Path("checkpoints/rl_eval") / row.name)
            print(f"rl_eval {row.name}: {'unchanged, result reused' if reused else 'evaluated'}")
            run.log_artifact(Path("eval_rl") / row.name / "summary.json", f"eval_rl/{row.name}")
            metrics.update({f"{row.name}/{k}": v for k, v in headline(summary["metrics"]).items()})
            metrics[f"{row.name}/reused"] = reused
        run.summary(metrics)


if __name__ == "__main__":
    cli_main(main)
