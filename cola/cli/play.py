"""`cola play`: one model plays one text game; the transcript, with each reply's latent actions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cola.cli.app import _load, _model_folder, app, err, out
from cola.errors import user_errors


@app.command()
def play(
    model: Annotated[str, typer.Argument(help="A CoLA model or plain LM folder (or models:/NAME/VERSION).",
                                         show_default=False)],
    game: Annotated[Path, typer.Option(help="A TextWorld game file (.z8 with its .json, e.g. one of "
                                            "agent_data/games/) or an ALFWorld game.tw-pddl.",
                                       show_default=False)],
    max_steps: Annotated[int, typer.Option(help="Most commands in the episode.", min=1)] = 20,
    history: Annotated[int, typer.Option(help="Past turns shown in each prompt.", min=0)] = 2,
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply in tokens.", min=1)] = 16,
    sample: Annotated[bool, typer.Option("--sample/--greedy",
                                         help="Sample actions (CoLA) or tokens instead of argmax.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the sampling.")] = 0,
    show_prompts: Annotated[bool, typer.Option(help="Print every prompt the model saw.")] = False,
) -> None:
    """Play GAME with MODEL and print the transcript: each turn's command (marked when the game did not
    accept it), the game's answer, the reward, and for a CoLA model the latent action behind each token of
    the reply; then whether it won, the score and the invalid commands."""
    with user_errors():
        from cola.envs.alfworld_env import AlfWorldEnv
        from cola.envs.textworld_env import TextWorldEnv

        folder = _model_folder(model)
        backend = AlfWorldEnv if game.suffix == ".tw-pddl" else TextWorldEnv
        env = backend(game, max_steps=max_steps)
        loaded, tokenizer, kind = _load(folder, None)
        from cola.envs.episodes import EpisodeNoise, play_episodes
        from cola.envs.protocol import PromptStyle
        from cola.rl.policies import LatentActionPolicy, TokenPolicy

        policy = LatentActionPolicy(loaded, tokenizer) if kind == "cola" else TokenPolicy(loaded, tokenizer)
        (episode,), _ = play_episodes(policy, [env], PromptStyle(history=history), max_new_tokens,
                                      EpisodeNoise(seed), greedy=not sample)
        out.print(f"[bold]Goal:[/bold] {episode.objective}\n{episode.first}\n", markup=True, highlight=False)
        for number, turn in enumerate(episode.turns, 1):
            if show_prompts:
                out.print(f"[dim]{turn.prompt}[/dim]", markup=True, highlight=False)
            flag = "" if turn.valid else "  (not an admissible command)"
            out.print(f"{number}. > {turn.command!r}{flag}  reward {turn.reward:g}", highlight=False)
            if turn.actions is not None:
                out.print(f"   actions {turn.actions}  reply {turn.reply!r}", highlight=False)
            out.print(f"   {turn.answer}", highlight=False)
        result = "won" if episode.won else "not won"
        out.print(f"{result}: score {episode.score:g} / {env.max_score:g} in {len(episode.turns)} steps, "
                  f"{episode.invalid} invalid commands")
        err.print(f"walkthrough ({len(env.walkthrough)} steps): {' / '.join(env.walkthrough)}")
        env.close()
