"""`cola track sync`: replay into MLflow the stage runs that could not reach it (`cola.tracking.replay`)."""

from __future__ import annotations

import typer

from cola.cli.app import app, out
from cola.errors import user_errors

track = typer.Typer(help="The tracking store: replay stage runs kept while MLflow was unreachable.",
                    no_args_is_help=True)
app.add_typer(track, name="track")


@track.command("sync")
def sync_command() -> None:
    """Replay the stage runs kept in .cola/outbox into MLflow (MLFLOW_TRACKING_URI); running it twice adds nothing."""  # noqa: E501
    from cola.tracking.location import outbox_dir, tracking_uri
    from cola.tracking.replay import pending, sync

    with user_errors():
        waiting = pending()
        if not waiting:
            out.print(f"nothing to sync: {outbox_dir()} holds no run")
            return
        result = sync()
        out.print(f"synced {len(waiting)} run(s) to {tracking_uri()}: {len(result.created)} created, "
                  f"{len(result.completed)} completed, {len(result.already)} already there")
