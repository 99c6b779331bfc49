"""cols.yaml, data.yaml and --plan-set overrides."""

from __future__ import annotations

import pytest

from fedrun.errors import PlanError
from fedrun.plan.loader import Plan, parse_override, read_cols, read_data_paths, write_data_path


# ---------------------------------------------------------------------- cols.yaml
def test_read_cols(tmp_path):
    # Prepare
    path = tmp_path / "cols.yaml"
    path.write_text("collaborators:\n  - one\n  - two\n  - 3\n")

    # Execute
    cols = read_cols(path)

    # Assert
    assert cols == ["one", "two", "3"]


def test_read_cols_missing_or_empty_file_is_no_collaborator(tmp_path):
    # Prepare
    empty = tmp_path / "empty.yaml"
    empty.write_text("collaborators:\n")

    # Execute / Assert
    assert read_cols(tmp_path / "missing.yaml") == []
    assert read_cols(empty) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- one\n- two\n", "must hold `collaborators: [names]`"),
        ("collaborators: one\n", "`collaborators` must be a list of names"),
        ("collaborators: [one, {two: 2}]\n", "`collaborators` must be a list of names"),
        ("collaborators: [one, two, one]\n", "lists one more than once"),
    ],
)
def test_read_cols_refuses_malformed_files(tmp_path, text, expected):
    # Prepare
    path = tmp_path / "cols.yaml"
    path.write_text(text)

    # Execute
    with pytest.raises(PlanError) as caught:
        read_cols(path)

    # Assert
    assert caught.value.code == "FX-PLAN-004"
    assert str(path) in caught.value.message
    assert expected in caught.value.message
    assert caught.value.fix


# ---------------------------------------------------------------------- data.yaml
def test_read_data_paths_skips_comments_and_blank_lines(tmp_path):
    # Prepare
    path = tmp_path / "data.yaml"
    path.write_text("# name,path\n\none,1\n  two , data/two,with,commas \n")

    # Execute
    paths = read_data_paths(path)

    # Assert
    assert paths == {"one": "1", "two": "data/two,with,commas"}
    assert read_data_paths(tmp_path / "missing.yaml") == {}


@pytest.mark.parametrize(
    ("text", "message", "fix"),
    [
        ("# header\none,1\ntwo\n", "line 3: 'two' is not `name,data_path`", ""),
        (
            "one,1\ntwo,  \n",
            "line 2: collaborator 'two' has an empty data path",
            "fx collaborator create -n two -d",
        ),
    ],
)
def test_read_data_paths_names_the_bad_line(tmp_path, text, message, fix):
    # Prepare
    path = tmp_path / "data.yaml"
    path.write_text(text)

    # Execute
    with pytest.raises(PlanError) as caught:
        read_data_paths(path)

    # Assert
    assert caught.value.code == "FX-PLAN-005"
    assert f"{path} {message}" in caught.value.message
    assert caught.value.fix and fix in caught.value.fix


@pytest.mark.parametrize("bad", ["", "   ", "data/a\nthree,3"])
def test_write_data_path_refuses_an_empty_or_multi_line_path_and_writes_nothing(tmp_path, bad):
    # Prepare
    path = tmp_path / "data.yaml"
    path.write_text("one,1\n")

    # Execute
    with pytest.raises(PlanError) as caught:
        write_data_path(path, "two", bad)

    # Assert
    assert caught.value.code == "FX-PLAN-005"
    assert path.read_text() == "one,1\n"


def test_write_data_path_replaces_the_entry_and_keeps_every_other_line(tmp_path):
    # Prepare
    path = tmp_path / "plan" / "data.yaml"
    path.parent.mkdir()
    path.write_text("# collaborators\none,1\n\n# keep me\ntwo,2\n")

    # Execute
    write_data_path(path, "one", "7")
    write_data_path(path, "three", "data/three")

    # Assert
    assert path.read_text() == "# collaborators\none,7\n\n# keep me\ntwo,2\nthree,data/three\n"
    assert read_data_paths(path) == {"one": "7", "two": "2", "three": "data/three"}


def test_write_data_path_creates_the_file(tmp_path):
    # Prepare
    path = tmp_path / "plan" / "data.yaml"

    # Execute
    write_data_path(path, "one", "1")

    # Assert
    assert path.read_text() == "one,1\n"


def test_write_data_path_does_not_touch_a_commented_entry_of_the_same_name(tmp_path):
    # Prepare
    path = tmp_path / "data.yaml"
    path.write_text("#one,old\n")

    # Execute
    write_data_path(path, "one", "2")

    # Assert
    assert path.read_text() == "#one,old\none,2\n"


def test_plan_load_reads_cols_and_data(workspace):
    # Prepare
    (workspace / "plan" / "cols.yaml").write_text("collaborators: [one, two]\n")
    write_data_path(workspace / "plan" / "data.yaml", "one", "1")

    # Execute
    plan = Plan.load(workspace / "plan" / "plan.yaml")

    # Assert
    assert plan.cols == ["one", "two"]
    assert plan.data_paths == {"one": "1"}
    assert plan.cols_path == workspace / "plan" / "cols.yaml"


# ---------------------------------------------------------------------- overrides
@pytest.mark.parametrize(
    ("item", "keys", "value"),
    [
        ("aggregator.rounds_to_train=3", ["aggregator", "settings", "rounds_to_train"], 3),
        ("network.use_tls=false", ["network", "settings", "use_tls"], False),
        ("network.agg_addr=localhost", ["network", "settings", "agg_addr"], "localhost"),
        ("aggregator.settings.seed=4", ["aggregator", "settings", "seed"], 4),
        (
            "assigner.template=StaticGroupedAssigner",
            ["assigner", "template"],
            "StaticGroupedAssigner",
        ),
        ("tasks.train.kwargs.epochs=2", ["tasks", "train", "kwargs", "epochs"], 2),
        ("data_loader.path=a=b", ["data_loader", "settings", "path"], "a=b"),
        ("network.cert_folder=[", ["network", "settings", "cert_folder"], "["),
        (" aggregator.write_logs = true", ["aggregator", "settings", "write_logs"], True),
    ],
)
def test_parse_override(item, keys, value):
    assert parse_override(item) == (keys, value)


@pytest.mark.parametrize("item", ["aggregator.rounds_to_train", "rounds_to_train=3", ".=1"])
def test_parse_override_refuses_malformed_items(item):
    # Execute
    with pytest.raises(PlanError) as caught:
        parse_override(item)

    # Assert
    assert caught.value.code == "FX-PLAN-006"
    assert repr(item) in caught.value.message
    assert "section.key=value" in caught.value.fix
