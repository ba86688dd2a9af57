"""Nothing is lost: worker processes, the client and whole commands killed for
real (SIGKILL) in the middle of fits and transforms, and the result is the same,
bit for bit, as that of a run without the fault.

The cluster tests run a LocalCluster of two worker processes on 127.0.0.1.
Faults are injected three ways: a worker kills itself inside a task (after it
started, or after it wrote a chunk but before it marked it done), the test
kills a worker from outside while a task hangs in it, or the fit's ``on_step``
callback kills workers between steps. Its nanny then starts a fresh worker.
The command-line tests run ``specufex-dask`` in a subprocess, SIGKILL it
part-way and run the same command again.

Every wait is bounded; every process started here is killed in a ``finally``.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import assert_same_store

from specufex_dask import (
    BayesianHMM,
    BayesianNonparametricNMF,
    dims,
    pipeline,
    store,
)
from specufex_dask.cli import main
from specufex_dask.synthetic import make_planted

NMF = dict(n_patterns=6, n_steps=12, random_state=5, tol=None)
HMM = dict(n_states=4, n_steps=10, random_state=7, tol=None)
#: longest wait for anything (a worker to come back, a file to appear)
TIMEOUT_S = 90.0
#: how long an armed task hangs waiting to be killed from outside
HANG_S = 60.0
CLI = [sys.executable, "-m", "specufex_dask.cli"]


def write_spectrogram_store(path: Path, n_window: int, chunk: int) -> str:
    """Planted spectrograms, ``chunk`` windows per chunk, as the contract says."""
    planted = make_planted(
        n_window=n_window, n_frequency=20, n_time=30, random_state=0
    ).to_dataarray()
    planted.to_dataset().chunk({dims.WINDOW: chunk}).to_zarr(path, zarr_format=2)
    return str(path)


def load(path) -> xr.Dataset:
    return xr.open_zarr(path, chunks=None).load()


def assert_same_params(model, reference) -> None:
    for name in ("W1_", "W2_", "A1_", "A2_", "B1_", "B2_", "gain_"):
        if hasattr(reference, name):
            np.testing.assert_array_equal(
                getattr(model, name), getattr(reference, name), err_msg=name
            )
    assert model.n_steps_done_ == reference.n_steps_done_


# -- data shared by the module ------------------------------------------------------


@pytest.fixture(scope="module")
def spec_store(tmp_path_factory) -> str:
    """60 windows in 12 chunks of 5."""
    return write_spectrogram_store(tmp_path_factory.mktemp("spec") / "spec.zarr", 60, 5)


@pytest.fixture(scope="module")
def nmf_file(spec_store, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("nmf") / "nmf.nc")
    pipeline.fit_nmf(spec_store, model_out=path, **NMF)
    return path


@pytest.fixture(scope="module")
def act_store(spec_store, nmf_file, tmp_path_factory) -> str:
    """Activations written in-process: the fault-free reference."""
    out = str(tmp_path_factory.mktemp("act") / "act.zarr")
    return pipeline.transform_nmf(nmf_file, spec_store, out)


@pytest.fixture(scope="module")
def hmm_model(act_store) -> BayesianHMM:
    return BayesianHMM(**HMM).fit(act_store)


# -- the cluster and fault injection -------------------------------------------------


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    # the fault hooks below run on the workers: send them by value
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
    )
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        cloudpickle.unregister_pickle_by_value(module)


def _arm(module_name: str, attribute: str, marker: str, mode: str) -> int:
    """On this worker, make the next call of ``module.attribute`` fail for real.

    The first call on any worker (the marker file is created exclusively)
    writes its process id to ``marker``, then ``"die"``: SIGKILLs its own
    process; ``"hang"``: waits up to :data:`HANG_S` to be killed from
    outside. Every other call goes to the original function.
    """
    module = importlib.import_module(module_name)
    original = getattr(module, attribute)

    def faulty(*args, **kwargs):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return original(*args, **kwargs)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        if mode == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        deadline = time.monotonic() + HANG_S
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return original(*args, **kwargs)

    faulty.original = original
    setattr(module, attribute, faulty)
    return os.getpid()


def _disarm(module_name: str, attribute: str) -> None:
    module = importlib.import_module(module_name)
    current = getattr(module, attribute)
    setattr(module, attribute, getattr(current, "original", current))


def worker_pids(client) -> dict[str, int]:
    """``{address: pid}`` of the live workers (retried while one is being lost)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            return client.run(os.getpid)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_for_fresh_workers(
    client, gone: set[int] = frozenset(), n: int = 2
) -> dict[str, int]:
    """Wait until ``n`` workers run, none of them a killed process, and every
    nanny has finished starting its worker (a worker killed while its nanny
    is still starting it is not restarted)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        pids = worker_pids(client)
        nannies = client.cluster.workers.values()
        if (
            len(pids) == n
            and not set(pids.values()) & gone
            and all(nanny.status.name == "running" for nanny in nannies)
        ):
            return pids
        time.sleep(0.1)
    raise TimeoutError(f"workers did not come back: {worker_pids(client)}")


def bounded(func, *args, **kwargs):
    """``func(*args, **kwargs)`` in a thread; the test fails if it hangs.

    A stage on a cluster waits for workers as long as there are none; should
    a nanny never bring one back, this ends the test instead (closing the
    cluster afterwards ends the thread).
    """
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = func(*args, **kwargs)
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(TIMEOUT_S)
    if thread.is_alive():
        pytest.fail(f"{func.__qualname__} did not finish within {TIMEOUT_S} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def read_pid(marker: Path) -> int:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        text = marker.read_text() if marker.exists() else ""
        if text:
            return int(text)
        time.sleep(0.02)
    raise TimeoutError(f"no process wrote {marker}")


def direct_failures(caplog) -> list[str]:
    """The SVI steps whose direct calls failed and ran again as tasks."""
    return [m for m in caplog.messages if "direct call to the workers failed" in m]


def kill_when_started(marker: Path) -> tuple[threading.Thread, dict]:
    """A thread that SIGKILLs the process named in ``marker`` once it appears."""
    killed: dict = {}

    def run() -> None:
        pid = read_pid(marker)
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, killed


# -- (a) a worker killed mid-fit -------------------------------------------------------


@pytest.mark.cluster
def test_fault_worker_killed_mid_nmf_fit_gives_the_same_fit(
    spec_store, client, tmp_path, caplog
) -> None:
    reference = BayesianNonparametricNMF(**NMF).fit(spec_store)
    marker = tmp_path / "died-in-task"
    killed_between_steps: list[int] = []

    def on_step(model) -> None:
        if model.n_steps_done_ == 3:
            # step 4: the first task to start SIGKILLs its worker
            client.run(_arm, "specufex_dask._svi", "read_plan", str(marker), "die")
        elif model.n_steps_done_ == 7:
            # step 8 starts while this worker is dying
            pid = min(wait_for_fresh_workers(client, {read_pid(marker)}).values())
            os.kill(pid, signal.SIGKILL)
            killed_between_steps.append(pid)

    before = set(wait_for_fresh_workers(client).values())
    try:
        model = bounded(
            BayesianNonparametricNMF(**NMF).fit,
            spec_store,
            client=client,
            on_step=on_step,
        )
    finally:
        client.run(_disarm, "specufex_dask._svi", "read_plan")

    # two worker processes died, and the fit equals the one without faults
    died_in_task = read_pid(marker)
    assert died_in_task in before and len(killed_between_steps) == 1
    wait_for_fresh_workers(client, {died_in_task, *killed_between_steps})
    assert_same_params(model, reference)
    # steps are direct calls to the workers; the ones the faults broke ran
    # again as Dask tasks
    assert len(direct_failures(caplog)) in (1, 2)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in reference.history_]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in model.history_] == (
        strip
    )


@pytest.mark.cluster
def test_fault_every_worker_killed_mid_hmm_fit_gives_the_same_fit(
    act_store, hmm_model, client, caplog
) -> None:
    killed: list[int] = []

    def on_step(model) -> None:
        if model.n_steps_done_ == 4:
            for pid in worker_pids(client).values():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    wait_for_fresh_workers(client)
    model = bounded(BayesianHMM(**HMM).fit, act_store, client=client, on_step=on_step)

    assert len(killed) == 2
    wait_for_fresh_workers(client, set(killed))
    assert_same_params(model, hmm_model)
    assert len(direct_failures(caplog)) == 1


# -- (b) a worker killed mid-transform ---------------------------------------------------


@pytest.mark.cluster
def test_fault_worker_killed_between_writing_and_marking_a_chunk(
    spec_store, nmf_file, act_store, client, tmp_path
) -> None:
    marker = tmp_path / "died-after-write"
    out = str(tmp_path / "act.zarr")
    wait_for_fresh_workers(client)
    client.run(_arm, "specufex_dask.store", "_mark_done", str(marker), "die")
    try:
        bounded(pipeline.transform_nmf, nmf_file, spec_store, out, client=client)
    finally:
        client.run(_disarm, "specufex_dask.store", "_mark_done")

    # a worker died with its chunk's data in the store and the chunk unmarked;
    # the chunk was written again elsewhere, and the store is the reference
    wait_for_fresh_workers(client, {read_pid(marker)})
    written = load(out)
    assert_same_store(written, load(act_store))
    assert written.attrs[store.COMPLETE_ATTR] == 1
    assert store.completed_chunks(out).all()


@pytest.mark.cluster
def test_fault_worker_killed_from_outside_mid_transform_task(
    act_store, hmm_model, client, tmp_path
) -> None:
    reference = pipeline.transform_hmm(hmm_model, act_store, str(tmp_path / "ref"))
    marker = tmp_path / "hanging-task"
    out = str(tmp_path / "fp.zarr")
    wait_for_fresh_workers(client)
    client.run(_arm, "specufex_dask.pipeline", "read_rows", str(marker), "hang")
    killer, killed = kill_when_started(marker)
    try:
        bounded(pipeline.transform_hmm, hmm_model, act_store, out, client=client)
    finally:
        killer.join(TIMEOUT_S)
        client.run(_disarm, "specufex_dask.pipeline", "read_rows")

    assert killed["pid"] == read_pid(marker)
    wait_for_fresh_workers(client, {killed["pid"]})
    written = load(out)
    assert_same_store(written, load(reference))
    assert written.attrs[store.COMPLETE_ATTR] == 1


def _register_flaky(failures: str, key: str, n_failures: int, spared: int) -> None:
    """Register ``flaky://``: local files whose first ``n_failures`` reads of
    ``key``, by any process but ``spared``, time out."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    class FlakyFileSystem(LocalFileSystem):
        protocol = ("flaky",)

        def cat_file(self, path, start=None, end=None, **kwargs):
            if str(path).endswith(key) and os.getpid() != spared:
                for i in range(n_failures):
                    try:
                        fd = os.open(f"{failures}/{i}", os.O_CREAT | os.O_EXCL)
                    except FileExistsError:
                        continue
                    os.close(fd)
                    raise TimeoutError(f"simulated time-out reading {path}")
            return super().cat_file(path, start=start, end=end, **kwargs)

    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)


@pytest.mark.cluster
def test_fault_transient_read_errors_on_workers_are_retried(
    spec_store, client, tmp_path
) -> None:
    # one chunk times out three times in a row: more than Dask's task retries
    # (2) could absorb, so the reads themselves must be retried
    reference = BayesianNonparametricNMF(**NMF).fit(spec_store)
    failures = tmp_path / "failures"
    failures.mkdir()
    flaky = (str(failures), "/spectrogram/3.0.0", 3, os.getpid())
    _register_flaky(*flaky)
    client.run(_register_flaky, *flaky)
    url = "flaky://" + os.path.abspath(spec_store)

    wait_for_fresh_workers(client)
    model = bounded(BayesianNonparametricNMF(**NMF).fit, url, client=client)

    assert sorted(os.listdir(failures)) == ["0", "1", "2"]
    assert_same_params(model, reference)


# -- (c) the client killed mid-fit -------------------------------------------------------


def _wait_for(predicate, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(
                f"the command ended (rc {proc.returncode}) before {what}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=TIMEOUT_S)


@pytest.mark.cluster
def test_fault_cli_fit_killed_resumes_from_its_checkpoint(spec_store, tmp_path) -> None:
    model, ck = tmp_path / "nmf.nc", tmp_path / "ck"
    n_steps = 150
    command = CLI + [
        "fit-nmf",
        spec_store,
        "-o",
        str(model),
        "--n-patterns",
        "6",
        "--n-steps",
        str(n_steps),
        "--seed",
        "3",
        "--tol",
        "none",
        "--checkpoint",
        str(ck),
        "--checkpoint-every",
        "2",
        "--no-cluster",
    ]
    proc = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for((ck / "LATEST").exists, proc, "the first checkpoint")
        proc.send_signal(signal.SIGKILL)
    finally:
        _kill(proc)
    assert proc.returncode == -signal.SIGKILL
    assert not model.exists()
    step = int(re.fullmatch(r"step-(\d{8})\.nc", (ck / "LATEST").read_text())[1])
    assert 2 <= step < n_steps

    rerun = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S
    )

    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed from checkpoint at step {step} of {n_steps}" in rerun.stderr
    uninterrupted = BayesianNonparametricNMF(
        n_patterns=6, n_steps=n_steps, random_state=3, tol=None
    ).fit(spec_store)
    assert_same_params(BayesianNonparametricNMF.load(model), uninterrupted)


# -- (d) a transform command killed part-way -----------------------------------------------


def _data_chunk_files(out: Path) -> dict[int, os.stat_result]:
    """Data chunk files of ``activation`` written so far, by chunk index."""
    folder = out / dims.ACTIVATION
    if not folder.exists():
        return {}
    return {
        int(name.split(".")[0]): (folder / name).stat()
        for name in os.listdir(folder)
        if re.fullmatch(r"\d+\.0\.0", name)
    }


@pytest.mark.cluster
def test_fault_cli_transform_killed_resumes_and_writes_each_chunk_once(
    nmf_file, tmp_path, capsys
) -> None:
    n_chunk = 120
    spec = write_spectrogram_store(tmp_path / "spec.zarr", n_chunk, 1)
    out = tmp_path / "act.zarr"
    command = CLI + ["transform", "--model", nmf_file, spec, "-o", str(out)]
    command += ["--no-cluster"]
    proc = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for(lambda: len(_data_chunk_files(out)) >= 10, proc, "10 chunks")
        proc.send_signal(signal.SIGKILL)
    finally:
        _kill(proc)
    assert proc.returncode == -signal.SIGKILL

    # what the killed run finished (a chunk may hold data but no mark yet),
    # and a reader's view of the store meanwhile
    done = store.completed_chunks(str(out))
    assert 0 < done.sum() < done.size == n_chunk
    finished = {c: s for c, s in _data_chunk_files(out).items() if done[c]}
    assert len(finished) == done.sum()
    with pytest.raises(store.StoreError, match=r"act\.zarr' is incomplete .* re-run"):
        BayesianHMM(n_states=3).fit(str(out))
    capsys.readouterr()
    assert main(["fit-hmm", str(out), "-o", str(tmp_path / "hmm.nc")]) == 2
    assert "is incomplete (an earlier run was interrupted)" in capsys.readouterr().err
    assert main(["info", str(out)]) == 0
    assert "INCOMPLETE" in capsys.readouterr().out

    rerun = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S
    )

    assert rerun.returncode == 0, rerun.stderr
    n_done = int(done.sum())
    assert f"resuming {out}: {n_done} of {n_chunk} chunks already written" in (
        rerun.stderr
    )
    assert f"{n_chunk - n_done} chunks of 1 windows to write ({n_done} done)" in (
        rerun.stderr
    )
    # no chunk the killed run finished was written again (same file, same time)
    again = _data_chunk_files(out)
    for c, before in finished.items():
        assert (again[c].st_ino, again[c].st_mtime_ns) == (
            before.st_ino,
            before.st_mtime_ns,
        ), f"chunk {c} was written twice"
    reference = pipeline.transform_nmf(nmf_file, spec, str(tmp_path / "ref.zarr"))
    assert_same_store(load(out), load(reference))
    assert zarr.open_group(str(out), mode="r").attrs[store.COMPLETE_ATTR] == 1


def test_fault_regions_align_with_chunks_so_no_two_tasks_share_one(
    spec_store, tmp_path
) -> None:
    out = str(tmp_path / "act.zarr")
    template = xr.Dataset(
        {"x": ((dims.WINDOW,), np.zeros(60))}, coords={dims.WINDOW: np.arange(60)}
    ).chunk({dims.WINDOW: 5})
    store.create_store(out, template, chunk_size=5, kind="test")
    block = xr.Dataset({"x": ((dims.WINDOW,), np.ones(7))})

    with pytest.raises(ValueError, match=r"block of 7 windows does not fill chunk 2"):
        store.write_region(out, block, 2, 5)
    with pytest.raises(ValueError, match=r"block of 3 windows does not fill chunk 1"):
        store.write_region(out, block.isel({dims.WINDOW: slice(3)}), 1, 5)
    assert not store.completed_chunks(out).any()


def test_regions_written_directly_read_back_as_xarray_wrote_them(tmp_path) -> None:
    # numbers go straight into their zarr arrays (stored dim order, dtype);
    # a block with a date goes through xarray's encoding instead
    rng = np.random.default_rng(0)
    n, chunk = 12, 5
    values = rng.gamma(2.0, 1.0, (n, 3, 4))
    times = np.datetime64("2024-01-01T00:00") + np.arange(n) * np.timedelta64(20, "s")
    full = xr.Dataset(
        {
            "x": ((dims.WINDOW, "a", dims.TIME), values.astype("float32")),
            "k": ((dims.WINDOW,), np.arange(n, dtype="int16")),
            "start": ((dims.WINDOW,), times),
        },
        coords={dims.WINDOW: [f"w{i}" for i in range(n)]},
    )
    paths = {}
    for name, variables in (("plain", ["x", "k"]), ("dates", ["x", "start"])):
        template = full[variables].chunk({dims.WINDOW: chunk})
        paths[name] = out = str(tmp_path / f"{name}.zarr")
        store.create_store(out, template, chunk_size=chunk, kind="test")
        group = store.open_regions(out)
        for c in range(-(-n // chunk)):
            block = full[variables].isel(
                {dims.WINDOW: slice(c * chunk, (c + 1) * chunk)}
            )
            # the block's dims in another order than the store's
            block = block.transpose(dims.WINDOW, ...)
            block["x"] = block["x"].transpose(dims.WINDOW, dims.TIME, "a")
            plain = store._write_plain(
                group,
                block.drop_vars(dims.WINDOW),
                c * chunk,
                c * chunk + len(block[dims.WINDOW]),
                out,
            )
            assert plain == (name == "plain")
            store.write_region(out, block, c, chunk, group=group)
        store.finalize_store(out)
        written = store.open_store(out).load()
        for v in variables:
            np.testing.assert_array_equal(
                written[v].transpose(*full[v].dims).values, full[v].values
            )
            if full[v].dtype.kind != "M":  # xarray reads dates back in ns
                assert written[v].dtype == full[v].dtype
