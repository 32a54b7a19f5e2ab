"""DVC stage `evaluate`: the base vs the CoLA-BC model on held-out tasks, perplexity, diversity, probe."""

from cola.pipeline import StageContext, run_stage


def main(stage: StageContext) -> None:
    from cola.eval.stage import run_evaluate

    args = stage.args
    result = run_evaluate(stage.cfg, args.tests, args.heldout, args.base, args.cola, args.out)
    stage.finish(result, figures={"accuracy": args.accuracy_plot}, records={"accuracy": args.accuracy})


if __name__ == "__main__":
    run_stage("evaluate", main,
              paths=["tests", "heldout", "base", "cola", "out", "accuracy_plot", "accuracy"])
