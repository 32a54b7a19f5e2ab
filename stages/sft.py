"""DVC stage `sft`: plain supervised fine-tuning of the base on FTA's data and budget (token RL's start)."""

from cola.params import cli_main
from cola.pipeline import stage
from cola.train.finetune_stage import run_finetune_stage


def main() -> None:
    with stage("sft") as (cfg, run):
        run_finetune_stage("sft", cfg, run)


if __name__ == "__main__":
    cli_main(main)
