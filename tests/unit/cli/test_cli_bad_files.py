"""`fx` meeting files it cannot use: not text, unreadable, a folder, read-only, mistyped paths,
user text that looks like markup, export targets that would destroy something. Each is a
coded message with a fix and an exit code, never a traceback."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
from cli_checks import assert_clean_failure

from fedrun.cli.main import cli
from fedrun.plan.initialize import initialize_plan
from fedrun.workspace.create import create_workspace

needs_permissions = pytest.mark.skipif(
    os.geteuid() == 0, reason="root ignores file permissions (checked with setpriv by hand)"
)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = create_workspace(tmp_path / "ws", "no-op")
    monkeypatch.chdir(ws)
    return ws


@pytest.mark.parametrize("name", ["plan.yaml", "cols.yaml", "data.yaml"])
def test_a_binary_plan_file_is_named_not_a_traceback(runner, workspace, name):
    (workspace / "plan" / name).write_bytes(b"\xa4\xff\x00binary")

    result = runner.invoke(cli, ["plan", "validate"])

    assert_clean_failure(result, 2, "FX-PLAN-003")
    assert f"{name} is not a text file" in result.output


def test_a_folder_where_the_plan_should_be_is_called_a_folder(runner, workspace):
    (workspace / "plan" / "cols.yaml").unlink()
    (workspace / "plan" / "cols.yaml").mkdir()

    result = runner.invoke(cli, ["plan", "validate"])

    assert_clean_failure(result, 2, "FX-PLAN-001")
    assert "cols.yaml is a folder, not a file" in result.output


def test_a_mistyped_cols_path_is_refused_not_read_as_nobody(runner, workspace):
    result = runner.invoke(cli, ["plan", "validate", "-c", "typo.yaml"])

    assert_clean_failure(result, 2, "FX-PLAN-001")
    assert "typo.yaml does not exist" in result.output


@needs_permissions
def test_an_unreadable_plan_file_is_named(runner, workspace):
    (workspace / "plan" / "plan.yaml").chmod(0)

    result = runner.invoke(cli, ["plan", "validate"])

    assert_clean_failure(result, 2, "FX-PLAN-035")


def test_a_file_the_command_cannot_write_is_a_coded_error(runner, workspace, monkeypatch):
    # Prepare: writing the data file fails as on a read-only workspace (root ignores modes)
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", refuse)

    result = runner.invoke(cli, ["collaborator", "create", "-n", "one", "-d", "1"])

    assert_clean_failure(result, 3, "FX-WS-040")
    assert "cannot use plan/data.yaml: Permission denied" in result.output
    assert "chmod" in result.output


@pytest.mark.parametrize("name", ["[/]", "[bold]x"])
def test_user_text_is_shown_as_typed_not_as_markup(runner, workspace, name):
    result = runner.invoke(cli, ["collaborator", "create", "-n", name, "-d", "1"])

    assert_clean_failure(result, 4, "FX-PKI-003")
    assert f"invalid collaborator name {name!r}" in result.output


def test_a_message_holding_brackets_keeps_them(runner, workspace):
    (workspace / "plan" / "cols.yaml").write_text("- just\n- a list\n")

    result = runner.invoke(cli, ["plan", "validate"])

    assert_clean_failure(result, 2, "FX-PLAN-004")
    assert "must hold `collaborators: [names]`" in result.output


# ---------------------------------------------------------------------- fx workspace export
@pytest.fixture
def initialized(workspace: Path) -> Path:
    initialize_plan(workspace / "plan" / "plan.yaml")
    return workspace


@pytest.mark.parametrize("target", ["save/init.pbuf", "plan/plan.yaml", "plan"])
def test_export_never_writes_over_the_workspace(runner, initialized, target):
    before = {p: p.read_bytes() for p in (initialized / "plan").iterdir() if p.is_file()}
    model = (initialized / "save" / "init.pbuf").read_bytes()

    result = runner.invoke(cli, ["workspace", "export", "-o", target, "--force"])

    assert_clean_failure(result, 3, "FX-WS-014")
    assert {p: p.read_bytes() for p in before} == before
    assert (initialized / "save" / "init.pbuf").read_bytes() == model


def test_export_replaces_an_old_archive_but_not_another_file_without_force(
    runner, initialized, tmp_path
):
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    assert runner.invoke(cli, ["workspace", "export"]).exit_code == 0
    archive = initialized / "ws.zip"  # in the workspace, where OpenFL writes it

    again = runner.invoke(cli, ["workspace", "export"])  # an archive: replaced
    refused = runner.invoke(cli, ["workspace", "export", "-o", str(other)])
    forced = runner.invoke(cli, ["workspace", "export", "-o", str(other), "--force"])

    assert again.exit_code == 0 and zipfile.is_zipfile(archive)
    assert_clean_failure(refused, 3, "FX-WS-014")
    assert forced.exit_code == 0 and zipfile.is_zipfile(other)


@pytest.mark.parametrize("output", ["/nonexistent-folder/x.zip", "/nonexistent-folder/"])
def test_export_to_an_impossible_path_says_so(runner, initialized, output):
    result = runner.invoke(cli, ["workspace", "export", "-o", output])

    assert_clean_failure(result, 3, "FX-WS-014")


def test_export_into_a_folder_writes_the_archive_there(runner, initialized, tmp_path):
    out = tmp_path / "outbox"
    out.mkdir()

    result = runner.invoke(cli, ["workspace", "export", "-o", str(out)])

    assert result.exit_code == 0, result.output
    assert zipfile.is_zipfile(out / "ws.zip")


def test_export_refuses_a_damaged_initial_model(runner, initialized, tmp_path):
    init = initialized / "save" / "init.pbuf"
    init.write_bytes(init.read_bytes()[:40])

    result = runner.invoke(cli, ["workspace", "export"])

    assert_clean_failure(result, 3, "FX-WS-010")
    assert "cannot be read" in result.output
    assert not (initialized / "ws.zip").exists()


def test_a_failed_initialize_leaves_the_plan_as_it_was(runner, workspace, monkeypatch):
    # Prepare: the model cannot be written (save/ read-only; root ignores modes)
    from fedrun.plan import initialize

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(initialize, "save_model", refuse)
    plan = (workspace / "plan" / "plan.yaml").read_text()

    # Execute
    result = runner.invoke(cli, ["plan", "initialize", "-a", "agg.example.org"])

    # Assert: refused, and agg_addr not rewritten without a model to go with it
    assert_clean_failure(result, 3, "FX-WS-040")
    assert (workspace / "plan" / "plan.yaml").read_text() == plan


def test_collaborator_create_does_not_append_to_a_damaged_data_file(runner, workspace):
    data = workspace / "plan" / "data.yaml"
    data.write_text("- a yaml list\n- not name,path lines\n")

    result = runner.invoke(cli, ["collaborator", "create", "-n", "two", "-d", "2"])

    assert_clean_failure(result, 2, "FX-PLAN-005")
    assert data.read_text() == "- a yaml list\n- not name,path lines\n"


def test_validate_notes_openfl_settings_that_have_no_effect(runner, workspace):
    import yaml

    path = workspace / "plan" / "plan.yaml"
    config = yaml.safe_load(path.read_text())
    config["aggregator"]["settings"]["log_memory_usage"] = True
    config["collaborator"]["settings"]["write_logs"] = True
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    result = runner.invoke(cli, ["plan", "validate"])

    assert result.exit_code == 0, result.output
    assert (
        "note: aggregator.settings.log_memory_usage: True has no effect in fedrun" in result.output
    )
    assert "note: collaborator.settings.write_logs: True has no effect in fedrun" in result.output


@pytest.mark.parametrize(
    ("settings", "warning"),
    [
        ({"require_client_auth": False}, "client certificates are not checked"),
        ({"disable_client_auth": True}, "client certificates are not checked"),
        ({"use_tls": False}, "TLS is OFF"),
        ({}, None),
    ],
)
def test_validate_warns_when_the_plan_turns_off_part_of_mutual_tls(
    runner, workspace, settings, warning
):
    import yaml

    path = workspace / "plan" / "plan.yaml"
    config = yaml.safe_load(path.read_text())
    if "disable_client_auth" in settings:  # OpenFL 1.6's name, instead of the current one
        config["network"]["settings"].pop("require_client_auth", None)
    config["network"]["settings"].update(settings)
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    result = runner.invoke(cli, ["plan", "validate"])

    assert result.exit_code == 0, result.output
    if warning is None:
        assert "warning:" not in result.output
    else:
        assert f"warning: {warning}" in result.output
