"""DVC stage `base`: the base LM folder (tiny from scratch, or an imported pretrained model)."""

from pathlib import Path

from cola import plots
from cola.params import cli_main
from cola.pipeline import stage
from cola.train.base_lm import run_base


def main() -> None:
    with stage("base") as (cfg, run):
        metrics = run_base(cfg, Path("data"), Path("models/base"), checkpoint_dir=Path("checkpoints/base"),
                           on_log=run.on_log)
        run.log_figure(plots.curves(run.history, ["loss"], "base LM pretraining"), "plots/base_loss.png",
                       save_to="plots/base_loss.png")
        run.log_output("models/base")
        run.summary(metrics)


if __name__ == "__main__":
    cli_main(main)
