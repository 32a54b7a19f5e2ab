"""DVC stage `report`: markdown tables + PNG plots comparing base, SFT, CoLA-BC/FTA, token-RL and CoLA-RL."""

import sys
from pathlib import Path

from cola.params import cli_main
from cola.pipeline import stage
from cola.plots import plt
from cola.report import build_report


def main() -> None:
    with stage("report") as (cfg, run):
        report = build_report(".", cfg, profile=run.profile)
        out = Path("report")
        out.mkdir(exist_ok=True)
        for name, figure in report.figures.items():
            run.log_figure(figure, f"report/{name}", save_to=out / name)
            plt.close(figure)
        (out / "report.md").write_text(report.markdown, encoding="utf-8")
        run.log_artifact(out / "report.md", "report")
        if report.missing:
            print(f"warning: the report is incomplete: {', '.join(report.missing)} not found",
                  file=sys.stderr)
        run.summary(report.metrics)


if __name__ == "__main__":
    cli_main(main)
