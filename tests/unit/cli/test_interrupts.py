"""Ctrl-C while `fx` loads a command, and "no" at a certificate hash prompt: one line and a
documented exit code (130; FX-PKI-021 with 4), not a traceback or click's bare "Aborted!"."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_checks import assert_clean_failure
from click.testing import CliRunner

from fedrun.cli import entry
from fedrun.cli import main as fx_main
from fedrun.cli.main import cli
from fedrun.workspace.create import create_workspace


def test_ctrl_c_while_a_command_group_is_imported_exits_130(monkeypatch, capsys):
    def interrupted(name: str):
        raise KeyboardInterrupt

    monkeypatch.setattr(fx_main.importlib, "import_module", interrupted)

    with pytest.raises(SystemExit) as caught:
        fx_main.main(["workspace", "import", "--archive", "x.zip"])

    assert caught.value.code == 130
    assert capsys.readouterr().err.strip().endswith("interrupted")


def test_ctrl_c_before_the_command_tree_is_loaded_exits_130(monkeypatch, capsys):
    def interrupted(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(fx_main, "main", interrupted)

    with pytest.raises(SystemExit) as caught:
        entry.run()

    assert caught.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_usage_errors_keep_click_s_message_and_exit_2(capsys):
    with pytest.raises(SystemExit) as caught:
        fx_main.main(["plan", "bogus"])

    assert caught.value.code == 2
    assert "No such command 'bogus'" in capsys.readouterr().err


def test_help_exits_0():
    fx_main.main(["--help"])  # returns: no SystemExit for success


@pytest.mark.parametrize("answer", ["n\n", ""])  # "": input closed (a script without -s)
def test_declining_the_hash_is_a_clear_refusal(tmp_path: Path, monkeypatch, answer):
    ws = create_workspace(tmp_path / "ws", "no-op")
    monkeypatch.chdir(ws)
    runner = CliRunner()
    assert runner.invoke(cli, ["workspace", "certify"]).exit_code == 0
    request = ["aggregator", "generate-cert-request", "--fqdn", "localhost"]
    assert runner.invoke(cli, request).exit_code == 0

    result = runner.invoke(cli, ["aggregator", "certify", "--fqdn", "localhost"], input=answer)

    assert_clean_failure(result, 4, "FX-PKI-021")
    assert not list((ws / "cert" / "server").glob("*.crt"))


def test_openfl_spellings_of_global_and_plan_options_are_accepted(tmp_path: Path, monkeypatch):
    ws = create_workspace(tmp_path / "ws", "no-op")
    monkeypatch.chdir(ws)

    result = CliRunner().invoke(
        cli, ["--no-warnings", "-l", "critical", "plan", "validate", "--plan", "plan/plan.yaml"]
    )

    assert result.exit_code == 0, result.output
