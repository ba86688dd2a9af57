"""The YAML run config: schema, defaults, validation messages and safe loading."""

from __future__ import annotations

import dataclasses
import inspect
import os

import pytest
import yaml

from specufex_dask.config import (
    DEFAULT_OUTPUT,
    OutputLayout,
    RunConfig,
    default_config_yaml,
    load_config,
    redact_options,
)
from specufex_dask.hmm import BayesianHMM
from specufex_dask.nmf import BayesianNonparametricNMF
from specufex_dask.spectrogram import SpectrogramRecipe

#: the smallest valid config: where the windows are
MINIMAL = {"spectrograms": {"catalog": "catalog.csv", "waveforms": "windows.mseed"}}


def _with(**sections) -> dict:
    """MINIMAL with some sections replaced or added."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in MINIMAL.items()}
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return data


def _keys(mapping: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in mapping.items():
        out.add(prefix + key)
        if isinstance(value, dict) and key not in ("recipe", "storage_options"):
            out |= _keys(value, prefix + key + ".")
    return out


# -- the template ------------------------------------------------------------


def test_config_template_round_trips() -> None:
    text = default_config_yaml()
    data = yaml.safe_load(text)

    config = load_config(data)

    assert config.to_dict() == data
    assert load_config(config.to_dict()) == config


def test_config_template_lists_every_key_at_its_default() -> None:
    data = yaml.safe_load(default_config_yaml())
    defaults = RunConfig().to_dict()

    assert _keys(data) == _keys(defaults)
    for section in ("dask", "nmf", "hmm", "cluster"):
        assert data[section] == defaults[section]
    assert data["output"] == DEFAULT_OUTPUT
    assert (data["figures"], data["overwrite"]) == (True, False)
    # the recipe block spells out the recipe's own defaults
    assert SpectrogramRecipe.from_dict(data["spectrograms"]["recipe"]) == (
        SpectrogramRecipe()
    )


def test_config_template_file_loads(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(default_config_yaml(), encoding="utf-8")

    config = load_config(path)

    assert config.spectrograms.source == "catalog"
    assert config.nmf.n_patterns == 75
    assert config.layout.nmf == os.path.join(DEFAULT_OUTPUT, "nmf.nc")


def test_config_defaults_fill_missing_keys() -> None:
    config = load_config(_with(nmf={"n_patterns": 40}, hmm=None))

    assert config.nmf.n_patterns == 40
    assert config.nmf.n_steps == 100
    assert config.hmm.n_states == 15
    assert config.cluster.k_range == range(2, 11)
    assert config.nmf.model_params()["n_patterns"] == 40
    assert "checkpoint_every" not in config.hmm.model_params()


@pytest.mark.parametrize(
    ("section", "model"), [("nmf", BayesianNonparametricNMF), ("hmm", BayesianHMM)]
)
def test_config_model_defaults_match_the_models(section: str, model: type) -> None:
    params = getattr(RunConfig(), section).model_params()
    signature = inspect.signature(model)

    for name, value in params.items():
        assert signature.parameters[name].default == value, name
    model(**params)._validate_params()


def test_config_is_frozen() -> None:
    config = load_config(MINIMAL)

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.nmf.n_patterns = 3  # type: ignore[misc]


# -- unknown keys --------------------------------------------------------------


def test_config_unknown_top_level_key_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown key 'nmf_steps' at the top level"):
        load_config(_with(nmf_steps=300))


def test_config_unknown_top_level_key_lists_allowed_keys() -> None:
    with pytest.raises(ValueError, match=r"allowed keys: output, storage_options"):
        load_config(_with(outputs="x"))


def test_config_unknown_nested_key_rejected_with_suggestion() -> None:
    with pytest.raises(
        ValueError,
        match=r"unknown key 'n_pattern' in section 'nmf'.*did you mean 'n_patterns'",
    ):
        load_config(_with(nmf={"n_pattern": 40}))


def test_config_unknown_dask_key_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown key 'workers' in section 'dask'"):
        load_config(_with(dask={"workers": 4}))


def test_config_unknown_recipe_key_rejected() -> None:
    with pytest.raises(
        ValueError,
        match=r"unknown key 'nperseg_' in section 'spectrograms.recipe'.*'nperseg'",
    ):
        load_config(_with(spectrograms={"recipe": {"nperseg_": 128}}))


# -- bad values ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"nmf": {"n_patterns": -3}},
            r"nmf\.n_patterns must be an integer >= 1; got -3",
        ),
        ({"nmf": {"n_patterns": True}}, r"nmf\.n_patterns must be an integer"),
        ({"nmf": {"n_steps": 2.5}}, r"nmf\.n_steps must be an integer >= 1; got 2\.5"),
        (
            {"nmf": {"mode": "fast"}},
            r"nmf\.mode must be one of 'corrected', 'faithful'; got 'fast'",
        ),
        ({"hmm": {"n_states": "many"}}, r"hmm\.n_states must be .*; got 'many'"),
        ({"hmm": {"sort_states": "size"}}, r"hmm\.sort_states must be one of"),
        ({"nmf": {"step_size": 1.5}}, r"nmf\.step_size must be a number > 0\.0"),
        (
            {"dask": {"threads_per_worker": 0}},
            r"dask\.threads_per_worker must be an integer >= 1; got 0",
        ),
        (
            {"spectrograms": {"window_s": -20}},
            r"spectrograms\.window_s must be a number > 0\.0 .*; got -20\.0",
        ),
        ({"spectrograms": {"chunk_size": 0}}, r"spectrograms\.chunk_size must be"),
        (
            {"spectrograms": {"source": "fdsn"}},
            r"spectrograms\.source must be one of 'catalog', 'continuous', 'store'",
        ),
        (
            {"cluster": {"k_min": 6, "k_max": 3}},
            r"cluster\.k_min \(6\) must not exceed cluster\.k_max \(3\)",
        ),
        ({"cluster": {"method": "elbow"}}, r"cluster\.method must be one of"),
        ({"figures": "yes please"}, r"figures must be true or false; got 'yes please'"),
        ({"output": ""}, r"output must be a non-empty string; got ''"),
        ({"nmf": [1, 2]}, r"section 'nmf' of the config must be a mapping"),
        (
            {"spectrograms": {"recipe": {"nperseg": 256, "nfft": 128}}},
            r"spectrograms\.recipe: nfft must be .* at least nperseg",
        ),
    ],
)
def test_config_bad_value_rejected(sections: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(_with(**sections))


def test_config_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ValueError, match="must be a mapping of sections"):
        load_config(["output", "x"])  # type: ignore[arg-type]


def test_config_source_needs_its_keys() -> None:
    with pytest.raises(ValueError, match=r"spectrograms\.catalog is required"):
        load_config({})
    with pytest.raises(ValueError, match=r"spectrograms\.step_s is required"):
        load_config(
            {
                "spectrograms": {
                    "source": "continuous",
                    "waveforms": "days/",
                    "window_s": 20,
                }
            }
        )


def test_config_source_refuses_keys_it_ignores() -> None:
    with pytest.raises(
        ValueError, match=r"spectrograms\.step_s = 10\.0 does not apply when"
    ):
        load_config(_with(spectrograms={"step_s": 10}))
    with pytest.raises(ValueError, match=r"spectrograms\.recipe does not apply"):
        load_config(
            {
                "spectrograms": {
                    "source": "store",
                    "store": "spec.zarr",
                    "recipe": {"nperseg": 128},
                }
            }
        )


def test_config_scheduler_and_n_workers_exclusive() -> None:
    with pytest.raises(
        ValueError, match=r"dask\.n_workers = 4 applies to a LocalCluster"
    ):
        load_config(_with(dask={"scheduler": "tcp://host:8786", "n_workers": 4}))


def test_config_numbers_normalised() -> None:
    config = load_config(
        {
            "spectrograms": {
                "source": "continuous",
                "waveforms": "d",
                "window_s": 20,
                "step_s": 10,
            }
        }
    )

    assert config.spectrograms.window_s == 20.0
    assert isinstance(config.spectrograms.window_s, float)


# -- safe loading ------------------------------------------------------------------


def test_config_python_tag_rejected_never_executed(tmp_path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.yaml"
    path.write_text(
        f'output: !!python/object/apply:os.system ["touch {marker}"]\n',
        encoding="utf-8",
    )

    with pytest.raises(ValueError, match=r"is not plain YAML data"):
        load_config(path)
    assert not marker.exists()


def test_config_echo_tag_rejected(tmp_path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text('!!python/object/apply:os.system ["echo hi"]\n', encoding="utf-8")

    with pytest.raises(ValueError, match=r"no !!python tags"):
        load_config(path)


def test_config_missing_file_rejected(tmp_path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(FileNotFoundError, match=r"no config file at '.*nope\.yaml'"):
        load_config(missing)


def test_config_invalid_yaml_rejected(tmp_path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("nmf: {n_patterns: [1, 2\n", encoding="utf-8")

    with pytest.raises(ValueError, match=r"broken\.yaml' is not plain YAML data"):
        load_config(path)


# -- secrets and layout --------------------------------------------------------------


def test_config_secrets_redacted_and_not_echoed() -> None:
    config = load_config(
        _with(
            storage_options={
                "key": "AKIAEXAMPLE",
                "secret": "hunter2",
                "anon": False,
                "client_kwargs": {"endpoint_url": "http://minio:9000", "token": "t0k"},
            }
        )
    )

    shown = config.to_dict(redact=True)["storage_options"]

    assert shown["key"] == shown["secret"] == shown["client_kwargs"]["token"] == "***"
    assert shown["anon"] is False
    assert shown["client_kwargs"]["endpoint_url"] == "http://minio:9000"
    assert "hunter2" not in repr(config)
    assert config.to_dict()["storage_options"]["secret"] == "hunter2"
    assert redact_options({"password": "x"}) == {"password": "***"}


def test_config_bad_storage_options_not_echoed() -> None:
    with pytest.raises(ValueError, match=r"storage_options must be a mapping") as info:
        load_config(_with(storage_options="secret=hunter2"))

    assert "hunter2" not in str(info.value)


def test_config_layout_paths() -> None:
    layout = OutputLayout("s3://bucket/run")

    assert layout.spectrograms == "s3://bucket/run/spectrograms.zarr"
    assert layout.hmm_checkpoints == "s3://bucket/run/checkpoints/hmm"
    assert list(layout.products()) == [
        "spectrograms",
        "nmf",
        "activations",
        "hmm",
        "fingerprints",
        "clusters",
        "figures",
        "checkpoints",
        "summary",
    ]
    assert OutputLayout("out").summary == os.path.join("out", "summary.json")
