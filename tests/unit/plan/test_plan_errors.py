"""Every way Plan.load refuses a plan: code, file, key path and fix."""

from __future__ import annotations

import pytest
import yaml

from fedrun.errors import PlanError
from fedrun.plan.loader import Plan


def load_error(path, **kwargs) -> PlanError:
    with pytest.raises(PlanError) as caught:
        Plan.load(path, **kwargs)
    error = caught.value
    assert error.fix, f"{error.code} has no fix"
    assert error.exit_code == 2
    return error


def test_unknown_section_with_did_you_mean(edit_plan):
    # Prepare
    path = edit_plan(lambda c: c.__setitem__("agregator", {"settings": {}}))

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-009"
    assert "plan.yaml: unknown section 'agregator' (did you mean 'aggregator'?)" in error.message
    assert "aggregator" in error.fix


def test_unknown_aggregator_setting_with_did_you_mean(edit_plan):
    # Prepare
    path = edit_plan(lambda c: c["aggregator"]["settings"].__setitem__("rounds_to_trian", 2))

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-010"
    assert "plan.yaml: aggregator.settings: unknown key 'rounds_to_trian'" in error.message
    assert "(did you mean 'rounds_to_train'?)" in error.message
    assert "rounds_to_train" in error.fix


def test_unknown_key_beside_template_and_settings(edit_plan):
    # Prepare
    path = edit_plan(lambda c: c["network"].__setitem__("setings", {}))

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-010"
    assert "unknown key network.setings (did you mean 'settings'?)" in error.message


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("aggregator", "rounds_to_train", "ten", "expected int"),
        ("aggregator", "rounds_to_train", True, "expected int"),
        ("aggregator", "write_logs", "yes please", "expected bool"),
        ("network", "use_tls", 1, "expected bool"),
    ],
)
def test_wrong_type(edit_plan, section, key, value, expected):
    # Prepare
    path = edit_plan(lambda c: c[section]["settings"].__setitem__(key, value))

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-011"
    assert f"plan.yaml: {section}.settings.{key} is {value!r}" in error.message
    assert expected in error.message
    assert error.fix.startswith(f"{key}: ")


@pytest.mark.parametrize(
    ("value", "bound"),
    [(16 << 20, "at most 16777152"), (100, "at least 4096")],
)
def test_chunk_bytes_out_of_range(edit_plan, value, bound):
    # a chunk bigger than the message limit once framed used to fail only at the first
    # upload, as a misleading "cannot reach the aggregator"
    path = edit_plan(
        lambda c: c["network"].setdefault("settings", {}).__setitem__("chunk_bytes", value)
    )

    error = load_error(path)

    assert error.code == "FX-PLAN-027"
    assert f"network.settings.chunk_bytes is {value}, out of range" in error.message
    assert bound in error.fix


@pytest.mark.parametrize(
    ("section", "key", "value", "bound"),
    [
        ("aggregator", "rounds_to_train", -1, "at least 0"),
        ("network", "client_reconnect_interval", -5, "at least 0"),
        ("network", "client_reconnect_timeout", 0, "at least 1"),  # was read as "600"
    ],
)
def test_settings_that_cannot_be_negative_or_zero_are_refused(
    edit_plan, section, key, value, bound
):
    path = edit_plan(lambda c: c[section].setdefault("settings", {}).__setitem__(key, value))

    error = load_error(path)

    assert error.code == "FX-PLAN-027"
    assert f"{section}.settings.{key} is {value}, out of range" in error.message
    assert bound in error.fix


def test_bad_choice(edit_plan):
    # Prepare
    path = edit_plan(lambda c: c["collaborator"]["settings"].__setitem__("opt_treatment", "FOO"))

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-012"
    assert "plan.yaml: collaborator.settings.opt_treatment is 'FOO'" in error.message
    assert "RESET, CONTINUE_LOCAL, CONTINUE_GLOBAL" in error.fix


def test_settings_not_a_mapping(edit_plan):
    # Prepare
    path = edit_plan(lambda c: c["aggregator"].__setitem__("settings", [1, 2]))

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-011"
    assert "plan.yaml: aggregator.settings must be a mapping, not list" in error.message


def test_missing_plan_file(tmp_path):
    # Execute
    error = load_error(tmp_path / "plan" / "nope.yaml")

    # Assert
    assert error.code == "FX-PLAN-001"
    assert str(tmp_path / "plan" / "nope.yaml") in error.message
    assert "does not exist" in error.message


def test_invalid_yaml_names_the_line(plan_path):
    # Prepare: line 3 holds a mapping value where none is allowed
    plan_path.write_text("aggregator:\n  settings:\n    rounds_to_train: 3: 4\n")

    # Execute
    error = load_error(plan_path)

    # Assert
    assert error.code == "FX-PLAN-003"
    assert str(plan_path) in error.message
    assert "is not valid YAML at line 3, column 23" in error.message
    assert "mapping values are not allowed here" in error.message


def test_plan_that_is_not_a_mapping(plan_path):
    # Prepare
    plan_path.write_text("- aggregator\n- collaborator\n")

    # Execute
    error = load_error(plan_path)

    # Assert
    assert error.code == "FX-PLAN-003"
    assert "must be a mapping of sections" in error.message


def test_missing_defaults_file(edit_plan):
    # Prepare
    path = edit_plan(lambda c: c["aggregator"].__setitem__("defaults", "plan/defaults/agg.yaml"))

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-002"
    assert "plan.yaml: defaults file 'plan/defaults/agg.yaml' not found" in error.message
    assert "aggregator.yaml" in error.fix


def test_an_openfl_defaults_file_of_a_part_fedrun_lacks_is_named(edit_plan):
    # it said "create it" (OpenFL's XGBoost workspaces)
    path = edit_plan(lambda c: c["tasks"].__setitem__("defaults", "plan/defaults/tasks_xgb.yaml"))

    error = load_error(path)

    assert error.code == "FX-PLAN-036"
    assert "is OpenFL's for XGBoost tasks, which fedrun does not support" in error.message


def test_missing_required_section(edit_plan):
    # Prepare
    path = edit_plan(lambda c: c.pop("task_runner"))

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-013"
    assert "plan.yaml: the plan has no 'task_runner' section" in error.message


def test_unknown_template_module_in_the_workspace(edit_plan, workspace):
    # Prepare
    path = edit_plan(lambda c: c["data_loader"].__setitem__("template", "src.nothere.Loader"))

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-007"
    assert "plan.yaml: data_loader.template: module 'src.nothere' not found" in error.message
    assert str(workspace / "src") in error.fix


def test_unknown_fedrun_class_with_did_you_mean(edit_plan):
    # Prepare
    path = edit_plan(
        lambda c: c["compression_pipeline"].__setitem__(
            "template", "fedrun.compression.NoCompresionPipeline"
        )
    )

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-007"
    assert "compression_pipeline.template" in error.message
    assert "has no 'NoCompresionPipeline' (did you mean 'NoCompressionPipeline'?)" in error.message


def test_unknown_package_in_a_template(edit_plan):
    # Prepare
    path = edit_plan(
        lambda c: c["compression_pipeline"].__setitem__("template", "nosuchpkg.Pipeline")
    )

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-007"
    assert "module 'nosuchpkg' not found" in error.message


def test_class_missing_from_a_workspace_module_with_did_you_mean(edit_plan):
    # Prepare
    path = edit_plan(lambda c: c["task_runner"].__setitem__("template", "src.taskrunner.DigitsCN"))

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-007"
    assert "plan.yaml: task_runner.template" in error.message
    assert "defines no 'DigitsCN' (did you mean 'DigitsCNN'?)" in error.message


def test_syntax_error_in_a_workspace_module(plan_path, workspace):
    # Prepare
    (workspace / "src" / "taskrunner.py").write_text("class DigitsCNN(:\n    pass\n")

    # Execute
    error = load_error(plan_path)

    # Assert
    assert error.code == "FX-PLAN-014"
    assert "taskrunner.py line 1: syntax error" in error.message


def test_task_function_the_runner_lacks_with_did_you_mean(edit_plan):
    # Prepare
    path = edit_plan(lambda c: c["tasks"]["train"].__setitem__("function", "train_tsk"))

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-016"
    assert "plan.yaml: tasks.train.function" in error.message
    assert "has no method 'train_tsk' (did you mean 'train_task'?)" in error.message


def test_unknown_key_in_a_task(edit_plan):
    # Prepare
    path = edit_plan(lambda c: c["tasks"]["train"].__setitem__("kwarg", {}))

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-010"
    assert "plan.yaml: tasks.train: unknown key 'kwarg' (did you mean 'kwargs'?)" in error.message


def test_task_without_function(edit_plan):
    # Prepare
    path = edit_plan(lambda c: c["tasks"]["train"].pop("function"))

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-015"
    assert "plan.yaml: tasks.train.function is missing" in error.message


def test_assigner_group_naming_an_undefined_task(edit_plan):
    # Prepare
    def change(config):
        config["assigner"]["settings"]["task_groups"][0]["tasks"].append("trian")

    path = edit_plan(change)

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-018"
    assert "plan.yaml: assigner.settings.task_groups" in error.message
    assert "group 'learning' lists task 'trian'" in error.message
    assert "(did you mean 'train'?)" in error.message


def test_bad_apply(edit_plan):
    # Prepare
    def change(config):
        config["tasks"]["aggregated_model_validation"]["kwargs"]["apply"] = "globally"

    path = edit_plan(change)

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-017"
    assert "plan.yaml: tasks.aggregated_model_validation.kwargs.apply is 'globally'" in (
        error.message
    )
    assert "global" in error.fix and "local" in error.fix


def test_aggregation_type_setting_the_rule_does_not_take(edit_plan):
    # Prepare
    def change(config):
        config["tasks"]["train"]["aggregation_type"] = {
            "template": "TrimmedMean",
            "settings": {"betaa": 0.1},
        }

    path = edit_plan(change)

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-010"
    assert "tasks.train.aggregation_type.settings: unknown key 'betaa'" in error.message


def test_bad_override(plan_path):
    # Execute
    error = load_error(plan_path, overrides=["rounds_to_train=3"])

    # Assert
    assert error.code == "FX-PLAN-006"
    assert "override 'rounds_to_train=3' names no key inside a section" in error.message


def test_error_renders_code_message_and_fix(edit_plan):
    # Prepare
    path = edit_plan(lambda c: c["collaborator"]["settings"].__setitem__("opt_treatment", "FOO"))

    # Execute
    error = load_error(path)

    # Assert
    assert str(error) == f"FX-PLAN-012: {error.message}\n  fix: {error.fix}"
    assert yaml.safe_load(path.read_text())["collaborator"]["settings"]["opt_treatment"] == "FOO"


@pytest.mark.parametrize("port", ["abc", "99999", "0", "-1", "65536"])
def test_bad_aggregator_port(plan_path, port):
    # Execute
    error = load_error(plan_path, overrides=[f"network.agg_port={port}"])

    # Assert
    assert error.code == "FX-PLAN-011"
    assert "plan.yaml: network.settings.agg_port is" in error.message
    assert "65535" in error.fix


@pytest.mark.parametrize(
    ("port", "expected"), [("51234", 51234), ("'1024'", 1024), ("65535", 65535)]
)
def test_numeric_aggregator_port(plan_path, port, expected):
    # Execute
    plan = Plan.load(plan_path, overrides=[f"network.agg_port={port}"])

    # Assert
    assert plan.agg_port == expected


@pytest.mark.parametrize("bad", [0, -3, 2.5, "64"])
def test_a_batch_size_that_would_train_on_nothing_is_refused(edit_plan, bad):
    # Prepare
    path = edit_plan(lambda c: c["data_loader"].setdefault("settings", {}).update(batch_size=bad))

    # Execute
    error = load_error(path)

    # Assert
    assert error.code == "FX-PLAN-028"
    assert f"data_loader.settings.batch_size must be a whole number of at least 1, got {bad!r}" in (
        error.message
    )


def test_a_task_batch_size_is_checked_too_and_null_means_the_default(edit_plan):
    # Prepare
    def edit(config, value):
        config["tasks"]["train"].setdefault("kwargs", {})["batch_size"] = value

    bad = edit_plan(lambda c: edit(c, -1))

    # Execute
    error = load_error(bad)

    # Assert
    assert error.code == "FX-PLAN-028"
    assert "tasks.train.kwargs.batch_size" in error.message
    Plan.load(edit_plan(lambda c: edit(c, None)))  # null: the loader's own batch size


@pytest.mark.parametrize(
    ("template", "text"),
    [
        ("openfl.interface.aggregation_functions.Medain", "(did you mean 'Median'?)"),
        ("Medianx", "(did you mean 'Median'?)"),
    ],
)
def test_a_misspelt_aggregation_rule_gets_the_name_meant(edit_plan, template, text):
    path = edit_plan(
        lambda c: c["tasks"]["train"].__setitem__("aggregation_type", {"template": template})
    )

    error = load_error(path)

    assert error.code == "FX-PLAN-007"  # not "a part of OpenFL fedrun does not provide"
    assert text in error.message


def test_openfl_s_eden_compression_is_named_as_unsupported_not_misspelt(edit_plan):
    path = edit_plan(
        lambda c: c.__setitem__(
            "compression_pipeline", {"template": "openfl.pipelines.EdenPipeline", "settings": {}}
        )
    )

    error = load_error(path)

    assert error.code == "FX-PLAN-036"
    assert "EDEN compression, which fedrun does not implement" in error.message
    assert "did you mean" not in error.message


def test_openfl_s_no_op_plan_is_named_with_what_to_use(edit_plan):
    def no_op(config):
        del config["tasks"]
        config["aggregator"]["settings"]["rounds_to_train"] = 0

    error = load_error(edit_plan(no_op))

    assert error.code == "FX-PLAN-013"
    assert "OpenFL's no-op template" in error.message
    assert "--template no-op" in error.fix


def test_openfl_s_flower_connector_section_is_named_as_unsupported(edit_plan):
    path = edit_plan(lambda c: c.__setitem__("connector", {"template": "x.Y", "settings": {}}))

    error = load_error(path)

    assert error.code == "FX-PLAN-036"
    assert "Flower" in error.message and "did you mean" not in error.message


def test_a_missing_openfl_module_named_by_the_plan_quotes_no_import_machinery(edit_plan):
    template = "openfl.interface.aggregation_functions.Zzz"  # close to nothing fedrun maps
    path = edit_plan(
        lambda c: c["tasks"]["train"].__setitem__("aggregation_type", {"template": template})
    )

    error = load_error(path)

    assert error.code == "FX-PLAN-030"
    assert "importlib" not in error.message and "fedrun/plan" not in error.message


def test_an_unknown_key_in_a_defaults_file_is_reported_in_that_file(workspace, edit_plan):
    defaults = workspace / "plan" / "defaults" / "aggregator.yaml"
    defaults.parent.mkdir(parents=True, exist_ok=True)
    defaults.write_text("settings:\n  sede: 42\n")
    path = edit_plan(
        lambda c: c["aggregator"].__setitem__("defaults", "plan/defaults/aggregator.yaml")
    )

    error = load_error(path)

    assert error.code == "FX-PLAN-010"
    assert error.message.startswith("plan/defaults/aggregator.yaml: aggregator.settings")
    assert "(did you mean 'seed'?)" in error.message


def test_a_missing_torch_add_on_is_installed_for_the_installed_torch(monkeypatch):
    # `pip install torchvision` replaced a CPU torch with a CUDA build; the workspace's
    # requirements.txt with an older torch
    from importlib import metadata

    from fedrun.plan.loader import install_hint

    monkeypatch.setattr(metadata, "version", lambda name: "2.13.0+cpu")
    torchvision = install_hint("torchvision")
    monkeypatch.setattr(metadata, "version", lambda name: "2.5.1")
    plain = install_hint("torchvision")

    assert "pip install 'torchvision==0.28.*' --index-url https://download.pytorch.org/whl/cpu" in (
        torchvision
    )
    assert "replaces torch with another build" in torchvision
    assert "pip install 'torchvision==0.20.*' (" in plain
    assert "requirements.txt" in install_hint("xgboost")


def test_a_failed_download_in_workspace_code_is_said_as_one(tmp_path):
    # Keras' get_file wraps the lookup failure in a plain Exception; it read "fix the
    # workspace code at the line shown"
    import socket

    from fedrun.plan.workspace_code import user_code_error

    try:
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except OSError as lookup:
            raise Exception("URL fetch failure on https://example.org/mnist.npz") from lookup
    except Exception as exc:
        error = user_code_error("data_loader", "src.dataloader.Mnist", exc, tmp_path)

    assert error.code == "FX-DATA-036"
    assert "tried to download something and the network failed" in error.message
    assert "put the data where the workspace code reads it" in error.fix


def test_fedrun_s_own_error_raised_in_workspace_code_is_not_wrapped(tmp_path):
    # e.g. the Keras backend check run by src/__init__.py: its fix, not "fix the workspace code"
    from fedrun.workspace.create import create_workspace

    ws = create_workspace(tmp_path / "ws", "torch/digits")
    (ws / "src" / "boom.py").write_text(
        "from fedrun.errors import PlanError\n"
        "raise PlanError('FX-MODEL-020', 'the backend is missing', 'export KERAS_BACKEND=torch')\n"
    )
    plan = Plan.load(ws / "plan" / "plan.yaml", workspace=ws)

    with pytest.raises(PlanError) as caught:
        plan.import_template("src.boom.Loader", "data_loader")

    assert caught.value.code == "FX-MODEL-020"
    assert caught.value.fix == "export KERAS_BACKEND=torch"
