"""`cola search`: MCTS-Q on one prompt, printed as its tree (what the search did, node by node)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.tree import Tree

from cola.cli.app import CliError, _load, _model_folder, app, err, out
from cola.errors import user_errors


def _label(node, tokenizer, parent_len: int) -> str:
    chunk = tokenizer.decode(list(node.ids[parent_len:]), skip_special_tokens=True)
    flags = " [terminal]" if node.terminal else ""
    shown = ", ".join(map(str, node.actions[:6])) + (", …" if len(node.actions) > 6 else "")
    return (f"actions [{shown}] {chunk!r}  N={node.visits} V={node.value:.3f} R={node.reward:.3f} "
            f"π̄={node.prior:.2f}{flags}")


@app.command()
def search(
    model: Annotated[str, typer.Argument(help="A CoLA model or plain LM folder (or models:/NAME/VERSION).",
                                         show_default=False)],
    prompt: Annotated[str, typer.Argument(help='Prompt text, e.g. "Q: Calculate 3 + 4. A:".',
                                          show_default=False)],
    q: Annotated[Path, typer.Option("--q", help="The Q-network folder (the qlearn stage's output).",
                                    show_default=False)],
    rounds: Annotated[int, typer.Option(help="Search rounds (one new node each).", min=1)] = 16,
    root_children: Annotated[int, typer.Option(help="b1: children of the root.", min=1)] = 4,
    children: Annotated[int, typer.Option(help="b2: children of every other node.", min=1)] = 2,
    max_depth: Annotated[int, typer.Option(help="D: tokens from the root.", min=1)] = 64,
    chunk_tokens: Annotated[int, typer.Option(help="Most extra tokens of a chunked child.", min=0)] = 16,
    td_threshold: Annotated[float, typer.Option(help="Chunk a child while δ² is below this.", min=0)] = 0.01,
    c_puct: Annotated[float, typer.Option(help="PUCT exploration weight.", min=0)] = 0.7,
    rollout_tokens: Annotated[int, typer.Option(help="Greedy rollout length from each node.", min=1)] = 64,
    answer: Annotated[str | None, typer.Option(
        help="The gold answer: rollouts are scored by the math grader against it (oracle); without it the "
             "Q-network's values score them (q_only).")] = None,
) -> None:
    """Run MCTS-Q on PROMPT (over latent actions for a CoLA model, over tokens for a plain LM with a token
    Q-network) and print the tree: each node's actions, chunk text, visits,
    value, rollout reward and mean action probability; then the answer and the budget spent."""
    with user_errors():
        folder = _model_folder(model)
        if not (q / "config.json").is_file():
            raise CliError(f"--q {q}: no Q-network folder (config.json missing)")
        loaded, tokenizer, kind = _load(folder, None)
        from cola.config.search import SearchConfig
        from cola.search.mcts import Search, action_space
        from cola.search.qnetwork import load_qnetwork
        from cola.tasks import TASKS

        qnet = load_qnetwork(q)
        space = action_space(loaded, tokenizer, kind)
        reward = None
        if answer is not None:
            task = TASKS["arith"]
            reward = lambda completion: float(task.score({"answer": answer}, completion))  # noqa: E731
        cfg = SearchConfig(rounds=rounds, root_children=root_children, children=children, max_depth=max_depth,
                           chunk_tokens=chunk_tokens, td_threshold=td_threshold, c_puct=c_puct,
                           rollout_tokens=rollout_tokens)
        result = Search(space, tokenizer, qnet, cfg, reward).run(prompt)
        root = result.root
        tree = Tree(f"{prompt!r}  N={root.visits} V={root.value:.3f} R={root.reward:.3f}")

        def grow(branch: Tree, node) -> None:
            for child in node.children:
                grow(branch.add(_label(child, tokenizer, len(node.ids))), child)

        grow(tree, root)
        out.print(tree)
        out.print(f"answer ({'oracle' if reward else 'q_only'}): {result.answer!r}")
        err.print(f"{result.nodes} nodes, {result.model_passes} model passes, {result.q_passes} Q passes, "
                  f"{result.seconds:.1f} s")
