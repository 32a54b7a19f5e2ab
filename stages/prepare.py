"""DVC stage `prepare`: procedural task splits and the pretraining corpus, offline and deterministic."""

from pathlib import Path

from cola.data.prepare import prepare
from cola.params import cli_main
from cola.pipeline import stage


def main() -> None:
    with stage("prepare") as (cfg, run):
        summary = prepare(cfg, Path("data"))
        run.summary({f"{task}_{split}": count for task, splits in summary["tasks"].items()
                     for split, count in splits.items() if split in ("train", "val", "test")})


if __name__ == "__main__":
    cli_main(main)
