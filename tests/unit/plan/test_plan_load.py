"""Plan.load: defaults merging, OpenFL aliases, workspace templates, overrides, 1.6 names, hash."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from fedrun.aggregation import Median
from fedrun.compression import NoCompressionPipeline
from fedrun.errors import PlanError
from fedrun.federation.aggregator import Aggregator
from fedrun.federation.collaborator import Collaborator
from fedrun.plan.aliases import resolve_template
from fedrun.plan.loader import PACKAGED_DEFAULTS, Plan, deep_merge, diff_plans
from fedrun.workspace.create import create_workspace
from fedrun.workspace.templates_catalog import TEMPLATES_DIR

MINIMAL_PLAN = """\
data_loader:
  template: src.dataloader.DigitsInMemory
  settings: {batch_size: 16}
task_runner:
  template: src.taskrunner.DigitsCNN
tasks:
  defaults: plan/defaults/tasks_torch.yaml
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------------- defaults
def test_left_out_sections_get_the_packaged_defaults(plan_path):
    # Prepare
    write(plan_path, MINIMAL_PLAN)

    # Execute
    plan = Plan.load(plan_path)

    # Assert
    for name in ("aggregator", "collaborator", "network", "assigner", "compression_pipeline"):
        packaged = yaml.safe_load((PACKAGED_DEFAULTS / f"{name}.yaml").read_text())
        assert plan.config[name] == packaged, name
    assert plan.template("straggler_handling_policy").endswith("WaitForAllPolicy")
    assert plan.config["data_loader"]["settings"] == {"batch_size": 16}
    assert plan.config["task_runner"]["settings"] == {}
    assert list(plan.tasks) == [
        "aggregated_model_validation",
        "locally_tuned_model_validation",
        "train",
    ]


def test_left_out_collaborator_settings_are_openfl_s_defaults(plan_path):
    # an OpenFL plan that leaves them to plan/defaults/collaborator.yaml keeps the optimizer
    # state between rounds and sends deltas, as under OpenFL (it once got RESET and weights)
    write(plan_path, MINIMAL_PLAN)

    settings = Plan.load(plan_path).settings("collaborator")

    assert settings["opt_treatment"] == "CONTINUE_LOCAL"
    assert settings["use_delta_updates"] is True
    assert settings["db_store_rounds"] == 1


def test_workspace_defaults_file_wins_over_packaged_one_and_plan_wins_over_both(
    workspace, plan_path
):
    # Prepare: the workspace's own defaults, merged deeply under the plan's settings
    write(
        workspace / "plan" / "defaults" / "aggregator.yaml",
        """\
        template: fedrun.federation.aggregator.Aggregator
        settings:
          rounds_to_train: 7
          db_store_rounds: 5
          best_model_mode: min
        """,
    )
    write(
        plan_path,
        MINIMAL_PLAN
        + textwrap.dedent(
            """\
            aggregator:
              defaults: plan/defaults/aggregator.yaml
              settings:
                rounds_to_train: 3
            """
        ),
    )

    # Execute
    plan = Plan.load(plan_path)

    # Assert: workspace file used (not the packaged one), plan value wins, rest kept
    assert plan.config["aggregator"]["settings"] == {
        "rounds_to_train": 3,
        "db_store_rounds": 5,
        "best_model_mode": "min",
    }
    assert "defaults" not in plan.config["aggregator"]
    assert plan.rounds_to_train == 3
    assert plan.settings("aggregator")["final_validation"] is True  # schema default


def test_tasks_defaults_merge_deeply(plan_path):
    # Prepare: the plan changes only epochs of train; metrics come from the defaults file
    write(
        plan_path,
        MINIMAL_PLAN
        + """\
  train:
    kwargs:
      epochs: 4
""",
    )

    # Execute
    plan = Plan.load(plan_path)

    # Assert
    assert plan.tasks["train"].function == "train_task"
    assert dict(plan.tasks["train"].kwargs) == {"metrics": ["loss"], "epochs": 4}
    assert plan.tasks["aggregated_model_validation"].kwargs["apply"] == "global"


def test_deep_merge_replaces_lists_and_scalars_and_copies():
    # Prepare
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    over = {"a": {"c": [3]}, "e": {"f": 2}}

    # Execute
    merged = deep_merge(base, over)
    merged["a"]["c"].append(9)

    # Assert
    assert merged == {"a": {"b": 1, "c": [3, 9]}, "d": 1, "e": {"f": 2}}
    assert over == {"a": {"c": [3]}, "e": {"f": 2}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}


def test_expanded_plan_hashes_like_the_template_plan_it_came_from(workspace, plan_path):
    # Prepare
    expanded = Plan.load(plan_path)
    source = TEMPLATES_DIR / "torch" / "digits" / "plan" / "plan.yaml"
    plan_path.write_text(source.read_text())

    # Execute
    original = Plan.load(plan_path)

    # Assert
    assert original.config == expanded.config
    assert original.hash == expanded.hash


# ---------------------------------------------------------------------- aliases
@pytest.mark.parametrize(
    ("alias", "target"),
    [
        ("openfl.component.aggregator.Aggregator", "fedrun.federation.aggregator.Aggregator"),
        ("openfl.component.Aggregator", "fedrun.federation.aggregator.Aggregator"),
        ("openfl.component.Collaborator", "fedrun.federation.collaborator.Collaborator"),
        ("openfl.pipelines.NoCompressionPipeline", "fedrun.compression.NoCompressionPipeline"),
        ("openfl.interface.aggregation_functions.Median", "fedrun.aggregation.Median"),
        (
            "openfl.component.RandomGroupedAssigner",
            "fedrun.federation.assigner.RandomGroupedAssigner",
        ),
        (
            "openfl.component.straggler_handling_functions.CutoffTimeBasedStragglerHandling",
            "fedrun.federation.stragglers.CutoffTimePolicy",
        ),
        ("WeightedAverage", "fedrun.aggregation.WeightedAverage"),
        ("src.taskrunner.DigitsCNN", "src.taskrunner.DigitsCNN"),
    ],
)
def test_resolve_template(alias, target):
    assert resolve_template(alias) == target


def test_openfl_names_in_a_plan_resolve_to_fedrun_classes(edit_plan):
    # Prepare
    def change(config):
        config["aggregator"]["template"] = "openfl.component.aggregator.Aggregator"
        config["collaborator"]["template"] = "openfl.component.Collaborator"
        config["compression_pipeline"]["template"] = "openfl.pipelines.NoCompressionPipeline"
        config["tasks"]["train"]["aggregation_type"] = {
            "template": "openfl.interface.aggregation_functions.Median"
        }

    path = edit_plan(change)

    # Execute
    plan = Plan.load(path)

    # Assert
    assert plan.import_template(plan.template("aggregator"), "t") is Aggregator
    assert plan.import_template(plan.template("collaborator"), "t") is Collaborator
    assert isinstance(plan.build("compression_pipeline"), NoCompressionPipeline)
    agg = plan.tasks["train"].aggregation_type
    assert plan.import_template(agg["template"], "t") is Median
    assert plan.settings("aggregator")["rounds_to_train"] == 3  # schema of the fedrun class


def test_seed_example_plan_loads_unchanged_in_a_torch_mnist_workspace(tmp_path):
    # Prepare: the template's plan.yaml is the seed document's example plan, unexpanded
    ws = create_workspace(tmp_path / "mnist", "torch/mnist")
    plan_path = ws / "plan" / "plan.yaml"
    plan_path.write_text((TEMPLATES_DIR / "torch" / "mnist" / "plan" / "plan.yaml").read_text())

    # Execute
    plan = Plan.load(plan_path)

    # Assert
    assert plan.template("aggregator") == "fedrun.federation.aggregator.Aggregator"
    assert plan.template("compression_pipeline") == "fedrun.compression.NoCompressionPipeline"
    assert plan.rounds_to_train == 2
    assert "settings" not in plan.config["tasks"]
    assert set(plan.tasks) == {
        "aggregated_model_validation",
        "locally_tuned_model_validation",
        "train",
    }


# ---------------------------------------------------------------------- src templates
def test_workspace_templates_are_found_without_importing_them(workspace):
    # Prepare: the task runner module imports torch; loading the plan must not
    assert "import torch" in (workspace / "src" / "taskrunner.py").read_text()
    script = textwrap.dedent(
        f"""
        import sys
        from fedrun.plan.loader import Plan
        plan = Plan.load({str(workspace / "plan" / "plan.yaml")!r})
        assert plan.template("task_runner") == "src.taskrunner.DigitsCNN"
        leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("src"))
        print("LEAKED", leaked)
        """
    )

    # Execute
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=workspace.parent,
        env={**os.environ, "PYTHONPATH": ""},
        timeout=60,
    )

    # Assert
    assert done.returncode == 0, done.stderr
    assert "LEAKED []" in done.stdout


def test_runner_functions_are_read_statically_including_the_base_class(workspace):
    # Execute
    functions = Plan.load(workspace / "plan" / "plan.yaml").runner_functions()

    # Assert
    assert functions is not None
    assert {"train_task", "validate_task", "forward", "__init__"} <= functions


# ---------------------------------------------------------------------- overrides
def test_overrides_set_settings_and_task_kwargs(plan_path):
    # Execute
    plan = Plan.load(
        plan_path,
        overrides=[
            "aggregator.rounds_to_train=5",
            "network.use_tls=false",
            "tasks.train.kwargs.epochs=2",
            "data_loader.settings.batch_size=8",
        ],
    )

    # Assert
    assert plan.rounds_to_train == 5
    assert plan.network["use_tls"] is False
    assert plan.tasks["train"].kwargs["epochs"] == 2
    assert plan.config["data_loader"]["settings"]["batch_size"] == 8


def test_override_is_validated_like_the_plan(plan_path):
    # Execute
    with pytest.raises(Exception) as caught:
        Plan.load(plan_path, overrides=["aggregator.rounds_to_trian=5"])

    # Assert
    assert caught.value.code == "FX-PLAN-010"
    assert "did you mean 'rounds_to_train'" in caught.value.message


# ---------------------------------------------------------------------- OpenFL 1.6 names
def test_openfl_1_6_names_are_normalized_in_an_expanded_plan(edit_plan):
    # Prepare: a plan that spells everything the OpenFL 1.6 way
    def change(config):
        net = config["network"]["settings"]
        del net["use_tls"], net["require_client_auth"]
        net["tls"] = False
        net["disable_client_auth"] = True
        col = config["collaborator"]["settings"]
        del col["use_delta_updates"]
        col["delta_updates"] = True

    path = edit_plan(change)

    # Execute
    plan = Plan.load(path)

    # Assert
    net = plan.config["network"]["settings"]
    assert (net["use_tls"], net["require_client_auth"]) == (False, False)
    assert "tls" not in net and "disable_client_auth" not in net
    assert plan.config["collaborator"]["settings"]["use_delta_updates"] is True
    assert "delta_updates" not in plan.config["collaborator"]["settings"]


@pytest.mark.parametrize(
    ("old", "old_value", "new", "new_value", "conflict"),
    [
        ("tls", False, "use_tls", True, True),
        ("disable_client_auth", False, "require_client_auth", False, True),
        ("tls", True, "use_tls", True, False),  # the same meaning twice: accepted
    ],
)
def test_both_names_of_one_setting_in_one_place_must_agree(
    edit_plan, old, old_value, new, new_value, conflict
):
    path = edit_plan(lambda c: c["network"]["settings"].update({old: old_value, new: new_value}))

    if not conflict:
        assert Plan.load(path).network[new] is new_value
        return
    with pytest.raises(PlanError) as caught:
        Plan.load(path)
    assert caught.value.code == "FX-PLAN-034"
    assert old in caught.value.message and new in caught.value.message


def test_openfl_1_6_names_beat_the_packaged_defaults_merged_under_them(plan_path):
    # Prepare: an OpenFL 1.6 plan that leans on `defaults:` (fedrun's packaged files use the
    # current names, so the plan's old-name values must still win the merge)
    write(
        plan_path,
        MINIMAL_PLAN
        + textwrap.dedent(
            """\
            network:
              defaults: plan/defaults/network.yaml
              settings:
                tls: false
                disable_client_auth: true
            collaborator:
              defaults: plan/defaults/collaborator.yaml
              settings:
                delta_updates: true
            """
        ),
    )

    # Execute
    plan = Plan.load(plan_path)

    # Assert
    assert plan.network["use_tls"] is False
    assert plan.network["require_client_auth"] is False
    assert plan.settings("collaborator")["use_delta_updates"] is True


def test_openfl_1_6_name_in_an_override_wins(plan_path):
    # Execute
    plan = Plan.load(plan_path, overrides=["network.tls=false", "collaborator.delta_updates=true"])

    # Assert
    assert plan.network["use_tls"] is False
    assert plan.settings("collaborator")["use_delta_updates"] is True


# ---------------------------------------------------------------------- hash
def test_hash_is_stable_across_loads_and_key_order(plan_path):
    # Prepare
    first = Plan.load(plan_path)
    config = yaml.safe_load(plan_path.read_text())
    reordered = dict(reversed(list(config.items())))
    plan_path.write_text(yaml.safe_dump(reordered, sort_keys=False))

    # Execute
    second = Plan.load(plan_path)

    # Assert
    assert first.hash == second.hash
    assert len(first.hash) == 64 and int(first.hash, 16) >= 0
    assert first.federation_id == f"plan_{first.hash[:12]}"


@pytest.mark.parametrize("override", ["network.agg_addr=agg.example.org", "network.agg_port=51234"])
def test_hash_ignores_the_aggregator_address(plan_path, override):
    # Execute
    base = Plan.load(plan_path)
    moved = Plan.load(plan_path, overrides=[override])

    # Assert
    assert moved.config != base.config
    assert moved.hash == base.hash


@pytest.mark.parametrize(
    "override",
    [
        "aggregator.rounds_to_train=4",
        "aggregator.best_model_mode=min",
        "collaborator.opt_treatment=CONTINUE_LOCAL",
        "network.use_tls=false",
        "network.chunk_bytes=65536",
        "tasks.train.kwargs.epochs=6",
        "data_loader.settings.batch_size=8",
        "straggler_handling_policy.template=PercentagePolicy",
    ],
)
def test_hash_changes_with_any_other_setting(plan_path, override):
    # Execute
    base = Plan.load(plan_path)
    changed = Plan.load(plan_path, overrides=[override])

    # Assert
    assert changed.hash != base.hash


def test_agg_port_auto_is_derived_from_the_hash(plan_path):
    # Execute
    plan = Plan.load(plan_path)
    fixed = Plan.load(plan_path, overrides=["network.agg_port=51234"])

    # Assert
    assert 49152 <= plan.agg_port <= 60999
    assert plan.agg_port == Plan.load(plan_path).agg_port
    assert fixed.agg_port == 51234


def test_diff_plans_names_the_differing_key_paths():
    # Prepare
    a = {"aggregator": {"settings": {"rounds_to_train": 3, "seed": 1}}, "tasks": {"x": 1}}
    b = {"aggregator": {"settings": {"rounds_to_train": 4, "seed": 1}}, "network": {}}

    # Execute
    diff = diff_plans(a, b)

    # Assert
    assert diff == ["aggregator.settings.rounds_to_train", "network", "tasks"]
    assert diff_plans(a, a) == []


@pytest.fixture
def isolated_imports(monkeypatch):
    """Undo what importing workspace code does to sys.path and sys.modules."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name == "src" or name.startswith("src."):
            del sys.modules[name]


def test_each_plan_imports_its_own_workspace_code(tmp_path, isolated_imports):
    # Prepare: two no-op workspaces whose src/noop.py differ
    first = create_workspace(tmp_path / "first", "no-op")
    second = create_workspace(tmp_path / "second", "no-op")
    source = second / "src" / "noop.py"
    source.write_text(source.read_text() + "\n\nclass OnlyInSecond:\n    pass\n")
    plan_one = Plan.load(first / "plan" / "plan.yaml")
    plan_two = Plan.load(second / "plan" / "plan.yaml")

    # Execute
    runner_one = plan_one.import_template(plan_one.template("task_runner"), "task_runner")
    only_two = plan_two.import_template("src.noop.OnlyInSecond", "task_runner")

    # Assert
    def source_of(cls: type) -> Path:
        return Path(
            vars(cls)["__init__"].__code__.co_filename
            if "__init__" in vars(cls)
            else inspect.getfile(cls)
        )

    assert source_of(runner_one).is_relative_to(first)
    assert source_of(only_two).is_relative_to(second)
    again = plan_one.import_template(plan_one.template("task_runner"), "task_runner")
    assert source_of(again).is_relative_to(first)


# ---------------------------------------------------------------------- OpenFL 1.9 defaults
#: plan/defaults/network.yaml exactly as OpenFL 1.9's `fx workspace create` writes it
OPENFL_1_9_NETWORK_DEFAULTS = """\
template: openfl.federation.Network
settings:
    agg_addr                   : auto
    agg_port                   : auto
    hash_salt                  : auto
    use_tls                    : True
    client_reconnect_interval  : 5
    require_client_auth        : True
    cert_folder                : cert
    enable_atomic_connections  : False
    transport_protocol         : grpc
"""


def test_openfl_1_9_network_defaults_load(plan_path):
    # Prepare: the workspace's own defaults file, as every OpenFL 1.9 workspace has it
    defaults = plan_path.parent / "defaults"
    defaults.mkdir(exist_ok=True)
    write(defaults / "network.yaml", OPENFL_1_9_NETWORK_DEFAULTS)
    write(plan_path, MINIMAL_PLAN + "network:\n  defaults: plan/defaults/network.yaml\n")

    # Execute
    plan = Plan.load(plan_path)

    # Assert
    assert plan.network["transport_protocol"] == "grpc"
    assert plan.network["enable_atomic_connections"] is False
    assert plan.network["use_tls"] is True


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("network.transport_protocol=rest", "gRPC only"),
        ("aggregator.secure_aggregation=true", "secure aggregation is not implemented"),
    ],
)
def test_openfl_features_fedrun_lacks_are_refused_by_name(plan_path, override, named):
    with pytest.raises(PlanError) as caught:
        Plan.load(plan_path, overrides=[override])

    assert caught.value.code == "FX-PLAN-012"
    assert named in str(caught.value)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (
            "aggregator.callbacks=[src.callbacks.Mine]",
            "aggregator callbacks, which fedrun does not run",
        ),
        (
            "tasks.train.aggregation_type.template="
            "openfl.interface.aggregation_functions.SecureWeightedAverage",
            "OpenFL's secure aggregation, which fedrun does not implement",
        ),
    ],
)
def test_openfl_1_9_parts_fedrun_lacks_are_named_not_mistaken(plan_path, override, named):
    # callbacks was "unknown key"; SecureWeightedAverage "did you mean FedCurvWeightedAverage"
    write(plan_path, MINIMAL_PLAN)
    with pytest.raises(PlanError) as caught:
        plan = Plan.load(plan_path, overrides=[override])
        if "aggregation_type" in override:
            from fedrun.plan.components import aggregation_functions

            aggregation_functions(plan)

    assert caught.value.code == "FX-PLAN-036"
    assert named in str(caught.value)


def test_openfl_features_switched_off_are_accepted(plan_path):
    plan = Plan.load(
        plan_path,
        overrides=[
            "aggregator.secure_aggregation=false",
            "network.resend_data_on_reconnection=true",
        ],
    )

    assert plan.settings("aggregator")["secure_aggregation"] is False


# ---------------------------------------------------------------------- OpenFL src/ code
OPENFL_RUNNER = """\
\"\"\"An OpenFL 1.9 task runner, as its template writes it.\"\"\"
import numpy as np

from openfl.federated import PyTorchTaskRunner
from openfl.utilities import Metric
{extra}

class DigitsCNN(PyTorchTaskRunner):
    def validate_(self, loader):
        return Metric("accuracy", 1.0)
"""


def test_openfl_imports_of_the_taskrunner_api_load_fedruns_classes(workspace, plan_path):
    # Prepare: src/ exactly as OpenFL code starts (the imports fedrun stands in for)
    (workspace / "src" / "taskrunner.py").write_text(OPENFL_RUNNER.format(extra=""))

    # Execute
    plan = Plan.load(plan_path)
    runner_class = plan.import_template(plan.template("task_runner"), "task_runner.template")

    # Assert: the workspace class is one of fedrun's runners, its Metric fedrun's
    from fedrun.runners.base import Metric
    from fedrun.runners.torch import PyTorchTaskRunner

    assert issubclass(runner_class, PyTorchTaskRunner)
    assert runner_class.validate_(None, None) == Metric("accuracy", 1.0)


def test_loading_names_an_openfl_import_fedrun_does_not_provide(workspace, plan_path):
    extra = "from openfl.utilities import TensorKey"
    (workspace / "src" / "taskrunner.py").write_text(OPENFL_RUNNER.format(extra=extra))

    with pytest.raises(PlanError) as caught:
        Plan.load(plan_path)

    assert caught.value.code == "FX-PLAN-030"
    text = str(caught.value)
    assert "src/taskrunner.py:6" in text and "openfl.utilities.TensorKey" in text
    assert "openfl.federated.{PyTorchTaskRunner," in text  # what is provided


def test_building_code_that_imports_more_of_openfl_names_the_line_not_pip_install(
    workspace, plan_path
):
    # Prepare: the unprovided import sits in a module the task runner's module imports
    extra = "from openfl.interface.aggregation_functions import WeightedAverage"
    (workspace / "src" / "openfl_base.py").write_text(OPENFL_RUNNER.format(extra=extra))
    runner = workspace / "src" / "taskrunner.py"
    runner.write_text(runner.read_text() + "\nfrom src.openfl_base import DigitsCNN as Other\n")
    plan = Plan.load(plan_path)

    # Execute
    with pytest.raises(PlanError) as caught:
        plan.import_template(plan.template("task_runner"), "task_runner.template")

    # Assert
    assert caught.value.code == "FX-PLAN-030"
    assert f"{workspace / 'src' / 'openfl_base.py'}:6" in str(caught.value)
    assert "pip install" not in str(caught.value)


def test_an_exception_in_the_workspaces_constructor_names_its_line(workspace, plan_path):
    # Prepare: OpenFL code calling something fedrun's runner lacks, inside the constructor
    runner = workspace / "src" / "taskrunner.py"
    text = runner.read_text().replace(
        "        self.loss_fn = F.cross_entropy\n",
        "        self.loss_fn = F.cross_entropy\n        self.openfl_only_bookkeeping()\n",
    )
    runner.write_text(text)
    line = text.splitlines().index("        self.openfl_only_bookkeeping()") + 1
    plan = Plan.load(plan_path)

    # Execute
    with pytest.raises(PlanError) as caught:
        plan.build("task_runner", data_loader=None)

    # Assert: a plan error (a clean exit), naming the exception and the workspace's line
    assert caught.value.code == "FX-PLAN-032"
    text = str(caught.value)
    assert "AttributeError" in text and "openfl_only_bookkeeping" in text
    assert f"src/taskrunner.py:{line} in __init__" in text


def test_an_exception_while_importing_workspace_code_names_its_line(workspace, plan_path):
    # Prepare: OpenFL's torch/template workspace raises in its module body until filled in
    loader = workspace / "src" / "dataloader.py"
    loader.write_text(
        loader.read_text() + "\nraise NotImplementedError('Use the template. Then remove this')\n"
    )
    line = len(loader.read_text().splitlines())
    plan = Plan.load(plan_path)

    # Execute
    with pytest.raises(PlanError) as caught:
        plan.import_template(plan.template("data_loader"), "data_loader.template")

    # Assert: a clean plan error, not a traceback
    assert caught.value.code == "FX-PLAN-032"
    text = str(caught.value)
    assert "importing module 'src.dataloader' failed: NotImplementedError" in text
    assert f"src/dataloader.py:{line} in <module>" in text


def test_a_frozen_plan_is_the_same_federation_as_its_original(plan_path, monkeypatch):
    from click.testing import CliRunner

    from fedrun.cli.main import cli

    monkeypatch.chdir(plan_path.parent.parent)
    original = Plan.load(plan_path)
    assert CliRunner().invoke(cli, ["plan", "freeze"]).exit_code == 0
    frozen = Plan.load(plan_path.parent / f"plan_{original.hash[:8]}.yaml")

    assert frozen.hash == original.hash
    assert frozen.federation_id == original.federation_id  # nodes on either file are one federation
