"""The architecture's rules, checked on the source: import layering, no import circles, one definition of each
params field, torch-free configuration, stage scripts wired by dvc.yaml, short modules.

The import graph is read from the source with `ast` (every ``import`` statement, at module level or inside a
function: a lazy import is still a dependency). An edge goes to the module named (``from cola.x import y``
names ``cola.x.y`` when that is a module, else ``cola.x``), not to its parent packages: that is Python's own
rule for what must be loaded first, and what import-linter and similar tools check.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
import time
import typing
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cola"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def imports_of(path: Path) -> frozenset[str]:
    """The cola modules a file imports, anywhere in it."""
    found = set()
    known = modules()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [n if n in known else node.module for n in names]
        else:
            continue
        found.update(n for n in names if n == "cola" or n.startswith("cola."))
    found.discard(module_name(path))  # `python -m` entry points import themselves by name: not a circle
    return frozenset(n for n in found if n in known)


def trivial(name: str) -> bool:
    """A module with nothing but a docstring and plain assignments (an empty package ``__init__``, the root's
    version string): importing it runs no code worth tracking, so no stage needs it as a dep."""
    tree = ast.parse(modules()[name].read_text(encoding="utf-8"))
    return all(isinstance(n, ast.Expr | ast.Assign) for n in tree.body)


def closure(start: Path) -> set[str]:
    """Every cola module the file at `start` needs, transitively (parent packages' __init__ included: Python
    runs them when it imports a submodule), except trivial ones."""
    seen: set[str] = set()
    todo = list(imports_of(start))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(2, len(parts)))  # its parent packages
        todo.extend(imports_of(modules()[name]))
    return {name for name in seen if not trivial(name)}


def test_the_root_package_imports_nothing():
    assert not imports_of(PACKAGE / "__init__.py")
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    assert all(isinstance(n, ast.Expr | ast.Assign) for n in tree.body)


def circles(graph: dict[str, frozenset[str] | set[str]]) -> list[str]:
    """The modules from which an import path leads back to themselves."""
    found = []
    for start in graph:
        todo, seen = list(graph[start]), set()
        while todo:
            name = todo.pop()
            if name == start:
                found.append(start)
                break
            if name not in seen:
                seen.add(name)
                todo.extend(graph.get(name, ()))
    return sorted(found)


def test_no_module_imports_a_module_that_imports_it_back():
    """No import circle, direct or through other modules."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c"]  # the check can fail
    graph = {name: imports_of(path) for name, path in modules().items()}
    assert not circles(graph), f"modules on an import circle: {circles(graph)}"


LAYERS = {  # a module may import its own layer and the layers below it, never one above
    "cola.errors": 0, "cola.io": 0, "cola.results": 0, "cola.tasks": 1,
    "cola.config": 2, "cola.comparison": 2, "cola.plots": 2, "cola.model": 3,
    "cola.base": 4, "cola.data": 4, "cola.eval": 5, "cola.train": 6,
    "cola.rl": 7, "cola.search": 7, "cola.report": 7, "cola.tracking": 7, "cola.envs": 8, "cola.pipeline": 8,
    "cola.cli": 8,
}


def layer(name: str) -> int:
    match = max((prefix for prefix in LAYERS if name == prefix or name.startswith(prefix + ".")), key=len)
    return LAYERS[match]


def test_nothing_imports_upward():
    upward = [(name, target) for name, path in modules().items() for target in imports_of(path)
              if layer(target) > layer(name)]
    assert not upward, upward


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_config_package_imports_no_torch():
    result = run_python("import sys, cola.config, cola.config.profiles; import cola.pipeline\n"
                        "heavy = [m for m in ('torch', 'transformers', 'mlflow', 'reasoning_gym') "
                        "if m in sys.modules]\n"
                        "print(heavy)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_prepare_stage_runs_without_torch(tmp_path):
    """A pure-Python stage pays for no deep-learning import: the whole `prepare` stage, smoke profile."""
    from cola.config.profiles import write_profile

    params = write_profile("smoke", REPO / "configs" / "profiles", tmp_path / "params.yaml")
    env = {"COLA_PARAMS": str(params), "COLA_TRACKING": "off", "PATH": str(Path(sys.executable).parent)}
    argv = ["stages/prepare.py", "--out", str(tmp_path / "data"), "--metrics", str(tmp_path / "prepare.json"),
            "--headline", str(tmp_path / "headline.json")]
    result = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & {"torch", "transformers"}, imported & {"torch", "transformers"}
    assert (tmp_path / "data" / "tasks" / "test" / "arith.jsonl").is_file()


# --------------------------------------------------------------------------------------------- params


def schema_classes() -> list[type]:
    """Every dataclass reachable from PipelineParams (the params.yaml schema)."""
    from cola.config import PipelineParams

    found, todo = [], [PipelineParams]
    while todo:
        cls = todo.pop()
        if cls in found:
            continue
        found.append(cls)
        hints = typing.get_type_hints(cls)
        todo.extend(tp for tp in hints.values() if isinstance(tp, type) and dataclasses.is_dataclass(tp))
        todo.extend(base for base in cls.__mro__[1:] if dataclasses.is_dataclass(base))
    return found


def own_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The fields a class declares in its own body (inherited ones excluded)."""
    declared = cls.__dict__.get("__annotations__", {})
    return {f.name: f for f in dataclasses.fields(cls) if f.name in declared}


def field_copies(classes: list[type]) -> list[str]:
    """Fields defined twice: a subclass that redeclares a base's field with other help or rules (not just
    another default), or two unrelated classes declaring the same field with the same help (one copied the
    other)."""
    problems = []
    declared: dict[tuple[str, str], type] = {}
    for cls in classes:
        inherited = {f.name: f for base in reversed(cls.__mro__[1:]) if dataclasses.is_dataclass(base)
                     for f in dataclasses.fields(base)}
        for name, field in own_fields(cls).items():
            if name in inherited:
                if field.metadata != inherited[name].metadata:
                    problems.append(f"{cls.__name__}.{name} redefines an inherited field "
                                    "instead of its default")
                continue
            key = (name, field.metadata.get("help", ""))
            other = declared.setdefault(key, cls)
            if other is not cls and not (issubclass(cls, other) or issubclass(other, cls)):
                problems.append(f"{cls.__name__}.{name} copies {other.__name__}.{name}")
    return problems


def test_every_params_field_is_defined_once():
    """A field is declared once, in cola/config; a subclass may change its default but not its meaning, and no
    section copies another's fields."""
    from cola.config import OptimConfig, override, param

    @dataclasses.dataclass
    class Copy:  # what RLConfig once was to GRPOConfig
        lr: float = param(1.0, OptimConfig.__dataclass_fields__["lr"].metadata["help"])

    @dataclasses.dataclass
    class Redefined(OptimConfig):
        steps: int = param(3, "Another meaning.")

    @dataclasses.dataclass
    class Overridden(OptimConfig):
        steps: int = override(OptimConfig, "steps", 3)

    assert field_copies([OptimConfig, Copy, Redefined, Overridden]) == [
        "Copy.lr copies OptimConfig.lr",
        "Redefined.steps redefines an inherited field instead of its default"]
    classes = schema_classes()
    assert all(cls.__module__.startswith("cola.config") for cls in classes), \
        [cls for cls in classes if not cls.__module__.startswith("cola.config")]
    assert not field_copies(classes)


def test_the_model_config_takes_its_architecture_from_the_params():
    from cola.config import CoLAArchitecture
    from cola.model import CoLAConfig

    defaults = dataclasses.asdict(CoLAArchitecture())
    config = CoLAConfig()
    assert {name: getattr(config, name) for name in defaults} == defaults
    assert CoLAConfig(n_policy_layers=3).architecture() == CoLAArchitecture(n_policy_layers=3)


# --------------------------------------------------------------------------------------------- stages


def dvc_stages() -> dict[str, dict]:
    """dvc.yaml's stages with foreach entries expanded (``rl@cola-math``, ...)."""
    from cola.tracking.experiment import expanded_stages

    return expanded_stages(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"], resolve=_resolve)


def test_persistent_outputs_are_cached():
    """A `persist: true` output (the checkpoints) must be in DVC's cache: `dvc exp run --queue/--temp` runs in
    a copy of the commit, where an uncached, git-ignored output is missing, so DVC re-runs its stage (and
    everything after it) instead of checking the stage's outputs out of the cache."""
    for name, spec in dvc_stages().items():
        for out in spec.get("outs", []):
            if isinstance(out, dict):
                path, options = next(iter(out.items()))
                assert not (options.get("persist") and options.get("cache") is False), f"{name}: {path}"


def _resolve(value: str) -> str:
    """A dvc.yaml value with its ``${section.key}`` references to params.yaml filled in, as DVC does."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())

    def lookup(match: re.Match) -> str:
        found = params
        for part in match.group(1).split("."):
            found = found[part]
        return str(found)

    return re.sub(r"\$\{([\w.]+)\}", lookup, value)


@pytest.mark.parametrize("start", ["fta", "bc"])
def test_rl_cola_start_rewires_the_cola_runs(tmp_path, monkeypatch, start):
    """`-S rl.cola_start=<start>` makes the rl@cola-* entries start from (and depend on) models/<start>, as
    DVC resolves dvc.yaml; the token runs keep models/sft."""
    from dvc.repo import Repo

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["rl"]["cola_start"] = start
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)  # DVC resolves dvc.yaml's ${...} against the working directory's params
    Repo.init(".")
    stages = {s.addressing: s for s in Repo(".").index.stages}
    starts = {name: [str(d.def_path) for d in stages[name].deps if str(d.def_path).startswith("models/")]
              for name in ("rl@cola-math", "rl@cola-countdown", "rl@token-math")}
    assert starts == {"rl@cola-math": [f"models/{start}"], "rl@cola-countdown": [f"models/{start}"],
                      "rl@token-math": ["models/sft"]}
    assert f"--start models/{start}" in stages["rl@cola-math"].cmd


def script_of(spec: dict) -> Path:
    words = spec["cmd"].split()
    assert words[:2] == ["python", words[1]] and words[1].startswith("stages/"), spec["cmd"]
    return REPO / words[1]


def covered(module: str, deps: list[str]) -> bool:
    path = modules()[module].relative_to(REPO).as_posix()
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_stage_deps_cover_every_module_it_imports(stage):
    spec = dvc_stages()[stage]
    script = script_of(spec)
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec["deps"]]
    assert script.relative_to(REPO).as_posix() in deps, f"{stage}: its own script is not a dep"
    needed = closure(script)
    missing = sorted(m for m in needed if not covered(m, deps))
    assert not missing, (f"{stage}: dvc.yaml deps miss "
                         f"{', '.join(modules()[m].relative_to(REPO).as_posix() for m in missing)}")
    unused = [d for d in deps if d.startswith("cola/") and not any(covered(m, [d]) for m in needed)]
    assert not unused, f"{stage}: dvc.yaml deps list code it never imports: {unused}"


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_stage_paths_come_from_its_cmd(stage):
    """Every --option of the cmd is a path the stage declares (or a choice), and the script hard-codes
    none."""
    spec = dvc_stages()[stage]
    words = spec["cmd"].split()[2:]
    options = dict(zip(words[::2], words[1::2], strict=True))
    declared = {(d if isinstance(d, str) else next(iter(d))) for key in ("deps", "outs", "metrics", "plots")
                for d in spec.get(key, [])}
    for option, value in options.items():
        if option in ("--method", "--task"):
            continue
        assert any(value == d or d.startswith(value.rstrip("/") + "/") or value.startswith(d + "/")
                   for d in declared), \
            f"{stage}: {option} {value} is not declared in its deps, outs, metrics or plots"
    source = script_of(spec).read_text()
    hard_coded = re.findall(r"""["'](?:data|models|metrics|plots|checkpoints|eval|eval_rl|report)/"""
                            r"""|Path\(["']""", source)
    assert not hard_coded, f"{script_of(spec).name} hard-codes a path: {hard_coded}"


def test_a_bad_params_file_is_refused_before_the_heavy_imports(tmp_path):
    """Every stage validates params.yaml first: one line, exit 2, in well under 2 s (no torch, no MLflow)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("latent:\n  lrr: 0.1\n")
    env = {"COLA_PARAMS": str(bad), "PATH": str(Path(sys.executable).parent), "COLA_TRACKING": "off"}
    scripts = {script_of(spec): spec["cmd"].split()[1:] for spec in dvc_stages().values()}
    for script, argv in sorted(scripts.items()):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60)
        seconds = time.perf_counter() - start
        assert result.returncode == 2, (script.name, result.stderr[-2000:])
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "latent.lrr is not a known key" in errors[0], errors
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                    if line.startswith("import time:")}
        heavy = imported & {"torch", "transformers", "mlflow", "reasoning_gym"}
        assert not heavy, (script.name, heavy)
        assert seconds < 2, f"{script.name} took {seconds:.1f} s to refuse a bad params file"


# --------------------------------------------------------------------------------------------- size


def test_modules_are_short_or_say_why():
    """One job per module: none over about 400 lines unless its docstring gives the reason
    ("Long because")."""
    long = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 420 and "Long because" not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{name} ({text.count(chr(10))} lines)")
    assert not long, long
