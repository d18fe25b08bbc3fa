"""Settings reach the components that use them in one way (`from_settings`): each component field takes the setting
of its name, or the one its `setting()` names. These tests fail on drift: a component field that names no setting
and is not declared as given by the server or fixed, or a setting renamed under a component that takes it."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from service.access.control import Limits
from service.batches.files import UploadLimits
from service.batches.settings import BatchSettings
from service.config import Settings, from_settings, setting, setting_of
from service.engine.batcher import BatchLimits
from service.engine.registry import EngineOptions
from service.jobs.runner import JobSettings
from service.server import engine_options, job_settings

# Every component built from Settings: (the fields the server gives it, parsed or composed; the fields that are no
# setting at all, fixed in the component).
COMPONENTS: dict[type, tuple[set[str], set[str]]] = {
    EngineOptions: ({"model_repo", "aliases", "provider_options", "batching"}, set()),
    BatchLimits: (
        {"background_min_share"},
        {
            "concurrent_batches",
            "background_batch_size",
            "background_spare_tokens",
            "interactive_grace_s",
            "window_batches",
        },
    ),
    JobSettings: ({"webhook_policy"}, {"poll_s", "max_chunk_failures"}),
    BatchSettings: (
        set(),
        {"window_s", "poll_s", "part_inputs", "part_text_bytes", "max_errors", "sweep_s", "stale_upload_s"},
    ),
    UploadLimits: (set(), {"max_line_bytes"}),
    Limits: (set(), set()),
}
SETTINGS = {f.name for f in fields(Settings)}


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda kind: kind.__name__)
def test_every_field_of_a_component_takes_a_setting_unless_declared_otherwise(component: type) -> None:
    given, fixed = COMPONENTS[component]
    for field in fields(component):
        name = setting_of(field)
        if field.name in given:
            continue
        if field.name in fixed:
            assert name not in SETTINGS, f"{component.__name__}.{field.name} is a setting now: drop it from fixed"
        else:
            assert name in SETTINGS, (
                f"{component.__name__}.{field.name} takes no setting ({name!r} is not one): name the field after a "
                "setting, map it with setting(), or declare it given or fixed here"
            )


def _distinct_settings() -> Settings:
    """Settings whose every number differs from its default and from every other, every flag flipped."""
    values: dict[str, object] = {}
    for i, field in enumerate(fields(Settings), start=1):
        if field.type == "bool":
            values[field.name] = not field.default
        elif field.type == "int":
            values[field.name] = 1000 + i
        elif field.type == "float":
            values[field.name] = 0.01 * i
    return Settings(**values, model_repo="elsewhere", aliases=("small=minilm",), webhook_retry_schedule="1s,2m")


def test_each_component_holds_the_values_of_the_settings_it_takes() -> None:
    settings = _distinct_settings()
    engine = engine_options(settings)
    jobs = job_settings(settings)
    built = {
        EngineOptions: engine,
        BatchLimits: engine.batching,
        JobSettings: jobs,
        BatchSettings: from_settings(BatchSettings, settings),
        UploadLimits: from_settings(UploadLimits, settings),
        Limits: from_settings(Limits, settings),
    }
    for component, instance in built.items():
        given, fixed = COMPONENTS[component]
        for field in fields(component):
            if field.name not in given | fixed:
                assert getattr(instance, field.name) == getattr(settings, setting_of(field)), (component, field.name)
    assert engine.model_repo == Path("elsewhere")
    assert engine.aliases == {"small": "minilm"}
    assert engine.batching.background_min_share == settings.job_min_share
    assert jobs.webhook_policy.delays_s == (1.0, 120.0)
    assert jobs.webhook_policy.timeout_s == settings.webhook_timeout_s


def test_a_component_field_cannot_name_a_setting_that_does_not_exist() -> None:
    with pytest.raises(AttributeError, match="job_chunk_sise"):
        setting("job_chunk_sise")


def test_a_mapped_field_defaults_to_its_setting_unless_told_otherwise() -> None:
    assert JobSettings().chunk_size == Settings().job_chunk_size
    assert UploadLimits().max_file_bytes == Settings().batch_max_file_bytes
    assert Limits().key_rpm == 0 != Settings().rate_limit_rpm  # a bare Limits() limits nothing
