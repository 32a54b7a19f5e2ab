"""`cola profile` switches params.yaml to a scale profile (the defaults with a profile's overrides on top);
`cola params` shows what every key means, its type, its default and its value in a params file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cola.cli.app import CliError, app, err, out
from cola.errors import user_errors


@app.command()
def profile(
    name: Annotated[
        str | None,
        typer.Argument(
            help="Profile name, e.g. tiny, smoke, smollm2-135m, llama-3.1-8b; omit to list them.",
            show_default=False,
        ),
    ] = None,
    profiles_dir: Annotated[Path, typer.Option(help="Folder of profile override files.")] = Path(
        "configs/profiles"
    ),
    params: Annotated[Path, typer.Option(help="The params file to write.")] = Path("params.yaml"),
) -> None:
    """Switch params.yaml to a profile: the defaults with configs/profiles/NAME.yaml on top."""
    from cola.config.profiles import available_profiles, write_profile

    with user_errors():
        if name is None:
            names = available_profiles(profiles_dir)
            for item in names:
                out.print(item)
            if not names:
                err.print(f"no profiles in {profiles_dir}")
            return
        # Validated first, then written atomically: a bad profile changes nothing.
        write_profile(name, profiles_dir, params)
        source = profiles_dir / f"{name}.yaml"
        out.print(f"{params} <- defaults + {source} (profile {name}); run `dvc repro`")


@app.command()
def params(
    section: Annotated[
        str | None,
        typer.Argument(help="A section (latent) or a dotted key prefix (rl.tasks); omit for every key.",
                       show_default=False),
    ] = None,
    params_file: Annotated[
        Path, typer.Option("--params", help="The params file whose values to show.")
    ] = Path("params.yaml"),
) -> None:
    """Document the params: every key with its type, default, current value and help."""
    from rich.table import Table

    from cola.config import PipelineParams, flatten, help_table, load_pipeline_params

    with user_errors():
        current = flatten(load_pipeline_params(params_file)) if params_file.is_file() else {}
        rows = [row for row in help_table(PipelineParams)
                if section is None or row[0] == section or row[0].startswith(section + ".")]
        if not rows:
            known = sorted({name.split(".")[0] for name, *_ in help_table(PipelineParams)})
            raise CliError(f"no params key starts with {section!r}; sections: {', '.join(known)}")
        table = Table(title=f"params ({params_file} values)" if current else "params (defaults)")
        for column in ("key", "type", "default", "value", "help"):
            table.add_column(column, overflow="fold")
        for name, type_name, default, text in rows:
            value = current.get(name)
            shown = "" if value is None or str(value) == default else str(value)
            table.add_row(name, type_name, default, shown, text)
        out.print(table)
