"""DVC stage `bc` (spec stage 2): behaviour cloning of the policy on IDM argmax labels."""

from pathlib import Path

from transformers import AutoTokenizer

from cola import plots
from cola.data.corpus import read_lines
from cola.eval.harness import perplexity
from cola.params import cli_main
from cola.pipeline import stage
from cola.train.bc import run_bc


def main() -> None:
    with stage("bc") as (cfg, run):
        model = run_bc(cfg, Path("data"), Path("models/latent"), Path("models/bc"),
                       checkpoint_dir=Path("checkpoints/bc"), on_log=run.on_log)
        run.log_figure(plots.curves(run.history, ["loss", "top1"], "behaviour cloning"), "plots/bc_loss.png",
                       save_to="plots/bc_loss.png")
        tokenizer = AutoTokenizer.from_pretrained("models/bc")
        lines = read_lines(Path("data/corpus/val.txt"))
        diag = perplexity(model, tokenizer, "cola", lines, seq_len=cfg.seq_len, max_tokens=cfg.val_tokens)
        diag.pop("usage_histogram", None)
        diag["bc_top1"] = diag.pop("policy_idm_agreement")
        diag["marginal_over_base"] = diag["wm_loss_policy_marginal"] / diag["base_loss"]
        run.log_output("models/bc")
        run.summary({**diag, "train_tokens_per_second": run.history[-1][1]["tokens_per_second"]})


if __name__ == "__main__":
    cli_main(main)
