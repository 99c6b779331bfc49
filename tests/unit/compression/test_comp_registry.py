"""pipeline_by_name and available_pipelines."""

from __future__ import annotations

import pytest

from fedrun.compression import (
    CompressionPipeline,
    KCPipeline,
    NoCompressionPipeline,
    RandomShiftPipeline,
    SKCPipeline,
    STCPipeline,
    available_pipelines,
    pipeline_by_name,
)


def test_available_pipelines_by_wire_name():
    assert available_pipelines() == {
        "none": NoCompressionPipeline,
        "random_shift": RandomShiftPipeline,
        "stc": STCPipeline,
        "skc": SKCPipeline,
        "kc": KCPipeline,
    }


@pytest.mark.parametrize("name", ["stc", "STCPipeline"])
def test_pipeline_by_wire_or_class_name_with_settings(name):
    pipeline = pipeline_by_name(name, p_sparsity=0.25)

    assert isinstance(pipeline, STCPipeline) and isinstance(pipeline, CompressionPipeline)
    assert pipeline.p_sparsity == 0.25


def test_every_pipeline_builds_with_defaults():
    for name, cls in available_pipelines().items():
        assert type(pipeline_by_name(name)) is cls
        assert cls.name == name


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="available: kc, none, random_shift, skc, stc"):
        pipeline_by_name("gzip")


def test_unknown_setting_is_a_value_error():
    with pytest.raises(ValueError, match="KCPipeline"):
        pipeline_by_name("kc", n_clusterz=4)


def test_invalid_setting_value_is_a_value_error():
    with pytest.raises(ValueError, match="n_clusters"):
        pipeline_by_name("skc", n_clusters=1000)
