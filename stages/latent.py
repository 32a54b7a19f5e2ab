"""DVC stage `latent` (spec stage 1): IDM + world model on the frozen base, with collapse diagnostics."""

from pathlib import Path

from transformers import AutoTokenizer

from cola import plots
from cola.data.corpus import read_lines
from cola.eval.harness import perplexity
from cola.params import cli_main
from cola.pipeline import stage
from cola.train.latent import run_latent


def main() -> None:
    with stage("latent") as (cfg, run):
        model = run_latent(cfg, Path("data"), Path("models/base"), Path("models/latent"),
                           checkpoint_dir=Path("checkpoints/latent"), on_log=run.on_log)
        run.log_figure(plots.curves(run.history, ["loss", "wm_ce"], "latent-action pretraining"),
                       "plots/latent_loss.png", save_to="plots/latent_loss.png")
        tokenizer = AutoTokenizer.from_pretrained("models/latent")
        diag = perplexity(model, tokenizer, "cola", read_lines(Path("data/corpus/val.txt")),
                          seq_len=cfg.seq_len, max_tokens=cfg.val_tokens, marginal=False)
        run.log_figure(plots.histogram(diag.pop("usage_histogram"), "IDM argmax action usage (held-out)"),
                       "plots/latent_action_usage.png", save_to="plots/latent_action_usage.png")
        diag["wm_idm_over_base"] = diag["wm_loss_idm"] / diag["base_loss"]
        run.log_output("models/latent")
        run.summary({**diag, "train_tokens_per_second": run.history[-1][1]["tokens_per_second"]})


if __name__ == "__main__":
    cli_main(main)
