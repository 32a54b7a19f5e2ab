"""Typed params validation: every bad value stops with one line naming the dotted key."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from cola.config import (
    ParamsError,
    flatten,
    from_dict,
    help_table,
    load_params,
    load_section,
    missing_help,
)
from cola.errors import ColaError, cli_main


@dataclass
class Optim:
    lr: float = field(default=1e-3, metadata={"help": "learning rate", "min": 0, "exclusive_min": True})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99], metadata={"help": "Adam betas", "max": 1})


@dataclass
class Toy:
    steps: int = field(default=10, metadata={"help": "optimizer steps", "min": 1})
    dropout: float = field(
        default=0.0, metadata={"help": "dropout", "min": 0, "max": 1, "exclusive_max": True}
    )
    head: Literal["residual", "output"] = field(default="residual", metadata={"help": "action head"})
    device: str = field(default="cpu", metadata={"help": "device", "choices": ["cpu", "cuda"]})
    compile: bool = field(default=False, metadata={"help": "torch.compile"})
    max_tokens: int | None = field(default=None, metadata={"help": "cap", "min": 1})
    layers: list[int] = field(default_factory=lambda: [2, 2], metadata={"help": "layers per block", "min": 1})
    weights: dict[str, float] = field(default_factory=dict, metadata={"help": "reward weights", "min": 0})
    optim: Optim = field(default_factory=Optim, metadata={"help": "optimizer"})


def err(data: dict) -> str:
    with pytest.raises(ParamsError) as info:
        from_dict(Toy, data, "latent")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("params.yaml: ")
    return message


def test_defaults_and_conversion() -> None:
    cfg = from_dict(Toy, {"steps": 3, "dropout": 0, "optim": {"lr": "3e-4"}, "max_tokens": None}, "latent")
    assert cfg.steps == 3 and cfg.dropout == 0.0 and isinstance(cfg.dropout, float)
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == [0.9, 0.99] and cfg.layers == [2, 2] and cfg.head == "residual"
    assert from_dict(Toy, None, "latent") == Toy()  # `latent:` with nothing under it


def test_unknown_key_lists_known_keys_and_suggests() -> None:
    message = err({"stepz": 3})
    assert message.startswith("params.yaml: latent.stepz is not a known key (known: steps, dropout, head,")
    assert "did you mean 'steps'?" in message


def test_nested_unknown_key_and_nested_value() -> None:
    assert "latent.optim.lrr is not a known key (known: lr, betas)" in err({"optim": {"lrr": 1}})
    assert err({"optim": {"lr": -0.001}}) == "params.yaml: latent.optim.lr must be > 0 (got -0.001)"
    assert (
        err({"optim": {"betas": [0.9, 1.5]}}) == "params.yaml: latent.optim.betas[1] must be <= 1 (got 1.5)"
    )
    assert "latent.optim must be a mapping" in err({"optim": 3})


def test_wrong_types() -> None:
    assert err({"steps": "ten"}) == "params.yaml: latent.steps must be an integer (got 'ten')"
    assert err({"steps": 2.5}) == "params.yaml: latent.steps must be an integer (got 2.5)"
    assert err({"compile": "yes"}) == "params.yaml: latent.compile must be true or false (got 'yes')"
    assert err({"device": 1}) == "params.yaml: latent.device must be a string (got 1)"
    assert err({"layers": 3}) == "params.yaml: latent.layers must be a list, list[int] (got 3)"
    assert err({"layers": [1, "x"]}) == "params.yaml: latent.layers[1] must be an integer (got 'x')"
    assert err({"weights": {"fmt": "a"}}) == "params.yaml: latent.weights.fmt must be a number (got 'a')"
    assert err({"max_tokens": "many"}) == "params.yaml: latent.max_tokens must be int | None (got 'many')"
    assert "must be a number, not NaN" in err({"dropout": float("nan")})


def test_bool_is_not_an_int() -> None:
    assert err({"steps": True}) == "params.yaml: latent.steps must be an integer (got True, a bool)"
    assert "latent.dropout must be a number" in err({"dropout": False})


def test_ranges() -> None:
    assert err({"steps": 0}) == "params.yaml: latent.steps must be >= 1 (got 0)"
    assert err({"dropout": 1.0}) == "params.yaml: latent.dropout must be < 1 (got 1.0)"
    assert err({"max_tokens": 0}) == "params.yaml: latent.max_tokens must be >= 1 (got 0)"
    assert err({"weights": {"fmt": -1}}) == "params.yaml: latent.weights.fmt must be >= 0 (got -1.0)"
    assert from_dict(Toy, {"max_tokens": 5, "dropout": 0.5}, "latent").max_tokens == 5


def test_choices_and_literal() -> None:
    assert err({"device": "tpu"}) == "params.yaml: latent.device must be one of 'cpu', 'cuda' (got 'tpu')"
    assert err({"head": "big"}) == "params.yaml: latent.head must be one of 'residual', 'output' (got 'big')"
    assert from_dict(Toy, {"head": "output"}, "latent").head == "output"


def test_required_field_and_post_init() -> None:
    @dataclass
    class Needs:
        batch: int = field(metadata={"help": "batch"})
        group: int = field(default=2, metadata={"help": "group"})

        def __post_init__(self) -> None:
            if self.batch % self.group:
                raise ValueError(f"batch ({self.batch}) must be divisible by group ({self.group})")

    with pytest.raises(ParamsError, match=r"^params.yaml: rl.batch is required"):
        from_dict(Needs, {}, "rl")
    with pytest.raises(ParamsError, match=r"^params.yaml: rl is invalid: batch \(3\) must be divisible"):
        from_dict(Needs, {"batch": 3}, "rl")


def test_str_number_for_float_from_yaml(tmp_path: Path) -> None:
    # PyYAML reads 1e-4 (no dot) as the string "1e-4"; `dvc exp run -S` may write either form.
    path = tmp_path / "params.yaml"
    path.write_text("latent:\n  optim:\n    lr: 1e-4\n  steps: 5\n")
    assert load_params(path)["latent"]["optim"]["lr"] == "1e-4"
    cfg = load_section(Toy, "latent", path)
    assert cfg.optim.lr == pytest.approx(1e-4) and cfg.steps == 5


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="nope.yaml: file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("latent:\n  lr: [1, 2\n")
    with pytest.raises(ParamsError, match=r"invalid YAML at line \d+, column \d+"):
        load_params(bad)
    good = tmp_path / "params.yaml"
    good.write_text("latent:\n  steps: -1\n")
    with pytest.raises(ParamsError, match="section 'bc' is missing"):
        load_section(Toy, "bc", good)
    with pytest.raises(ParamsError) as info:
        load_section(Toy, "latent", good)
    assert str(info.value) == f"{good}: latent.steps must be >= 1 (got -1)"


def test_flatten() -> None:
    flat = flatten(Toy(weights={"fmt": 0.1}))
    assert flat["steps"] == 10 and flat["optim.lr"] == 1e-3 and flat["max_tokens"] is None
    assert flat["layers"] == "[2, 2]" and json.loads(flat["optim.betas"]) == [0.9, 0.99]
    assert flat["weights.fmt"] == 0.1
    assert flatten({"rl": {"lr": 1, "p": Path("a/b")}}, prefix="x") == {"x.rl.lr": 1, "x.rl.p": "a/b"}
    assert flatten({"empty": {}}) == {"empty": "{}"}


def test_help_table_and_missing_help() -> None:
    rows = {name: (tp, default, text) for name, tp, default, text in help_table(Toy)}
    assert rows["steps"] == ("int", "10", "optimizer steps")
    assert rows["head"][0] == "'residual' | 'output'"
    assert rows["max_tokens"][:2] == ("int | None", "null")
    assert rows["optim.lr"] == ("float", "0.001", "learning rate")  # nested fields are expanded
    assert "optim" not in rows
    assert missing_help(Toy) == []

    @dataclass
    class Undocumented:
        x: int = 1

    assert missing_help(Undocumented) == ["x"]


def test_cli_main_returns_value_and_reports_user_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(lambda: 7) == 7
    for exc, expected in [
        (ParamsError("params.yaml: latent.lr must be > 0 (got -0.001)"), "latent.lr must be > 0"),
        (ColaError("checkpoint x is bad"), "checkpoint x is bad"),
        (
            FileNotFoundError(2, "No such file", "data/prepared/train.jsonl"),
            "data/prepared/train.jsonl: file not found",
        ),
    ]:

        def boom(exc: Exception = exc) -> None:
            raise exc

        with pytest.raises(SystemExit) as info:
            cli_main(boom)
        assert info.value.code == 2
        captured = capsys.readouterr().err
        assert captured.startswith("error: ") and expected in captured and captured.count("\n") == 1
    with pytest.raises(RuntimeError):  # bugs keep their traceback
        cli_main(lambda: (_ for _ in ()).throw(RuntimeError("bug")))


def test_cli_main_in_a_process_prints_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("latent:\n  lr: -0.001\n")
    code = (
        "from dataclasses import dataclass, field\n"
        "from cola.config import load_section\nfrom cola.errors import cli_main\n"
        "@dataclass\n"
        "class C:\n"
        "    lr: float = field(default=1e-3, metadata={'help': 'lr', 'min': 0, 'exclusive_min': True})\n"
        "cli_main(lambda: load_section(C, 'latent'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr == "error: params.yaml: latent.lr must be > 0 (got -0.001)\n"



@dataclass
class _Inner:
    lr: float = field(default=2e-3, metadata={"help": "lr"})
    steps: int = field(default=10, metadata={"help": "steps"})


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=lambda: _Inner(lr=1e-3), metadata={"help": "inner"})


def test_partial_nested_section_keeps_the_fields_own_defaults():
    """A nested field whose default_factory differs from the class defaults keeps those values."""
    assert from_dict(_Outer, {"inner": {"steps": 5}}, "x").inner == _Inner(lr=1e-3, steps=5)


def test_the_ablation_scripts_overrides_are_valid_params() -> None:
    """Every arm of experiments/rl_ablation.sh (its `-S key=value` overrides together, with the common ones)
    names real params and valid values, so a queued arm cannot fail an hour in or silently set nothing."""
    import copy
    import re

    import yaml

    from cola.config import PipelineParams, from_dict

    root = Path(__file__).resolve().parents[1]
    script = (root / "experiments" / "rl_ablation.sh").read_text()
    base = yaml.safe_load((root / "params.yaml").read_text())
    override = re.compile(r"-S '?([\w.]+)=([^'\s\")]+)")
    common = override.findall(script[script.index("COMMON=(") : script.index("\n", script.index("COMMON=("))])
    arms = dict(re.findall(r'^  \[(\w+)\]="([^"]*)"', script, flags=re.MULTILINE))
    assert len(arms) >= 20 and common, (arms, common)
    for arm, words in arms.items():
        params = copy.deepcopy(base)
        for key, value in [*common, *override.findall(words)]:
            *parents, leaf = key.split(".")
            section = params
            for part in parents:
                section = section[part]
            assert leaf in section, f"{arm}: {key} is not a param"
            section[leaf] = yaml.safe_load(value)
        from_dict(PipelineParams, params, where="", source=f"experiments/rl_ablation.sh arm {arm}")
        assert words.split()[-1] in ("${COLA[*]}", "${TOKEN[*]}"), arm  # every arm names its target stage
