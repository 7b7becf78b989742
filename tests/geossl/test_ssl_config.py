"""Training configs: the recipes validate; a mistake is one line naming file, key and value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from geossl.cli import main
from geossl.config import load_config

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "train"


@pytest.mark.parametrize("recipe", sorted(RECIPES.rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(recipe: Path) -> None:
    config = load_config(recipe, ["data.source=/somewhere"])
    assert config.data.source == "/somewhere"


def test_paper_values_are_the_defaults() -> None:
    config = load_config(RECIPES / "csf.yaml")
    csf = config.method
    assert (csf.temperature, csf.dropout.rate, csf.dropout.warmup_batches) == (0.1, 0.66, 8000)
    assert csf.layer_weights == {"layer3": 1.0, "layer4": 2.0}
    assert (config.optim.name, config.optim.lr, config.optim.warmup_steps) == ("adam", 1e-3, 3000)
    assert config.optim.grad_clip == 1.0 and config.model.arch == "resnet50"


SCALING = "expected a number > 0, 'bands' or null"


@pytest.mark.parametrize(
    ("change", "overrides", "expected"),
    [
        ({"method": {"name": "csf", "temprature": 0.2}}, [], "method.temprature: unknown key"),
        ({}, ["method.temperature=cold"], "method.temperature: got 'cold'; expected a valid num"),
        ({"method": {"name": "simclr"}}, [], "method.name: got 'simclr'; expected one of: csf"),
        ({}, ["trainer.steps=0"], "trainer.steps: got 0; expected greater than or equal to 1"),
        ({}, ["model.arch=vit"], "model.arch: got 'vit'; expected 'resnet18' or 'resnet50'"),
        ({}, ["nonsense"], "--set 'nonsense': expected KEY.PATH=VALUE"),
        ({}, ["method.inference_scaling=-3"], f"inference_scaling: got -3; {SCALING}"),
        ({}, ["method.inference_scaling=all"], f"inference_scaling: got 'all'; {SCALING}"),
        ({}, ["method.tap=post"], "method.tap: got 'post'; expected 'residual_sum' or 'relu'"),
    ],
)
def test_a_bad_config_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, change: dict, overrides: list, expected: str
) -> None:
    config = {"method": {"name": "csf"}, "data": {"source": str(tmp_path)}, **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["train", str(path), "-o", str(tmp_path / "run")]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert expected in err
    if not expected.startswith("--set"):
        assert str(path) in err
    assert not (tmp_path / "run").exists()


def test_a_missing_dataset_leaves_no_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"method": {"name": "csf"}, "data": {"source": "nowhere"}}))
    assert main(["train", str(path), "-o", str(tmp_path / "run")]) == 2
    assert "nowhere: not a directory" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_missing_file_and_bad_yaml(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", str(tmp_path / "none.yaml"), "-o", str(tmp_path / "r")]) == 2
    assert "none.yaml: config file not found" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("method: [unclosed\n")
    assert main(["train", str(tmp_path / "broken.yaml"), "-o", str(tmp_path / "r")]) == 2
    assert "broken.yaml: not valid YAML at line" in capsys.readouterr().err
