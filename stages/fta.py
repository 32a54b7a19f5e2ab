"""DVC stage `fta` (spec stage 3): fine-tune the BC model's base under action guidance (FTA-P, or FTA-I)."""

from cola.params import cli_main
from cola.pipeline import stage
from cola.train.finetune_stage import run_finetune_stage


def main() -> None:
    with stage("fta") as (cfg, run):
        run_finetune_stage("fta", cfg, run)


if __name__ == "__main__":
    cli_main(main)
