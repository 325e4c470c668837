"""The config and the command line's setup errors: each a one-paragraph message, exit status 2, no traceback.

The error cases run ``python -m pipelines.run`` as a subprocess, as a user would; they stop before any model is
built, so each takes about a second.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medseg.config import Config, ConfigError, load_config, parse_overrides, save_config
from medseg.runner import RunLayout, check_setup, prepare_output
from pipelines.run import main
from tests.conftest import HANG_GUARD_S

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def run_cli(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.run", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def run_main(capsys: pytest.CaptureFixture[str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``pipelines.run.main`` in this process (same code path as the subprocess, a second faster)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse: --help, bad options
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def assert_usage_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit status 2, a message on stderr that is one paragraph (no blank line), no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert err, "no message on stderr"
    assert "Traceback" not in proc.stderr
    assert "\n\n" not in err, f"message is not one paragraph:\n{err}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"
    return err


def write_config(folder: Path, body: dict, name: str = "run.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(body))
    return path


def copy_sample(sample_hippo: Path, dest: Path, n: int = 4) -> Path:
    """A glob-layout dataset (images/ + labels/) of ``n`` real sample cases."""
    (dest / "images").mkdir(parents=True)
    (dest / "labels").mkdir()
    for image in sorted((sample_hippo / "imagesTr").glob("*.nii.gz"))[:n]:
        shutil.copy(image, dest / "images" / image.name)
        shutil.copy(sample_hippo / "labelsTr" / image.name, dest / "labels" / image.name)
    return dest


# ------------------------------------------------------------------------------------------ errors via the CLI
# The four errors of the acceptance criteria run as real subprocesses; the others call main() in-process.


def test_unknown_key_names_key_path_and_accepted_keys(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"data": {"root": str(tmp_path)}, "training": {"epohcs": 3}})
    assert_usage_error(run_cli(cfg), "training.epohcs", "did you mean 'epochs'", "max_minutes", str(cfg))


def test_setup_errors_are_reported_before_torch_is_imported(tmp_path: Path) -> None:
    """A wrong key or a missing folder costs the user no torch import (about 2 s of a usage error's 3)."""
    bad_key = write_config(tmp_path, {"training": {"epohcs": 3}})
    bad_root = write_config(tmp_path, {"data": {"root": "no_such_dataset"}}, name="root.yaml")
    probe = (
        "import sys\n"
        "from pipelines.run import main\n"
        f"codes = [main([{str(bad_key)!r}]), main([{str(bad_root)!r}])]\n"
        "print(codes, 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[2, 2] False", (proc.stdout, proc.stderr)


def test_unknown_section_lists_sections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, {"trainig": {"epochs": 3}})
    assert_usage_error(run_main(capsys, cfg), "unknown key 'trainig'", "training", "evaluation")


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"training": {"epochs": "ten"}})
    assert_usage_error(run_cli(cfg), "'training.epochs'", "integer", "'ten'")


def test_wrong_choice_lists_accepted_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, {"preprocessing": {"normalization": "minmax"}})
    assert_usage_error(
        run_main(capsys, cfg), "preprocessing.normalization", "'zscore'", "'ct'", "'percentile'", "'minmax'"
    )


def test_wrong_type_through_set_override(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(
        run_main(capsys, QUICKSTART, "--set", "loss.mode=tanh"), "loss.mode", "'sigmoid'", "'softmax'", "--set"
    )


def test_missing_data_folder(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"data": {"root": "no_such_dataset"}, "output": {"dir": "out"}})
    assert_usage_error(run_cli(cfg), "data.root", str(tmp_path / "no_such_dataset"), "does not exist")
    assert not (tmp_path / "out").exists(), "nothing is written when the setup fails"


def test_label_folder_that_does_not_match(tmp_path: Path, sample_hippo: Path) -> None:
    data = copy_sample(sample_hippo, tmp_path / "data")
    for label in (data / "labels").iterdir():  # labels renamed so their case ids no longer match the images
        label.rename(label.with_name("seg_" + label.name))
    cfg = write_config(tmp_path, {"data": {"root": "data", "classes": ["background", "a", "b"]}})
    err = assert_usage_error(run_cli(cfg), "label folder does not match", "4 of 4 images", "label_glob")
    assert "hippocampus_" in err  # names example cases


def test_msd_label_missing_for_some_cases(tmp_path: Path, sample_hippo: Path) -> None:
    data = tmp_path / "msd"
    shutil.copytree(sample_hippo, data)
    removed = sorted((data / "labelsTr").glob("*.nii.gz"))[:2]
    for label in removed:
        label.unlink()
    cfg = write_config(tmp_path, {"data": {"root": str(data)}})
    err = assert_usage_error(run_cli(cfg), "2 of 14 images", "labelsTr", "skip_bad_cases")
    assert removed[0].name.removesuffix(".nii.gz") in err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(run_main(capsys, tmp_path / "nope.yaml"), "nope.yaml", "does not exist")


def test_invalid_yaml_names_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data:\n  root: x\n training: [\n")
    assert_usage_error(run_main(capsys, cfg), "bad.yaml", "not valid YAML", "line")


def test_predict_without_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, {"output": {"dir": "out"}, "inference": {"input": str(tmp_path)}})
    assert_usage_error(run_main(capsys, cfg, "--stage", "predict"), "checkpoint", "best.pt", "--checkpoint")


def test_bad_stage_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    proc = run_main(capsys, QUICKSTART, "--stage", "fit")
    assert proc.returncode == 2 and "invalid stage" in proc.stderr and "Traceback" not in proc.stderr


def test_help_explains_stages_paths_and_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    proc = run_main(capsys, "--help")
    assert proc.returncode == 0
    for needle in ("--stage", "--set", "--input", "--output", "--checkpoint", "exit status", "predictions.csv"):
        assert needle in proc.stdout


# ------------------------------------------------------------------------------------------ config semantics


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, {"data": {"root": "d"}}))
    assert cfg.training.epochs == Config().training.epochs
    assert cfg.stages == ["train", "predict", "evaluate"]


def test_relative_paths_resolve_against_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    path = write_config(
        folder,
        {
            "data": {"root": "../data"},
            "inference": {"input": "scans", "checkpoint": "/abs/model.pt"},
            "output": {"dir": "~/medseg_out"},
        },
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    cfg = load_config(path)
    assert cfg.data.root == (tmp_path / "data").resolve()
    assert cfg.inference.input == (folder / "scans").resolve()
    assert cfg.inference.checkpoint == Path("/abs/model.pt")
    assert cfg.output.dir == Path("~/medseg_out").expanduser()


def test_set_overrides_values_sections_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, {"data": {"root": "d"}, "training": {"epochs": 10}})
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cfg = load_config(
        path,
        [
            "training.epochs=2",
            "training.max_minutes=0.5",
            "model.bilinear=true",
            "loss.class_weights=[0.5, 1, 2]",
            "augmentation.affine.prob=0",
            "data.root=rel/data",  # command-line paths are relative to the working directory
            "inference.checkpoint=null",
        ],
    )
    assert cfg.training.epochs == 2 and cfg.training.max_minutes == 0.5
    assert cfg.model.bilinear is True
    assert cfg.loss.class_weights == [0.5, 1.0, 2.0]
    assert cfg.augmentation.affine.prob == 0
    assert cfg.data.root == (cwd / "rel" / "data").resolve()
    assert cfg.inference.checkpoint is None


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        parse_overrides(["training.epochs"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(QUICKSTART, ["training.epochs.x=1"])


def test_empty_section_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  root: d\naugmentation:\n  # enabled: false\n")
    assert load_config(path).augmentation.enabled is True


def test_fold_must_be_below_folds(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"fold must be in 0\.\.4"):
        load_config(write_config(tmp_path, {"data": {"folds": 5, "fold": 5}}))


def test_resolved_config_is_saved_and_loads_back(tmp_path: Path) -> None:
    cfg = load_config(QUICKSTART, [f"output.dir={tmp_path / 'run'}", "training.epochs=3"])
    layout = prepare_output(cfg, ["train", "predict"], source=QUICKSTART)
    assert layout.resolved_config == tmp_path / "run" / "config.resolved.yaml"
    text = layout.resolved_config.read_text()
    assert text.startswith("# ")  # says what it is
    again = load_config(layout.resolved_config)
    assert again.training.epochs == 3
    assert again.stages == ["train", "predict"]
    assert again.data.root == cfg.data.root  # absolute, so the copy works from its new folder
    assert again.model_dump(exclude={"stages"}) == cfg.model_dump(exclude={"stages"})


def test_save_config_round_trip(tmp_path: Path) -> None:
    cfg = load_config(QUICKSTART)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_shipped_configs_are_valid() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.output.dir.is_absolute(), path
    quick = load_config(QUICKSTART)
    assert quick.data.root == (REPO / "sample_data" / "hippocampus").resolve()
    assert load_config(REPO / "configs" / "ct_dicom_example.yaml").preprocessing.normalization == "ct"


def test_quickstart_setup_passes(sample_hippo: Path, tmp_path: Path) -> None:
    cfg = load_config(QUICKSTART, [f"output.dir={tmp_path}"])
    check_setup(cfg, ["train", "predict", "evaluate"])  # the shipped data pairs up; no exception
    assert RunLayout(tmp_path).best_checkpoint == tmp_path / "checkpoints" / "best.pt"


def test_readme_config_reference_is_current() -> None:
    from medseg.config import update_reference_in

    readme = (REPO / "README.md").read_text()
    assert readme == update_reference_in(readme), "regenerate it: python -m medseg.config README.md"
