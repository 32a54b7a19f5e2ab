"""DVC stage `rl@<method>-<task>` (spec stage 4): GRPO of CoLA's latent-action policy or of token RL."""

import argparse
import json
from pathlib import Path

from cola.comparison import METHODS, RL_TASKS, aggregate
from cola.params import cli_main
from cola.pipeline import stage
from cola.plots import plt
from cola.rl.stage import curve_records, plot_curves, run_rl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--task", required=True, choices=list(RL_TASKS))
    args = parser.parse_args()
    key = f"{args.method}-{args.task}"
    with stage("rl", key=key, tags={"method": args.method, "task": args.task}) as (cfg, run):
        results = run_rl(cfg, args.method, args.task, out_dir=Path("models/rl") / key,
                         checkpoint_dir=Path("checkpoints/rl") / key, on_log=run.on_log)
        curves = Path("plots/rl") / f"{key}.json"
        curves.parent.mkdir(parents=True, exist_ok=True)
        curves.write_text(json.dumps(curve_records(results)))
        figure = plot_curves(results, f"GRPO {key}")
        run.log_figure(figure, f"plots/rl/{key}.png", save_to=Path("plots/rl") / f"{key}.png")
        plt.close(figure)
        run.log_output(Path("models/rl") / key)
        run.summary(aggregate({r.seed: r.summary for r in results}))


if __name__ == "__main__":
    cli_main(main)
