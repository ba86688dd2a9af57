"""The notebooks in ``notebooks/`` run top to bottom without an error."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "python3"
#: seconds one cell may take (a whole notebook should take under 2 minutes)
CELL_TIMEOUT_S = 240
#: environment that would point a notebook at an outside cluster or bucket
OUTSIDE = ("DASK_SCHEDULER_ADDRESS", "SPECUFEX_S3_ENDPOINT", "SPECUFEX_EXAMPLE_OUTPUT")


@pytest.fixture(scope="session")
def kernel_path(tmp_path_factory) -> str:
    """A ``python3`` kernel spec for this interpreter, found before any other."""
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("jupyter")
    install(kernel_name=KERNEL, prefix=os.fspath(prefix))
    return os.fspath(prefix / "share" / "jupyter")


def test_notebooks_exist() -> None:
    names = [p.name for p in NOTEBOOKS]
    assert names == [
        "01_quickstart.ipynb",
        "02_cluster_and_object_store.ipynb",
        "03_exploration.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_valid_and_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)

    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == KERNEL
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(
    path: Path, tmp_path: Path, kernel_path: str, monkeypatch
) -> None:
    monkeypatch.setenv(
        "JUPYTER_PATH",
        os.pathsep.join([kernel_path, os.environ.get("JUPYTER_PATH", "")]),
    )
    for name in OUTSIDE:
        monkeypatch.delenv(name, raising=False)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": os.fspath(tmp_path)}},
    )

    started = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the failed cell
    seconds = time.perf_counter() - started
    print(f"{path.name}: {seconds:.0f} s", file=sys.stderr)

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure shown"
