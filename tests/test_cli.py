"""The command line as a new user meets it: options anywhere, help that teaches, plans reused,
the demo world served by its own command, and exit codes that tell data problems apart."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from inspect_datasets import ROWS, edit_json, members_of, rewrite, write_dataset

import geoprep.demo.run
from geoprep.building.build import ensure_plan
from geoprep.cli import build_parser, main
from geoprep.core.errors import DATA_PROBLEMS_EXIT_CODE, SourceError, UserError
from geoprep.recipe.load import load_recipe

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def points_recipe(tmp_path: Path) -> Path:
    """A recipe that plans offline from a CSV of points (and names a section to build)."""
    csv = tmp_path / "points.csv"
    pd.DataFrame(
        {"id": ["a", "b", "c", "d"], "lat": [10.0, 11, 12, 13], "lon": [1.0, 2, 3, 4]}
    ).to_csv(csv, index=False)
    recipe = {
        "name": "points",
        "sampler": {"kind": "points", "path": str(csv), "id_column": "id"},
        "clusters": {"k": 2},
        "fmow_images": {"root": str(tmp_path / "fmow")},
    }
    path = tmp_path / "points.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [
        (["-v", "check", "r.yaml"], True),
        (["check", "-v", "r.yaml"], True),
        (["check", "r.yaml", "--verbose"], True),
        (["check", "r.yaml"], False),
        (["--verbose", "inspect", "out"], True),
    ],
)
def test_verbose_is_accepted_before_and_after_the_command(argv: list[str], verbose: bool) -> None:
    assert build_parser().parse_args(argv).verbose is verbose


def test_verbose_before_the_command_runs(points_recipe: Path) -> None:
    assert main(["-v", "check", str(points_recipe)]) == 0


def subcommand_help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_build_help_names_every_buildable_section_and_the_plan_option(capsys) -> None:
    text = subcommand_help("build", capsys)
    assert "imagery, audio or fmow_images section" in text
    assert "--plan DIR" in text and "geoprep plan" in text


def test_check_and_demo_explain_their_arguments(capsys) -> None:
    assert "recipe YAML file to validate" in subcommand_help("check", capsys)
    text = subcommand_help("demo", capsys)
    assert "world size when the world must be built" in text
    assert "--workers WORKERS build worker processes per dataset (default 2)" in text


def test_demo_passes_its_worker_count(monkeypatch, tmp_path: Path) -> None:
    calls = []
    monkeypatch.setattr(geoprep.demo.run, "run_demo", lambda out, **kw: calls.append((out, kw)))
    assert main(["demo", str(tmp_path), "--workers", "3", "--scale", "tiny"]) == 0
    assert calls == [(tmp_path, {"seed": 0, "scale": "tiny", "workers": 3, "train_steps": 100})]
    assert main(["demo", str(tmp_path), "--train-steps", "0"]) == 0
    assert calls[-1][1]["train_steps"] == 0
    assert main(["demo", str(tmp_path), "--workers", "0"]) == 2
    assert main(["demo", str(tmp_path), "--train-steps", "-1"]) == 2


@pytest.mark.parametrize("failing", [None, "train", "eval"])
def test_the_demo_ends_with_training_and_evaluation_of_every_method(monkeypatch, tmp_path, failing):
    ran = []

    def fake_run(command, **kwargs):
        ran.append(command)
        return subprocess.CompletedProcess(command, 1 if command[3] == failing else 0)

    monkeypatch.setattr(geoprep.demo.run.subprocess, "run", fake_run)
    if failing:
        with pytest.raises(UserError, match=f"geossl {failing}' of csf failed"):
            geoprep.demo.run.train_stage(tmp_path, 7)
        return
    results = geoprep.demo.run.train_stage(tmp_path, 30)
    methods = ["csf", "gassl", "caco", "soundingearth"]
    assert [r.dataset for r in results] == methods
    assert all(r.stage == "train" for r in results)
    assert [r.out for r in results] == [tmp_path / "runs" / m for m in methods]
    trains, evals = ran[0::2], ran[1::2]
    for method, train in zip(methods, trains, strict=True):
        assert train[1:4] == ["-m", "geossl", "train"]
        assert train[4].endswith(f"train/demo/{method}.yaml")
    assert f"data.source={tmp_path / 'csf'}" in trains[0] and "trainer.steps=30" in trains[0]
    # the other methods' runs are brief: their own step counts, never more than asked for
    briefs = {t.method: t.steps for t in geoprep.demo.run.DEMO_TRAININGS}
    assert f"trainer.steps={min(30, briefs['gassl'])}" in trains[1]
    assert f"data.source={tmp_path / 'fmow'}" in trains[1]
    assert f"data.source={tmp_path / 'caco'}" in trains[2]
    assert f"data.source={tmp_path / 'aporee'}" in trains[3]
    assert evals[0][3:] == ["eval", str(tmp_path / "runs" / "csf"), str(tmp_path / "csf-osm-eval")]
    assert evals[1][3:] == ["eval", str(tmp_path / "runs" / "gassl"), str(tmp_path / "fmow")]
    assert evals[2][-2:] == ["--slot", "t0"]
    recordings = str(tmp_path / "world" / "aporee" / "recordings.csv")
    assert evals[3][5:8] == [str(tmp_path / "aporee"), "--labels", recordings]
    assert evals[3][-2:] == ["--label-column", "land_cover"]
    ran.clear()
    geoprep.demo.run.train_stage(tmp_path, 3)
    assert all("trainer.steps=3" in train for train in ran[0::2])


def test_serve_demo_is_its_own_command(monkeypatch, tmp_path: Path, capsys) -> None:
    served = []
    monkeypatch.setattr("geoprep.demo.servers.serve_forever", served.append)
    assert main(["serve-demo", str(tmp_path)]) == 0
    assert served == [tmp_path]
    assert "WORLD" in subcommand_help("serve-demo", capsys)
    # the old magic first word is an ordinary argument error now, not a silent mode switch
    with pytest.raises(SystemExit) as done:
        main(["demo-world", "serve", str(tmp_path), "--scale", "tiny"])
    assert done.value.code == 2


def test_build_reuses_the_plan_made_by_geoprep_plan(points_recipe: Path, tmp_path: Path) -> None:
    planned = tmp_path / "planned"
    assert main(["plan", str(points_recipe), "-o", str(planned), "--json"]) == 0
    recipe = load_recipe(points_recipe)
    stamp = (planned / "locations.parquet").stat().st_mtime_ns

    with_option = ensure_plan(recipe, str(tmp_path / "out1"), plan_dir=str(planned))
    assert sorted(with_option["id"]) == ["a", "b", "c", "d"]
    assert not (tmp_path / "out1" / "plan").exists()

    # `geoprep plan -o OUT` then `geoprep build -o OUT`: the plan in OUT is used as it is
    same_out = ensure_plan(recipe, str(planned))
    assert sorted(same_out["id"]) == ["a", "b", "c", "d"]
    assert not (planned / "plan").exists()
    assert (planned / "locations.parquet").stat().st_mtime_ns == stamp


def test_a_plan_of_other_sections_or_no_plan_is_refused(points_recipe: Path, tmp_path) -> None:
    planned = tmp_path / "planned"
    assert main(["plan", str(points_recipe), "-o", str(planned), "--json"]) == 0
    other_seed = load_recipe(points_recipe, ["seed=7"])
    with pytest.raises(
        UserError, match="planned from other seed, sampler, clusters, splits than points"
    ):
        ensure_plan(other_seed, str(tmp_path / "out"), plan_dir=str(planned))
    with pytest.raises(UserError, match="no plan.json there"):
        ensure_plan(other_seed, str(tmp_path / "out"), plan_dir=str(tmp_path / "nothing"))
    # without --plan, a plan of other sections in OUT is not used: a new one goes to OUT/plan
    ensure_plan(other_seed, str(planned))
    plan_json = json.loads((planned / "plan" / "plan.json").read_text())
    assert plan_json["plan_digest"] == other_seed.plan_digest()


def test_inspect_exit_codes_tell_data_problems_from_sources(tmp_path: Path, capsys) -> None:
    codes = {DATA_PROBLEMS_EXIT_CODE, SourceError.exit_code, UserError.exit_code, 0}
    assert len(codes) == 4, "every outcome has its own code"
    clean = tmp_path / "clean"
    write_dataset(clean, ROWS[:4])
    assert main(["inspect", str(clean), "--no-stats"]) == 0
    broken = tmp_path / "broken"
    write_dataset(broken, ROWS[:4])
    tar = broken / "shards" / "00000.tar"
    rewrite(tar, edit_json(f"{ROWS[0]['id']}.json", lambda doc: doc.pop("lat"))(members_of(tar)))
    assert main(["inspect", str(broken), "--no-stats"]) == DATA_PROBLEMS_EXIT_CODE
    assert main(["inspect", str(tmp_path / "missing")]) == UserError.exit_code
    readme = README.read_text()
    assert f"| {DATA_PROBLEMS_EXIT_CODE} | inspect found problems in the data" in readme
