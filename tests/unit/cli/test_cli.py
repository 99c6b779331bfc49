"""The `fx` command tree through click's CliRunner: exit codes, messages, files written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from cli_checks import assert_clean_failure

from fedrun.cli.main import cli
from fedrun.plan.loader import Plan
from fedrun.workspace.create import create_workspace


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A torch/digits workspace that is also the current directory."""
    ws = create_workspace(tmp_path / "ws", "torch/digits")
    monkeypatch.chdir(ws)
    return ws


# ---------------------------------------------------------------------- fx workspace
def test_workspace_create_writes_a_workspace(runner, tmp_path, monkeypatch):
    # Prepare
    monkeypatch.chdir(tmp_path)

    # Execute
    result = runner.invoke(cli, ["workspace", "create", "--prefix", "ws", "--template", "no-op"])

    # Assert
    assert result.exit_code == 0, result.output
    assert "created workspace" in result.output
    plan = Plan.load(tmp_path / "ws" / "plan" / "plan.yaml")
    assert plan.template("task_runner").startswith("src.")
    for folder in ("cert", "data", "logs", "save", "local_state", "src"):
        assert (tmp_path / "ws" / folder).is_dir(), folder


def test_nothing_fx_writes_is_world_writable_whatever_the_umask(runner, tmp_path, monkeypatch):
    # Prepare: started with umask 000 (a world-writable cert/ would let any local user replace
    # the federation's trust anchor)
    import os
    import stat

    monkeypatch.chdir(tmp_path)
    before = os.umask(0)
    try:
        # Execute
        result = runner.invoke(
            cli, ["workspace", "create", "--prefix", "ws", "--template", "no-op"]
        )
        assert result.exit_code == 0, result.output
        monkeypatch.chdir(tmp_path / "ws")
        for args in (["plan", "initialize"], ["workspace", "certify"]):
            result = runner.invoke(cli, args)
            assert result.exit_code == 0, result.output
    finally:
        os.umask(before)

    # Assert
    writable = [
        str(path.relative_to(tmp_path))
        for path in [tmp_path / "ws", *(tmp_path / "ws").rglob("*")]
        if path.stat().st_mode & stat.S_IWOTH
    ]
    assert writable == []
    assert (tmp_path / "ws" / "save" / "init.pbuf").is_file()


def test_workspace_create_into_a_non_empty_folder(runner, tmp_path, monkeypatch):
    # Prepare
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "notes.txt").write_text("mine")

    # Execute
    result = runner.invoke(cli, ["workspace", "create", "--prefix", "ws"])

    # Assert
    assert_clean_failure(result, 3, "FX-WS-002")
    assert "already exists and is not empty" in result.output
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == ["notes.txt"]


def test_workspace_create_with_an_unknown_template_lists_the_templates(
    runner, tmp_path, monkeypatch
):
    # Prepare
    monkeypatch.chdir(tmp_path)

    # Execute
    result = runner.invoke(
        cli, ["workspace", "create", "--prefix", "ws", "--template", "torch/mnsit"]
    )

    # Assert
    assert_clean_failure(result, 3, "FX-WS-001")
    assert "unknown template 'torch/mnsit' (did you mean 'torch/mnist'?)" in result.output
    for name in ("torch/digits", "torch/mnist", "no-op"):
        assert name in result.output
    assert not (tmp_path / "ws").exists()


def test_workspace_create_help_lists_the_templates(runner):
    # Execute
    result = runner.invoke(cli, ["workspace", "create", "--help"])

    # Assert
    assert result.exit_code == 0
    for name in ("torch/digits", "torch/mnist", "keras/mnist", "no-op"):
        assert name in result.output


# ---------------------------------------------------------------------- fx plan
def test_plan_validate_accepts_a_good_plan(runner, workspace):
    # Execute
    result = runner.invoke(cli, ["plan", "validate"])

    # Assert
    assert result.exit_code == 0, result.output
    assert "is valid" in result.output
    assert Plan.load(workspace / "plan" / "plan.yaml").hash[:16] in result.output


def test_plan_validate_says_which_tasks_train_and_which_validate(runner, workspace):
    result = runner.invoke(cli, ["plan", "validate"])

    assert result.exit_code == 0, result.output
    assert "task train: trains (function train_task)" in result.output
    assert "task aggregated_model_validation: validates the global model" in result.output
    assert "task locally_tuned_model_validation: validates the locally trained model" in (
        result.output
    )


def _edit(workspace, change) -> None:
    path = workspace / "plan" / "plan.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))


def test_plan_validate_refuses_a_local_validation_before_training(runner, workspace):
    def local_first(config):
        group = config["assigner"]["settings"]["task_groups"][0]
        group["tasks"] = ["locally_tuned_model_validation", "train"]

    _edit(workspace, local_first)

    result = runner.invoke(cli, ["plan", "validate"])

    assert_clean_failure(result, 2, "FX-PLAN-039")
    assert "'locally_tuned_model_validation'" in result.output


def test_plan_validate_refuses_a_best_model_metric_of_training(runner, workspace):
    _edit(
        workspace,
        lambda c: c["aggregator"]["settings"].update(best_model_metric="train/cross_entropy"),
    )

    result = runner.invoke(cli, ["plan", "validate"])

    assert_clean_failure(result, 2, "FX-PLAN-038")
    assert "aggregated_model_validation" in result.output


def test_plan_validate_refuses_a_rule_the_federation_is_too_small_for(runner, workspace):
    (workspace / "plan" / "cols.yaml").write_text("collaborators: [one, two]\n")
    _edit(
        workspace,
        lambda c: c["tasks"]["train"].update(aggregation_type={"template": "Krum"}),
    )

    result = runner.invoke(cli, ["plan", "validate"])

    assert_clean_failure(result, 2, "FX-PLAN-037")


@pytest.mark.parametrize("command", [["plan", "validate"], ["plan", "initialize"]])
def test_a_straggler_policy_the_aggregator_would_refuse_is_refused_first(
    runner, workspace, command
):
    # it was only refused by `fx aggregator start`, after the certificates were made
    policy = {
        "template": "openfl.component.PercentagePolicy",
        "settings": {"percent_collaborators_needed": 0.5, "minimum_reporting": 0},
    }
    _edit(workspace, lambda c: c.update(straggler_handling_policy=policy))

    result = runner.invoke(cli, command)

    assert_clean_failure(result, 2, "FX-PLAN-020")
    assert "straggler_handling_policy.settings.minimum_reporting is 0" in result.output
    assert not (workspace / "save" / "init.pbuf").exists()


def test_plan_validate_on_a_broken_plan_exits_2_with_the_plan_code(runner, workspace):
    # Prepare
    path = workspace / "plan" / "plan.yaml"
    config = yaml.safe_load(path.read_text())
    config["collaborator"]["settings"]["opt_treatment"] = "FOO"
    path.write_text(yaml.safe_dump(config))

    # Execute
    result = runner.invoke(cli, ["plan", "validate"])

    # Assert
    assert_clean_failure(result, 2, "FX-PLAN-012")
    assert "collaborator.settings.opt_treatment is 'FOO'" in result.output
    assert "RESET" in result.output


def _two_half_groups(config):
    groups = config["assigner"]["settings"]["task_groups"]
    groups[0]["percentage"] = 0.5
    config["assigner"]["settings"]["task_groups"] = groups


@pytest.mark.parametrize(
    ("change", "code", "text"),
    [
        (
            lambda c: c["aggregator"]["settings"].update(
                log_metric_callback={"template": "nosuchmod.fn"}
            ),
            "FX-PLAN-007",
            "log_metric_callback",
        ),
        (_two_half_groups, "FX-PLAN-019", "add up to 0.5"),
    ],
    ids=["metric-callback", "group-percentages"],
)
def test_plan_validate_refuses_what_the_aggregator_would_refuse(
    runner, workspace, change, code, text
):
    path = workspace / "plan" / "plan.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))

    result = runner.invoke(cli, ["plan", "validate"])

    assert_clean_failure(result, 2, code)
    assert text in result.output


def test_plan_validate_outside_a_workspace(runner, tmp_path, monkeypatch):
    # Prepare
    monkeypatch.chdir(tmp_path)

    # Execute
    result = runner.invoke(cli, ["plan", "validate"])

    # Assert
    assert_clean_failure(result, 2, "FX-PLAN-001")
    assert "fx workspace create" in result.output


def test_plan_validate_with_an_explicit_plan_path(runner, workspace, tmp_path, monkeypatch):
    # Prepare
    monkeypatch.chdir(tmp_path)

    # Execute
    result = runner.invoke(cli, ["plan", "validate", "-p", str(workspace / "plan" / "plan.yaml")])

    # Assert
    assert result.exit_code == 0, result.output


def test_plan_show_prints_the_merged_plan_and_its_hash(runner, workspace):
    # Prepare
    plan = Plan.load(workspace / "plan" / "plan.yaml")

    # Execute
    result = runner.invoke(cli, ["plan", "show"])

    # Assert
    assert result.exit_code == 0, result.output
    assert f"# plan hash: {plan.hash}" in result.stdout
    assert f"# federation id: {plan.federation_id}" in result.stdout
    assert yaml.safe_load(result.stdout) == plan.config


# ---------------------------------------------------------------------- fx collaborator create
def test_collaborator_create_writes_data_yaml_and_keeps_other_lines(runner, workspace):
    # Prepare
    data = workspace / "plan" / "data.yaml"
    before = data.read_text()

    # Execute
    first = runner.invoke(cli, ["collaborator", "create", "-n", "one", "-d", "1"])
    second = runner.invoke(cli, ["collaborator", "create", "-n", "two", "--data-path", "2"])
    again = runner.invoke(cli, ["collaborator", "create", "-n", "one", "-d", "3"])

    # Assert
    assert [first.exit_code, second.exit_code, again.exit_code] == [0, 0, 0]
    assert data.read_text() == before + "one,3\ntwo,2\n"
    assert Plan.load(workspace / "plan" / "plan.yaml").data_paths == {"one": "3", "two": "2"}


def test_collaborator_create_silent_uses_the_default_data_path(runner, workspace):
    # Execute
    result = runner.invoke(cli, ["collaborator", "create", "-n", "site1", "-s"])

    # Assert
    assert result.exit_code == 0, result.output
    assert "site1,data/site1" in (workspace / "plan" / "data.yaml").read_text().splitlines()


def test_collaborator_create_prompts_for_the_data_path(runner, workspace):
    # Execute
    result = runner.invoke(cli, ["collaborator", "create", "-n", "site2"], input="7\n")

    # Assert
    assert result.exit_code == 0, result.output
    assert "site2,7" in (workspace / "plan" / "data.yaml").read_text().splitlines()


def test_collaborator_create_refuses_a_bad_name(runner, workspace):
    # Prepare
    before = (workspace / "plan" / "data.yaml").read_text()

    # Execute
    result = runner.invoke(cli, ["collaborator", "create", "-n", "../evil", "-d", "1"])

    # Assert
    assert_clean_failure(result, 4, "FX-PKI-003")
    assert (workspace / "plan" / "data.yaml").read_text() == before


# ---------------------------------------------------------------------- fx itself
def test_top_level_help_lists_every_group(runner):
    # Execute
    result = runner.invoke(cli, ["--help"])

    # Assert
    assert result.exit_code == 0
    for group in ("workspace", "plan", "aggregator", "collaborator", "model", "simulate"):
        assert group in result.output


def test_unknown_command_is_a_usage_error(runner):
    # Execute
    result = runner.invoke(cli, ["planz"])

    # Assert
    assert result.exit_code == 2
    assert "No such command 'planz'" in result.output


def test_simulate_with_a_plan_typo_leaves_no_workspace_behind(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["simulate", "--template", "no-op", "--prefix", "ws", "--plan-set", "aggregator.round=2"]

    result = runner.invoke(cli, args)

    assert_clean_failure(result, 2, "FX-PLAN-010")
    assert not (tmp_path / "ws").exists()


def test_simulate_keeps_a_workspace_it_did_not_make(runner, tmp_path, monkeypatch):
    create_workspace(tmp_path / "mine", "no-op")
    monkeypatch.chdir(tmp_path)
    args = [
        "simulate",
        "--workspace",
        "mine",
        "--prefix",
        "run",
        "--plan-set",
        "aggregator.round=2",
    ]

    result = runner.invoke(cli, args)

    assert_clean_failure(result, 2, "FX-PLAN-010")
    assert (tmp_path / "mine" / "plan" / "plan.yaml").is_file() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("timeout", ["0", "-5"])
def test_simulate_refuses_a_timeout_that_is_not_positive_before_creating_anything(
    runner, tmp_path, timeout
):
    result = runner.invoke(
        cli, ["simulate", "--prefix", str(tmp_path / "ws"), "--timeout", timeout]
    )
    assert result.exit_code == 2
    assert "--timeout" in result.output and "x>0" in result.output
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["aggregator", "generate-cert-request", "--fqdn", "agg.example.org"],
        ["collaborator", "generate-cert-request", "-n", "one", "-s"],
        ["collaborator", "create", "-n", "one", "-d", "1"],
        ["workspace", "certify"],
    ],
)
def test_node_files_are_not_written_outside_a_workspace(runner, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)

    result = runner.invoke(cli, args)

    assert_clean_failure(result, 3, "FX-WS-004")
    assert "cd into the workspace folder" in result.output
    assert list(tmp_path.iterdir()) == []


def test_plan_initialize_accepts_openfls_input_shape_option_and_says_it_is_ignored(
    runner, workspace
):
    # OpenFL scripts run `fx plan initialize -f [1,8,8]`; OpenFL 1.9 ignores the shape too
    result = runner.invoke(cli, ["plan", "initialize", "-a", "localhost", "-f", "[1,8,8]"])
    assert result.exit_code == 0, result.output
    assert "--input_shape [1,8,8] is ignored" in result.output
    assert (workspace / "save" / "init.pbuf").is_file()


def test_model_save_accepts_openfls_input_shape_option_and_says_it_is_ignored(runner, workspace):
    assert runner.invoke(cli, ["plan", "initialize", "-a", "localhost"]).exit_code == 0
    result = runner.invoke(
        cli, ["model", "save", "-i", "save/init.pbuf", "-o", "m.pt", "--input-shape", "[1,8,8]"]
    )
    assert result.exit_code == 0, result.output
    assert "--input-shape [1,8,8] is ignored" in result.output
    assert (workspace / "m.pt").is_file()


def test_model_save_writes_into_an_existing_folder_and_refuses_only_an_existing_model(
    runner, workspace
):
    assert runner.invoke(cli, ["plan", "initialize", "-a", "localhost"]).exit_code == 0
    (workspace / "exports").mkdir()
    (workspace / "exports" / "notes.txt").write_text("kept")

    first = runner.invoke(cli, ["model", "save", "-i", "save/init.pbuf", "-o", "exports"])
    again = runner.invoke(cli, ["model", "save", "-i", "save/init.pbuf", "-o", "exports"])

    assert first.exit_code == 0, first.output
    assert (workspace / "exports" / "model.pt").is_file()
    assert (workspace / "exports" / "notes.txt").read_text() == "kept"
    assert_clean_failure(again, 3, "FX-WS-012")
    assert "model.pt already exists" in again.output


def test_model_save_on_a_full_disk_leaves_no_truncated_model_and_names_the_file(
    runner, workspace, monkeypatch
):
    import torch

    assert runner.invoke(cli, ["plan", "initialize", "-a", "localhost"]).exit_code == 0
    (workspace / "m.pt").write_bytes(b"an earlier export")
    real_save = torch.save

    def full_disk(obj, path, *args, **kwargs):  # what torch raises when the disk fills up
        real_save(obj, path, *args, **kwargs)
        os.truncate(path, 100)
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 2176 vs 2128"
        )

    monkeypatch.setattr(torch, "save", full_disk)
    result = runner.invoke(cli, ["model", "save", "-i", "save/init.pbuf", "-o", "m.pt", "--force"])

    assert_clean_failure(result, 3, "FX-MODEL-011")
    assert f"cannot write {workspace / 'm.pt'}" in result.output
    assert (workspace / "m.pt").read_bytes() == b"an earlier export"
    assert sorted(p.name for p in workspace.iterdir() if p.name.startswith(".m.pt")) == []


def test_model_save_default_output_is_openfl_s_file(runner, workspace):
    import torch

    assert runner.invoke(cli, ["plan", "initialize", "-a", "localhost"]).exit_code == 0

    result = runner.invoke(cli, ["model", "save", "-i", "save/init.pbuf"])

    assert result.exit_code == 0, result.output
    saved = torch.load(workspace / "output_model", weights_only=True)  # as an OpenFL script does
    assert "model_state_dict" in saved


@pytest.mark.parametrize("address", ["bad host name!", "agg.example.org:50051", "1.2.3", ""])
def test_plan_initialize_refuses_an_address_collaborators_could_never_reach(
    runner, workspace, address
):
    before = (workspace / "plan" / "plan.yaml").read_text()
    result = runner.invoke(cli, ["plan", "initialize", "-a", address])
    assert_clean_failure(result, 2, "FX-PLAN-029")
    assert repr(address) in result.output
    assert (workspace / "plan" / "plan.yaml").read_text() == before
    assert not (workspace / "save" / "init.pbuf").exists()


def test_output_into_a_file_or_pipe_keeps_a_csr_hash_on_one_line(runner, workspace, monkeypatch):
    # operators compare the hash between nodes; rich wrapped it at 80 columns (outside a
    # terminal) into two lines
    import re

    monkeypatch.delenv("COLUMNS", raising=False)

    result = runner.invoke(cli, ["collaborator", "generate-cert-request", "-n", "hospital_a"])

    assert result.exit_code == 0, result.output
    assert re.search(r"CSR hash \(SHA-384\): [0-9a-f]{96}  \(compare it", result.output)


def test_aggregator_start_takes_the_plan_options_as_every_other_command_does(runner):
    result = runner.invoke(cli, ["aggregator", "start", "--help"])

    assert result.exit_code == 0
    for option in (
        "--plan-config",
        "--cols-config",
        "--authorized_cols",
        "federated learning plan",
    ):
        assert option in result.output, option


def test_simulate_with_an_unknown_template_says_only_that(runner, tmp_path, monkeypatch):
    # it printed "preparing workspace fedrun-workspaces/nope-... ..." first, a folder it never made
    monkeypatch.chdir(tmp_path)

    result = runner.invoke(cli, ["simulate", "--template", "nope"])

    assert_clean_failure(result, 3, "FX-WS-001")
    assert "preparing" not in result.output
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- fx aggregator start
@pytest.mark.parametrize(
    ("persist", "reset", "expected"),
    [
        (True, False, "run the same command again to resume it from its last round"),
        (True, True, "run the same command without --reset-state to resume it"),
        (False, False, "its progress was not saved"),
    ],
)
def test_a_stopped_aggregator_says_how_to_resume(workspace, persist, reset, expected):
    # "run the same command again" after `fx aggregator start --reset-state` started over and
    # discarded the finished rounds
    from fedrun.cli.aggregator import resume_hint

    _edit(workspace, lambda c: c["aggregator"]["settings"].update(persist_checkpoint=persist))

    hint = resume_hint(Plan.load(workspace / "plan" / "plan.yaml"), reset)

    assert expected in hint


# ---------------------------------------------------------------------- a mistyped name
@pytest.mark.parametrize("command", ["start", "ping"])
def test_a_mistyped_collaborator_name_is_named_with_the_close_one(runner, workspace, command):
    # the fixes once led to a new identity: "create it", "generate its key"
    runner.invoke(cli, ["collaborator", "create", "-n", "hospital_a", "-d", "1"])

    result = runner.invoke(cli, ["collaborator", command, "-n", "hospitl_a"])

    assert_clean_failure(result, 2, "FX-PLAN-026")
    assert "(did you mean 'hospital_a'?)" in result.output
    assert "check the name given with -n" in result.output


def test_a_cert_request_for_a_mistyped_name_says_so(runner, workspace):
    runner.invoke(cli, ["collaborator", "create", "-n", "hospital_a", "-d", "1"])

    result = runner.invoke(cli, ["collaborator", "generate-cert-request", "-n", "hospitl_a"])

    assert result.exit_code == 0, result.output
    assert "'hospitl_a' has no entry in plan/data.yaml (did you mean 'hospital_a'?)" in (
        " ".join(result.output.split())
    )


def test_initializing_again_after_an_experiment_says_what_it_replaced(runner, workspace):
    first = runner.invoke(cli, ["plan", "initialize", "-a", "localhost"])
    (workspace / "save" / "last.pbuf").write_bytes(b"an experiment's model")

    again = runner.invoke(cli, ["plan", "initialize", "-a", "localhost"])

    assert first.exit_code == again.exit_code == 0, again.output
    assert "note:" not in first.output
    said = " ".join(again.output.split())
    assert (
        "the experiment already in" in said and "started from the init.pbuf this replaced" in said
    )


@pytest.mark.parametrize(
    ("command", "named"),
    [
        (["plan", "switch", "-n", "other"], "a fedrun workspace has one plan"),
        (["plan", "save", "-n", "other"], "pass one with -p PATH"),
        (["collaborator", "calchash", "-d", "data"], "does not record a hash"),
    ],
)
def test_openfl_commands_fedrun_lacks_are_named(runner, command, named):
    # they got click's bare "No such command"
    result = runner.invoke(cli, command)

    assert result.exit_code == 2
    assert "is an OpenFL command fedrun does not have" in result.output
    assert named in " ".join(result.output.split())
