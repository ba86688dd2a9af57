"""The ``specufex-dask`` command, run in-process on the bundled real windows."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from specufex_dask import BayesianNonparametricNMF, store
from specufex_dask.cli import main, parse_storage_options
from specufex_dask.config import load_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: windows of the quick example
N_QUICK = 120

PRODUCTS = (
    "spectrograms.zarr",
    "nmf.nc",
    "activations.zarr",
    "hmm.nc",
    "fingerprints.zarr",
    "clusters.csv",
    "figures",
    "checkpoints/nmf",
    "checkpoints/hmm",
    "summary.json",
)
FIGURES = (
    "patterns",
    "window",
    "emission",
    "cluster_fingerprints",
    "cluster_counts",
    "cluster_examples",
    "convergence_nmf",
    "convergence_hmm",
)


def _digest(path: Path) -> str:
    """Hash of a file, or of every file under a folder."""
    h = hashlib.sha256()
    files = (
        [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    )
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> dict:
    """One quick example run on the real Piton windows, shared by the tests."""
    out = tmp_path_factory.mktemp("cli") / "example"
    code = main(["example", "--quick", "--output", str(out), "--no-cluster", "-q"])
    return {"code": code, "out": out}


# -- help --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (None, ["spectrograms", "fit-nmf", "run", "example", "init-config"]),
        ("spectrograms", ["--catalog", "--waveforms", "--window-s", "--step-s", "Hz"]),
        ("fit-nmf", ["--n-patterns", "--n-steps", "--checkpoint", "--scheduler"]),
        ("fit-hmm", ["--n-states", "--n-steps", "--batch-size", "--seed"]),
        ("transform", ["--model", "activation", "fingerprint", "--n-workers"]),
        ("cluster", ["--n-clusters", "--k-max", "--method", "--csv"]),
        ("run", ["CONFIG.yaml", "--resume", "--overwrite", "--storage-option"]),
        ("example", ["--output", "--quick", "--overwrite", "--no-cluster"]),
        ("init-config", ["PATH", "--overwrite"]),
        ("info", ["STORE", "--storage-option"]),
    ],
)
def test_cli_help_mentions_flags(command, flags, capsys) -> None:
    argv = ["--help"] if command is None else [command, "--help"]

    code = main(argv)

    text = capsys.readouterr().out
    assert code == 0
    for flag in flags:
        assert flag in text
    assert "example" in text  # every help ends with an example command


def test_cli_version(capsys) -> None:
    assert main(["--version"]) == 0
    assert "specufex-dask" in capsys.readouterr().out


def test_cli_usage_error_exits_2(capsys) -> None:
    assert main(["fit-nmf", "spec.zarr", "--n-patterns", "-3", "-o", "m.nc"]) == 2
    assert "--n-patterns" in capsys.readouterr().err


# -- init-config ---------------------------------------------------------------------


def test_cli_init_config_writes_a_loadable_template(tmp_path, capsys) -> None:
    path = tmp_path / "run.yaml"

    assert main(["init-config", str(path)]) == 0

    config = load_config(path)
    assert config.nmf.n_patterns == 75
    assert str(path) in capsys.readouterr().out


def test_cli_init_config_refuses_to_overwrite(tmp_path, capsys) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("mine\n", encoding="utf-8")

    assert main(["init-config", str(path)]) == 2

    assert "already exists" in capsys.readouterr().err
    assert path.read_text(encoding="utf-8") == "mine\n"
    assert main(["init-config", str(path), "--overwrite"]) == 0
    load_config(path)


# -- the example, end to end ------------------------------------------------------------


def test_cli_example_writes_every_product(example) -> None:
    out = example["out"]

    assert example["code"] == 0
    for name in PRODUCTS:
        assert (out / name).exists(), name


def test_cli_example_stores_hold_every_window(example) -> None:
    out = example["out"]

    spec = store.open_store(out / "spectrograms.zarr")
    act = store.open_store(out / "activations.zarr")
    fp = store.open_store(out / "fingerprints.zarr")

    assert spec["spectrogram"].dims == ("window", "frequency", "time")
    assert act["activation"].dims == ("window", "pattern", "time")
    for name in ("fingerprint", "transition", "state_probability", "cluster"):
        assert name in fp.data_vars
    for ds in (spec, act, fp):
        assert ds.sizes["window"] == N_QUICK
        assert int(ds.attrs[store.COMPLETE_ATTR]) == 1
    np.testing.assert_array_equal(spec["window"].values, fp["window"].values)
    labels = spec["label"].values.astype(str)
    assert (labels == "trigger").sum() == (labels == "noise").sum() == N_QUICK // 2
    # real dB spectrograms of the 1-45 Hz band
    frequency = spec["frequency"].values
    assert frequency.min() >= 1.0 and frequency.max() <= 45.0
    assert float(spec["spectrogram"].max()) > 0.0


def test_cli_example_cluster_table(example) -> None:
    out = example["out"]

    table = pd.read_csv(out / "clusters.csv")
    fp = store.open_store(out / "fingerprints.zarr")

    assert len(table) == N_QUICK
    for column in ("window_id", "station", "starttime", "label", "cluster"):
        assert column in table.columns
    np.testing.assert_array_equal(table["cluster"].to_numpy(), fp["cluster"].values)
    assert set(table["station"]) <= {"UV05", "UV06", "UV10"}


def test_cli_example_figures_are_pngs(example) -> None:
    figures = example["out"] / "figures"

    for name in FIGURES:
        path = figures / f"{name}.png"
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > 5000, name


def test_cli_example_summary(example) -> None:
    out = example["out"]

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))

    assert summary["n_windows"] == N_QUICK
    for key in ("fingerprint_accuracy", "spectrum_accuracy"):
        assert isinstance(summary[key], float)
        assert 0.0 <= summary[key] <= 1.0
    assert summary["chance_accuracy"] == 0.5
    assert 1 <= summary["n_patterns"] <= 40
    assert summary["n_states"] == 12
    assert summary["n_clusters"] >= 2
    assert summary["runtime_s"] > 0
    for name in ("nmf", "hmm"):
        assert summary["convergence"][name]["last"]
    for name in ("spectrograms", "nmf", "hmm", "fingerprints", "clusters", "summary"):
        assert Path(summary["paths"][name]).exists()
    assert set(summary["figures"]) == set(FIGURES)


def test_cli_example_again_refuses_and_leaves_outputs(example, capsys) -> None:
    out = example["out"]
    before = {name: _digest(out / name) for name in PRODUCTS}

    code = main(["example", "--quick", "--output", str(out), "--no-cluster", "-q"])

    err = capsys.readouterr().err
    assert code == 2
    assert "error:" in err and "already exists" in err
    assert "Traceback" not in err
    assert {name: _digest(out / name) for name in PRODUCTS} == before


# -- stage commands on the example's products ------------------------------------------


def test_cli_transform_hmm_on_spectrograms_refused(example, tmp_path, capsys) -> None:
    out = example["out"]

    code = main(
        [
            "transform",
            "--model",
            str(out / "hmm.nc"),
            str(out / "spectrograms.zarr"),
            "-o",
            str(tmp_path / "fp.zarr"),
            "--no-cluster",
        ]
    )

    err = capsys.readouterr().err
    assert code == 2
    assert "is an HMM" in err and "spectrogram store" in err
    assert "NMF model first" in err
    assert not (tmp_path / "fp.zarr").exists()


def test_cli_transform_nmf_writes_activations(example, tmp_path, capsys) -> None:
    out = example["out"]
    target = tmp_path / "act.zarr"

    code = main(
        [
            "transform",
            "--model",
            str(out / "nmf.nc"),
            str(out / "spectrograms.zarr"),
            "-o",
            str(target),
            "--no-cluster",
            "-q",
        ]
    )

    assert code == 0
    written = store.open_store(target)
    reference = store.open_store(out / "activations.zarr")
    np.testing.assert_array_equal(
        written["activation"].values, reference["activation"].values
    )


def test_cli_fit_nmf_missing_store_names_it(tmp_path, capsys) -> None:
    missing = tmp_path / "no-such.zarr"

    code = main(["fit-nmf", str(missing), "-o", str(tmp_path / "nmf.nc")])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ")
    assert str(missing) in err
    assert "Traceback" not in err


def test_cli_fit_hmm_on_spectrograms_refused(example, tmp_path, capsys) -> None:
    code = main(
        [
            "fit-hmm",
            str(example["out"] / "spectrograms.zarr"),
            "-o",
            str(tmp_path / "hmm.nc"),
            "--no-cluster",
        ]
    )

    assert code == 2
    assert "not a activation store" in capsys.readouterr().err


def test_cli_fit_nmf_and_cluster(example, tmp_path, capsys) -> None:
    out = example["out"]
    model = tmp_path / "nmf.nc"

    code = main(
        [
            "fit-nmf",
            str(out / "spectrograms.zarr"),
            "-o",
            str(model),
            "--n-patterns",
            "8",
            "--n-steps",
            "3",
            "--seed",
            "1",
            "--no-cluster",
            "-q",
        ]
    )

    assert code == 0
    assert "patterns kept of 8" in capsys.readouterr().out
    assert main(["fit-nmf", str(out / "spectrograms.zarr"), "-o", str(model)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_cluster_existing_labels_need_overwrite(example, tmp_path, capsys) -> None:
    fingerprints = tmp_path / "fingerprints.zarr"
    shutil.copytree(example["out"] / "fingerprints.zarr", fingerprints)
    table = tmp_path / "clusters.csv"
    argv = ["cluster", str(fingerprints), "--n-clusters", "3", "--csv", str(table)]

    assert main(argv) == 2
    assert "already holds a 'cluster' variable" in capsys.readouterr().err
    assert not table.exists()

    assert main([*argv, "--overwrite"]) == 0
    assert "3 clusters" in capsys.readouterr().out
    labels = pd.read_csv(table)["cluster"].to_numpy()
    assert labels.size == N_QUICK
    assert set(labels) == {0, 1, 2}
    np.testing.assert_array_equal(
        store.open_store(fingerprints)["cluster"].values, labels
    )


def test_cli_info_store_and_model(example, capsys) -> None:
    out = example["out"]

    assert main(["info", str(out / "spectrograms.zarr")]) == 0
    text = capsys.readouterr().out
    assert "spectrogram store" in text
    assert f"window {N_QUICK}" in text
    assert "trigger 60" in text

    assert main(["info", str(out / "hmm.nc")]) == 0
    assert "BayesianHMM" in capsys.readouterr().out


# -- run -------------------------------------------------------------------------------------


def test_cli_run_unknown_key_exits_2_naming_it(tmp_path, capsys) -> None:
    path = tmp_path / "run.yaml"
    data = {
        "spectrograms": {"catalog": "c.csv", "waveforms": "w"},
        "hmm": {"n_state": 10},
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")

    code = main(["run", str(path)])

    err = capsys.readouterr().err
    assert code == 2
    assert "unknown key 'n_state' in section 'hmm'" in err
    assert "did you mean 'n_states'" in err


def test_cli_run_python_tag_exits_2(tmp_path, capsys) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "run.yaml"
    path.write_text(
        f'output: !!python/object/apply:os.system ["touch {marker}"]\n',
        encoding="utf-8",
    )

    assert main(["run", str(path)]) == 2
    assert "not plain YAML data" in capsys.readouterr().err
    assert not marker.exists()


def test_cli_run_from_existing_store_then_resume(example, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "output": str(out),
                "spectrograms": {
                    "source": "store",
                    "store": str(example["out"] / "spectrograms.zarr"),
                },
                "nmf": {"n_patterns": 8, "n_steps": 4, "random_state": 0},
                "hmm": {"n_states": 4, "n_steps": 4, "random_state": 0},
                "cluster": {"k_max": 4},
                "figures": False,
            }
        ),
        encoding="utf-8",
    )

    assert main(["run", str(path), "--no-cluster"]) == 0
    captured = capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_windows"] == N_QUICK
    assert summary["n_states"] == 4
    assert not (out / "spectrograms.zarr").exists()  # the given store is used
    assert "using the existing store" in captured.err
    assert "5-fold accuracy" in captured.out

    # a second run refuses, --resume reuses and says so
    assert main(["run", str(path), "--no-cluster"]) == 2
    assert "already exists" in capsys.readouterr().err
    nmf_before = _digest(out / "nmf.nc")
    assert main(["run", str(path), "--no-cluster", "--resume"]) == 0
    assert "reusing the saved model" in capsys.readouterr().err
    assert _digest(out / "nmf.nc") == nmf_before


def test_cli_run_with_secret_storage_option_never_echoes_it(tmp_path, capsys) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "output": str(tmp_path / "out"),
                "spectrograms": {"source": "store", "store": str(tmp_path / "no.zarr")},
            }
        ),
        encoding="utf-8",
    )

    code = main(
        ["run", str(path), "--storage-option", "secret=hunter2", "--no-cluster", "-v"]
    )

    captured = capsys.readouterr()
    assert code == 2
    assert "no.zarr" in captured.err
    assert "hunter2" not in captured.err + captured.out


# -- storage options ----------------------------------------------------------------------------


def test_cli_storage_options_parsed() -> None:
    options = parse_storage_options(
        [
            "anon=true",
            "client_kwargs.endpoint_url=http://localhost:9000",
            "secret=0123",
            "max_concurrency=8",
        ]
    )

    assert options == {
        "anon": True,
        "client_kwargs": {"endpoint_url": "http://localhost:9000"},
        "secret": "0123",
        "max_concurrency": 8,
    }


def test_cli_malformed_storage_option_not_echoed(tmp_path, capsys) -> None:
    code = main(
        ["info", str(tmp_path / "x.zarr"), "--storage-option", "hunter2-no-equals"]
    )

    err = capsys.readouterr().err
    assert code == 2
    assert "KEY=VALUE" in err
    assert "hunter2" not in err


def test_cli_continue_from_a_saved_model_on_new_windows(
    example, tmp_path, capsys
) -> None:
    out = example["out"]
    spectrograms = str(out / "spectrograms.zarr")
    first = tmp_path / "nmf.nc"
    args = ["--n-patterns", "6", "--seed", "3", "--tol", "none", "--no-cluster", "-q"]
    assert (
        main(["fit-nmf", spectrograms, "-o", str(first), "--n-steps", "4", *args]) == 0
    )
    code = main(
        [
            "fit-nmf",
            spectrograms,
            "-o",
            str(tmp_path / "more.nc"),
            "--n-steps",
            "3",
            "--continue-from",
            str(first),
            "--no-cluster",
            "-q",
        ]
    )
    assert code == 0
    assert "continued from" in capsys.readouterr().out

    # the same as continuing the model in Python: no re-initialisation
    expected = BayesianNonparametricNMF.load(first).partial_fit(spectrograms, n_steps=3)
    updated = BayesianNonparametricNMF.load(tmp_path / "more.nc")
    assert updated.n_steps_done_ == 7
    np.testing.assert_array_equal(updated.W1_, expected.W1_)
