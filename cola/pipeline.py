"""The shape every DVC stage shares: paths from its `cmd`, params validated first, one tracking run.

A stage script (`stages/<name>.py`) is short and reads top to bottom::

    def main(stage: StageContext) -> None:
        from cola.train.bc import run_bc          # heavy imports after the params are validated
        result = run_bc(stage.cfg, stage.args.corpus, ...)    # one library call
        stage.finish(result, figures={"loss": stage.args.loss_plot})

    if __name__ == "__main__":
        run_stage("bc", main, paths=["corpus", "latent", "out", "checkpoints", "loss_plot", "loss_curve"])

`run_stage` parses the paths dvc.yaml's `cmd` gives it (``--corpus data/corpus ...``: the stage contract lives
in dvc.yaml, the example-get-started habit), validates the *whole* params.yaml (a bad key anywhere stops any
stage with one line, in well under a second, before torch or MLflow is imported, and nothing on disk changes),
opens the stage's MLflow run (`cola.tracking.StageRun`), calls `main`, and on success writes the stage's two
metrics files: ``--metrics`` (every number it measured) and ``--headline`` (its headline numbers,
`cola.tracking.headline`: the DVC metrics file, so ``dvc exp show`` fits a screen). Every stage takes both.

A training stage (``run_stage(..., launchable=True)``) whose ``launch`` params ask for several processes
re-runs itself under ``accelerate launch`` (`launch_command`); the worker processes train with the main one
but track and write nothing (`cola.train.distributed`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cola.config import LaunchConfig, PipelineParams, flatten, load_stage_config
from cola.config.launch import GRADIENT_CHECKPOINTING_ENV
from cola.errors import ColaError, cli_main
from cola.io import atomic_write_json, is_main_process
from cola.results import StageResult

METRICS_PATHS = ("metrics", "headline")  # every stage writes both (StageRun), so no stage lists them


@dataclass
class StageContext:
    """What a stage's `main` gets: its params section, its paths and options (`args`), its tracking run."""

    name: str
    cfg: Any
    params: PipelineParams
    args: argparse.Namespace
    run: Any  # cola.tracking.StageRun; None in the worker processes of a multi-process stage

    def on_log(self, step: int, metrics: dict[str, Any]) -> None:
        """Step metrics from a trainer, to the tracking run."""
        if self.run is not None:
            self.run.log_metrics(metrics, step)

    def finish(self, result: StageResult, figures: Mapping[str, Path] | None = None,
               records: Mapping[str, Path] | None = None) -> None:
        """Save each named figure / record to its DVC path and log everything to the run; metrics last."""
        if self.run is None:  # a worker process: the main one writes
            return
        from cola.plots import plt
        from cola.tracking.models import registered_name

        for name, path in (figures or {}).items():
            self.run.log_figure(result.figures[name], f"plots/{Path(path).name}", save_to=path)
            plt.close(result.figures[name])
        for name, path in (records or {}).items():
            atomic_write_json(path, result.records[name])
            self.run.log_artifact(path, "records")
        for path in result.artifacts:
            self.run.log_artifact(path)
        for path in result.outputs:
            self.run.log_output(path)
        tracking = self.params.tracking
        for path in result.models:
            registry_name = (registered_name(tracking.registry_prefix, self.run.run_name)
                             if self.name in tracking.register else None)
            self.run.log_model(path, attach_up_to_mb=tracking.attach_models_up_to_mb,
                               registry_name=registry_name)
        self.run.summary(result.metrics)


def stage_parser(name: str, paths: Sequence[str],
                 choices: Mapping[str, Sequence[str]]) -> argparse.ArgumentParser:
    """``--<path> PATH`` for every path (all required: dvc.yaml's cmd gives them) plus the choice options."""
    parser = argparse.ArgumentParser(prog=f"stages/{name}.py",
                                     description=f"DVC stage {name} (see dvc.yaml).")
    for option, values in choices.items():
        parser.add_argument(f"--{option.replace('_', '-')}", required=True, choices=list(values))
    for path in paths:
        parser.add_argument(f"--{path.replace('_', '-')}", required=True, type=Path, metavar="PATH")
    return parser


def run_stage(name: str, main: Callable[[StageContext], None], *, paths: Sequence[str],
              choices: Mapping[str, Sequence[str]] | None = None, argv: Sequence[str] | None = None,
              launchable: bool = False, section: str | None = None) -> None:
    """Run stage `name`: parse its paths (and ``metrics``, ``headline``), validate params, track, call `main`.

    A stage with `choices` (the ``rl@<method>-<task>`` entries) is tracked as ``name@<values joined by ->``
    with each choice as a tag. A `launchable` stage (one that trains through `cola.train.core`) runs under
    ``accelerate launch`` when the ``launch`` params ask for several processes. The stage reads the params
    section `section` (default: its own name; the agent stages share ``agent``). User errors exit with one
    ``error:`` line and code 2 (`cola.errors.cli_main`).
    """
    cli_main(_run, name, main, paths, choices or {}, argv, launchable, section or name)


def launch_command(launch: LaunchConfig, script: str, argv: Sequence[str]) -> list[str]:
    """``python -m accelerate.commands.launch <the launch params> <script> <argv>``.

    ``COLA_MACHINE_RANK`` (e.g. ``$SLURM_NODEID``) overrides ``launch.machine_rank``: every machine reads the
    same params.yaml, but each has its own rank."""
    rank = os.environ.get("COLA_MACHINE_RANK", str(launch.machine_rank))
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--num_processes", str(launch.num_processes), "--num_machines", str(launch.num_machines),
               "--machine_rank", rank, "--mixed_precision", launch.mixed_precision,
               "--main_process_port", str(launch.main_process_port)]
    if launch.main_process_ip:
        command += ["--main_process_ip", launch.main_process_ip]
    if launch.config_file:
        if not Path(launch.config_file).is_file():
            raise ColaError(f"launch.config_file: no such file {launch.config_file!r} "
                            "(see configs/accelerate/)")
        command += ["--config_file", launch.config_file]
    else:  # torchrun's launcher: GPUs with NCCL, or CPU processes with gloo
        command += ["--multi_gpu"]
    return [*command, script, *argv]


def exit_on_sigterm() -> None:
    """Make SIGTERM (`kill`, a scheduler's preemption, DVC stopping its stage) exit through Python's
    unwinding, as an error does: the temporary folder of a half-written output is removed
    (`cola.io.atomic_dir`) instead of being left beside it. Exit code 143 (128 + SIGTERM), as for a kill."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def _run(name: str, main: Callable[[StageContext], None], paths: Sequence[str],
         choices: Mapping[str, Sequence[str]], argv: Sequence[str] | None, launchable: bool,
         section: str) -> None:
    exit_on_sigterm()
    paths = [*paths, *METRICS_PATHS]
    argv = list(sys.argv[1:] if argv is None else argv)
    args = stage_parser(name, paths, choices).parse_args(argv)
    cfg, params = load_stage_config(section)
    # Read by every Accelerator the trainers create, with one process or many.
    os.environ.setdefault("ACCELERATE_MIXED_PRECISION", params.launch.mixed_precision)
    os.environ.setdefault(GRADIENT_CHECKPOINTING_ENV, "1" if params.launch.gradient_checkpointing else "0")
    if launchable and params.launch.distributed and "LOCAL_RANK" not in os.environ:
        command = launch_command(params.launch, sys.argv[0], argv)
        print(f"{name}: launching {params.launch.num_processes} processes: {' '.join(command[1:])}",
              flush=True)
        os.execv(command[0], command)  # the launcher takes this process's place (DVC waits on it)
    if not is_main_process():  # a worker: trains with the main process, which tracks and writes
        main(StageContext(name, cfg, params, args, run=None))
        return
    from cola.tracking import StageRun  # after validation: MLflow's import costs seconds

    key = "-".join(getattr(args, option) for option in choices)
    run_name = f"{name}@{key}" if key else name
    tags = {option: getattr(args, option) for option in choices}
    # What distinguishes one entry of a foreach stage from another (method, task) and where it read and wrote
    # are params too, so comparing two stage runs in the UI shows them.
    run_params = {**flatten(cfg, prefix=section),
                  **{f"{name}.{option}": value for option, value in tags.items()},
                  **{f"{name}.path.{path}": str(getattr(args, path)) for path in paths}}
    with StageRun(run_name, params=run_params, profile=params.profile, tags=tags,
                  metrics_path=args.metrics, headline_path=args.headline, pipeline_params=flatten(params),
                  source=f"stages/{name}.py") as run:
        start = time.perf_counter()
        main(StageContext(name, cfg, params, args, run))
        timing = {"stage_seconds": time.perf_counter() - start}
        age = process_seconds()
        if age is not None:
            timing["process_seconds"] = age
        run.summary(timing)


def process_seconds() -> float | None:
    """Seconds since this process started, interpreter start-up and imports included (Linux), else None.

    `wall_clock_seconds` (StageRun) times the stage's own work; on a 2-core machine the imports and MLflow
    set-up add several seconds per stage, which this shows.
    """
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22 of proc(5): starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
