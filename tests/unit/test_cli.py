"""The command line: options generated from the trigger parameters, and one-line errors."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_tasks.__main__ import CHAIN, _json_list, _parser, main
from mnist_tasks.config import DEPLOYMENT_SETTINGS, MNIST_FILES, PRESET_NAMES, TRIGGER_PARAMS


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real entry point in a fresh interpreter, so a traceback would show on stderr."""
    return subprocess.run([sys.executable, "-m", "mnist_tasks", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def _one_line_error(out: subprocess.CompletedProcess[str], argument: str) -> str:
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert argument in lines[0]
    return lines[0]


def test_checksums_file_that_is_not_json(tmp_path: Path) -> None:
    bad = tmp_path / "sums.json"
    bad.write_text("train-images-idx3-ubyte.gz  abc\n")
    line = _one_line_error(
        _cli("ingest", "--store", str(tmp_path / "s"), "--checksums", f"@{bad}", cwd=tmp_path),
        "argument --checksums",
    )
    assert f"{bad} is not JSON" in line


def test_gate_with_a_missing_evaluation_file(tmp_path: Path) -> None:
    missing = tmp_path / "evaluation.json"
    line = _one_line_error(
        _cli("gate", "--store", str(tmp_path / "s"), "--evaluation", f"@{missing}",
             cwd=tmp_path),
        "argument --evaluation",
    )
    assert f"cannot read {missing}" in line


@pytest.mark.parametrize(
    ("argv", "argument", "detail"),
    [
        (["gate", "--evaluation", '{"test_accuracy": 0.9}'], "argument --evaluation",
         "missing prepared_uri, result_uri: give evaluate's JSON output"),
        (["register", "--gate", "[1, 2]"], "argument --gate", "must be a JSON object"),
        (["register", "--gate", "{not json"], "argument --gate", "not valid JSON"),
        (["train", "--prepared", "{}"], "argument --prepared", "missing prepared_uri"),
        (["ingest", "--checksums", "maybe"], "argument --checksums", "'pinned', 'off'"),
        (["train", "--prepared", '{"prepared_uri": "x"}', "--preset", "resnet"],
         "argument --preset", "invalid choice"),
        (["train", "--prepared", '{"prepared_uri": "x"}', "--epochs", "many"],
         "argument --epochs", "invalid int value"),
        (["check", "--ingested", '{"dataset_uri": "x"}'], "argument --ingested",
         "missing dataset_version: give ingest's JSON output"),
        (["check", "--ingested", '{"dataset_uri": "x", "dataset_version": "v"}',
          "--force=maybe"], "argument --force", "ignored explicit argument 'maybe'"),
        (["run-all", "--fresh-drop-margin", "x"], "argument --fresh-drop-margin",
         "invalid float value"),
    ],
)
def test_bad_arguments_are_one_line_naming_the_argument(
    argv: list[str], argument: str, detail: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--store", str(tmp_path / "s")])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert argument in line and detail in line


@pytest.mark.parametrize("store", ["file:///data/../../etc/x", "/data/../x",
                                   "file:///data/%2e%2e/x"])
def test_a_store_with_dot_dot_is_refused(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "--store", store]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "'store'" in line and "'..' path segments" in line


DOT_DOT = ["file:///data/../etc", "/data/../etc", "file:///data/%2e%2e/etc",
           "s3://bucket/a/../b"]


@pytest.mark.parametrize("where", DOT_DOT)
@pytest.mark.parametrize(("argv", "param"), [
    (["report", "--latest", "--store", "{}"], "store"),
    (["score", "--store", "{}"], "store"),
    (["score", "--store", "{ok}", "--landing", "{}"], "landing"),
    (["ingest", "--store", "{ok}", "--source", "{}"], "source"),
    (["run-all", "--store", "{ok}", "--source", "{}"], "source"),
    (["data", "--store", "{}", "list"], "store"),
    (["registry", "--store", "{}", "list"], "store"),
])
def test_every_place_a_command_takes_refuses_dot_dot(
    argv: list[str], param: str, where: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _refused(argv, param, where, tmp_path, capsys)


@pytest.mark.parametrize("where", ["/data/../etc", "/data/x/.."])
@pytest.mark.parametrize(("argv", "param"), [  # local folders only: no URIs here
    (["data", "add-increment", "--mnist", "{}", "--out", "{ok}", "--id", "a"], "mnist"),
    (["data", "add-increment", "--mnist", "{ok}", "--out", "{}", "--id", "a"], "out"),
    (["data", "make-demo", "--mnist", "{ok}", "--out", "{}"], "out"),
])
def test_the_data_commands_folders_refuse_dot_dot(
    argv: list[str], param: str, where: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _refused(argv, param, where, tmp_path, capsys)


def _refused(argv: list[str], param: str, where: str, tmp_path: Path,
             capsys: pytest.CaptureFixture[str]) -> None:
    from mnist_tasks import registry_cli

    ok = str(tmp_path / "ok")
    args = [a.replace("{ok}", ok).replace("{}", where) for a in argv]
    status = registry_cli.main(args[1:]) if args[0] == "registry" else main(args)
    assert status == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"parameter {param!r} = {where!r} is invalid: must not contain '..'" in line
    assert not Path(ok).exists()  # refused before anything was written


def test_a_landing_from_the_environment_is_checked_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MNIST_SCORING_LANDING", "/data/../etc")
    assert main(["score", "--store", str(tmp_path / "s")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "parameter 'landing' = '/data/../etc' is invalid" in line


def test_dot_dot_commands_of_the_readme_are_one_line_errors(tmp_path: Path) -> None:
    _one_line_error(_cli("score", "--store", str(tmp_path / "s"), "--landing", "/data/../etc",
                         cwd=tmp_path), "parameter 'landing'")
    out = subprocess.run([sys.executable, "-m", "mnist_tasks.registry", "--store",
                          "file:///data/../etc", "list"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    _one_line_error(out, "parameter 'store'")


def test_a_relative_folder_is_taken_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert main(["data", "--store", "../store", "list"]) == 0  # as documented: ../shared/...
    assert "no dataset versions" in capsys.readouterr().out


def _options(command: str) -> dict[str, argparse.Action]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions}


def test_run_all_options_are_the_trigger_parameters_and_deployment_settings() -> None:
    options = _options("run-all")
    types = {"string": str, "integer": int, "number": float, "boolean": None, "array": _json_list}
    for spec in TRIGGER_PARAMS:
        if spec.group == "approval":  # the DAG's approve task only: the CLI has no one to ask
            assert spec.name not in options
            continue
        action = options[spec.name]
        option = "--" + spec.name.replace("_", "-")
        assert action.option_strings == (
            [option, option.replace("--", "--no-")] if spec.type == "boolean" else [option])
        assert action.type is types[spec.type], spec.name
        assert spec.description.replace("%", "%%") in (action.help or ""), spec.name
    assert tuple(options["preset"].choices or ()) == PRESET_NAMES
    for setting in DEPLOYMENT_SETTINGS:
        assert f"${setting.env}" in (options[setting.name].help or "")


def test_each_stage_takes_the_previous_stages_output() -> None:
    assert {c: CHAIN[c][1] for c in CHAIN} == {
        "check": "ingest", "preprocess": "check", "train": "preprocess", "evaluate": "train",
        "gate": "evaluate", "register": "gate"}
    for command, (option, _, _) in CHAIN.items():
        action = _options(command)[option.removeprefix("--")]
        assert action.required, command
    # before check existed, preprocess took ingest's output as --ingested: still accepted
    assert _options("preprocess")["checked"].option_strings == ["--checked", "--ingested"]


def _base_only_version(store_dir: Path) -> str:
    from mnist_tasks.datasets import BaseInfo, save_version
    from mnist_tasks.storage import LocalStore

    base = BaseInfo({n: f"{i:064x}" for i, n in enumerate(sorted(MNIST_FILES.values()))}, 10, 5)
    return save_version(LocalStore(store_dir), base, [], fresh_fraction=0.2).id


def test_check_command_takes_ingest_output_and_records_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from mnist_tasks.results import to_json
    from tests.helpers import ingest_result

    version = _base_only_version(tmp_path / "s")
    ingested = json.dumps(to_json(ingest_result(dataset_uri="file:///x/mnist.npz",
                                                dataset_version=version)))
    assert main(["check", "--ingested", ingested, "--store", str(tmp_path / "s"),
                 "--run-id", "r1", "--force", "--epochs", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decision"] == "TRAIN" and out["force"] is True and out["champion_version"] is None
    assert out["lineage"]["dataset_version"] == version and len(out["inputs_key"]) == 16
    summary = json.loads((tmp_path / "s/runs/r1/summary.json").read_text())
    assert summary["dataset_version"] == version and summary["inputs_key"] == out["inputs_key"]


def test_preprocess_refuses_an_unchanged_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from mnist_tasks.results import to_json
    from tests.helpers import check_result

    checked = to_json(check_result(decision="UNCHANGED", covered_by=3))
    assert main(["preprocess", "--checked", json.dumps(checked),
                 "--store", str(tmp_path / "s")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "check decided UNCHANGED (covered by champion v3): nothing to preprocess" in line
    # Anything but check's whole result is refused in one line, naming what is missing.
    del checked["lineage"]
    assert main(["preprocess", "--checked", json.dumps(checked),
                 "--store", str(tmp_path / "s")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == "error: CheckResult: missing 'lineage'"


def test_data_commands_pass_through_to_the_datasets_cli(tmp_path: Path) -> None:
    version = _base_only_version(tmp_path / "s")
    listed = _cli("data", "--store", str(tmp_path / "s"), "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert version in listed.stdout and listed.stdout.startswith("VERSION")
    quiet = _cli("--log-level", "ERROR", "data", "--store", str(tmp_path / "s"), "list",
                 cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stdout == listed.stdout
    shown = _cli("data", "--store", str(tmp_path / "s"), "show", version, cwd=tmp_path)
    assert shown.returncode == 0 and f"dataset version {version}" in shown.stdout
    line = _one_line_error(
        _cli("data", "--store", str(tmp_path / "s"), "show", "0123456789abcdef", cwd=tmp_path),
        "unknown dataset version '0123456789abcdef'")
    assert line.startswith("error:")


def test_candidates_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """--candidates takes JSON (inline or @file); a bad one is one line naming the field."""
    args = _parser().parse_args(["train", "--store", "/s", "--prepared", '{"prepared_uri": "x"}',
                                 "--candidates", '[{"seed": [1, 2]}]', "--candidate", "1"])
    assert (args.candidates, args.candidate) == ([{"seed": [1, 2]}], 1)
    code = main(["run-all", "--store", "/tmp/never", "--candidates", '[{"lr": 1}]'])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "'candidates[0].lr' = 1 is invalid: is not a candidate field" in err
    with pytest.raises(SystemExit):
        _parser().parse_args(["run-all", "--candidates", "[{"])
    assert "--candidates: not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--store", "/s", "bogus"], ["--store", "/s", "show"]])
def test_a_registry_argument_error_is_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    from mnist_tasks import registry_cli

    with pytest.raises(SystemExit) as exc:
        registry_cli.main(argv)
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: python -m mnist_tasks.registry")
