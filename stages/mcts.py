"""DVC stage `mcts@<task>` (spec stage 5b): MCTS-Q over CoLA's latent actions and over the token RL model's
tokens, each against best-of-n sampling at the same budget, on the task's test problems."""

from cola.comparison import RL_TASKS
from cola.pipeline import StageContext, run_stage


def main(stage: StageContext) -> None:
    from cola.search.compare import run_mcts

    args = stage.args
    result = run_mcts(stage.cfg, tasks_dir=args.tasks, rl_task=args.task,
                      max_new_tokens=stage.params.rl.task(args.task).max_new_tokens,
                      models={"cola": args.cola, "token": args.token},
                      qnets={"cola": args.cola_q, "token": args.token_q})
    stage.finish(result, figures={"budget": args.budget_plot}, records={"budget": args.budget})


if __name__ == "__main__":
    run_stage("mcts", main, choices={"task": list(RL_TASKS)},
              paths=["tasks", "cola", "cola_q", "token", "token_q", "budget", "budget_plot"])
