"""The distributed path equals the in-process path, for any chunking and any
number of workers, and transforms write the store contract."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import types
from concurrent.futures import ThreadPoolExecutor

import dask
import numpy as np
import pytest
import xarray as xr
import zarr

from specufex_dask import BayesianHMM, BayesianNonparametricNMF, dims, pipeline, store


def write_spectrogram_store(path, X, chunk):
    n = len(X)
    ds = xr.Dataset(
        {dims.SPECTROGRAM: (dims.SPECTROGRAM_DIMS, X.astype("float32"))},
        coords={
            dims.WINDOW: [f"XX.STA{i % 3}..HHZ.{i:04d}" for i in range(n)],
            dims.FREQUENCY: np.linspace(1.0, 30.0, X.shape[1]),
            dims.TIME: np.arange(X.shape[2]) * 0.5,
            "station": (dims.WINDOW, [f"STA{i % 3}" for i in range(n)]),
            "magnitude": (dims.WINDOW, np.linspace(0.5, 2.0, n)),
        },
    )
    ds.chunk({dims.WINDOW: chunk}).to_zarr(path, zarr_format=2)
    return str(path)


@pytest.fixture(scope="module")
def X(golden):
    # whole numbers, so float32 storage is exact and all paths see the same data
    return golden["X"]


@pytest.fixture(scope="module")
def stores(X, tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    return {
        c: write_spectrogram_store(root / f"spec{c}.zarr", X, c) for c in (7, 13, 40)
    }


@pytest.fixture(scope="module")
def cluster_clients():
    distributed = pytest.importorskip("distributed")
    clusters = {
        n: distributed.LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
        )
        for n in (1, 2)
    }
    clients = {
        n: distributed.Client(c, set_as_default=False) for n, c in clusters.items()
    }
    yield clients
    for n in clients:
        clients[n].close()
        clusters[n].close()


NMF = dict(n_patterns=8, n_steps=12, batch_size=9, random_state=7)
HMM = dict(n_states=4, n_steps=10, batch_size=9, random_state=7)


def test_store_fit_in_process_equals_array_fit(X, stores) -> None:
    from_array = BayesianNonparametricNMF(**NMF).fit(X)
    for path in stores.values():
        from_store = BayesianNonparametricNMF(**NMF).fit(path)
        np.testing.assert_array_equal(from_store.W1_, from_array.W1_)
        np.testing.assert_array_equal(from_store.A2_, from_array.A2_)
    np.testing.assert_array_equal(from_store.frequency_, np.linspace(1.0, 30.0, 30))


@pytest.mark.cluster
def test_nmf_fit_is_identical_for_any_workers_and_chunking(
    X, stores, cluster_clients
) -> None:
    reference = BayesianNonparametricNMF(**NMF).fit(X)
    for n_workers, client in cluster_clients.items():
        for chunk, path in stores.items():
            model = BayesianNonparametricNMF(**NMF).fit(path, client=client)
            np.testing.assert_array_equal(
                model.W1_, reference.W1_, err_msg=f"{n_workers} workers, chunk {chunk}"
            )
            np.testing.assert_array_equal(model.A1_, reference.A1_)


@pytest.mark.cluster
def test_minibatches_of_several_blocks_sum_the_same_on_any_workers_and_chunking(
    X, stores, cluster_clients, tmp_path
) -> None:
    # 37 windows: three blocks of the fixed sum (16, 16, 5), which cross chunk
    # boundaries and are shared out between 1 or 2 tasks depending on workers
    nmf_params = dict(NMF, batch_size=37)
    hmm_params = dict(HMM, batch_size=37)
    nmf_ref = BayesianNonparametricNMF(**nmf_params).fit(X)
    hmm_ref = BayesianHMM(**hmm_params, gain=nmf_ref.gain_).fit(nmf_ref.transform(X))
    for chunk, path in stores.items():
        act = pipeline.transform_nmf(
            nmf_ref, path, str(tmp_path / f"act{chunk}.zarr"), dtype="float64"
        )
        for n_workers, client in cluster_clients.items():
            label = f"{n_workers} workers, chunk {chunk}"
            nmf = BayesianNonparametricNMF(**nmf_params).fit(path, client=client)
            np.testing.assert_array_equal(nmf.W1_, nmf_ref.W1_, err_msg=label)
            np.testing.assert_array_equal(nmf.A1_, nmf_ref.A1_, err_msg=label)
            hmm = BayesianHMM(**hmm_params).fit(act, client=client)
            np.testing.assert_array_equal(hmm.B1_, hmm_ref.B1_, err_msg=label)


@pytest.mark.cluster
def test_whole_chain_distributed_equals_in_process(
    X, stores, cluster_clients, tmp_path
) -> None:
    client = cluster_clients[2]
    spec = stores[7]
    outputs = {}
    for label, cl in (("local", None), ("dask", client)):
        nmf = pipeline.fit_nmf(spec, client=cl, **NMF)
        act = pipeline.transform_nmf(
            nmf, spec, str(tmp_path / f"act-{label}.zarr"), client=cl
        )
        hmm = pipeline.fit_hmm(act, client=cl, **HMM)
        fp = pipeline.transform_hmm(
            hmm, act, str(tmp_path / f"fp-{label}.zarr"), client=cl
        )
        outputs[label] = (store.open_store(act), store.open_store(fp), hmm)
    (act_a, fp_a, hmm_a), (act_b, fp_b, hmm_b) = outputs["local"], outputs["dask"]
    np.testing.assert_array_equal(hmm_a.B1_, hmm_b.B1_)
    for name in (dims.FINGERPRINT, dims.TRANSITION, dims.STATE_PROBABILITY):
        np.testing.assert_array_equal(fp_a[name].values, fp_b[name].values)
    np.testing.assert_array_equal(
        act_a[dims.ACTIVATION].values, act_b[dims.ACTIVATION].values
    )

    # the stores follow the contract: chunked like the input, coords carried
    assert act_a[dims.ACTIVATION].dims == dims.ACTIVATION_DIMS
    assert fp_a[dims.FINGERPRINT].dims == dims.TRANSITION_DIMS
    assert fp_a[dims.STATE_PROBABILITY].dims == dims.STATE_SEQUENCE_DIMS
    assert act_a[dims.ACTIVATION].chunks[0] == (7, 7, 7, 7, 7, 5)
    assert list(fp_a["station"].values) == [f"STA{i % 3}" for i in range(40)]
    np.testing.assert_array_equal(fp_a[dims.WINDOW].values, act_a[dims.WINDOW].values)
    assert fp_a.attrs[store.COMPLETE_ATTR] == 1
    np.testing.assert_allclose(
        fp_a[dims.STATE_PROBABILITY].sum(dims.STATE), 1.0, rtol=1e-12
    )


def _no_dask_compute(*args, **kwargs):
    raise AssertionError("a dask compute went through the default scheduler")


def test_store_activations_equal_array_activations(X, stores, tmp_path) -> None:
    nmf = BayesianNonparametricNMF(**NMF).fit(X)
    out = pipeline.transform_nmf(
        nmf, stores[13], str(tmp_path / "act.zarr"), dtype="float64"
    )
    act = store.open_store(out)
    np.testing.assert_array_equal(act[dims.ACTIVATION].values, nmf.transform(X))
    # compressed in the small Blosc blocks that SVI steps read in part
    codec = zarr.open_group(out, mode="r")[dims.ACTIVATION].metadata.compressor
    assert codec.get_config() == store.window_compressor().get_config()
    np.testing.assert_allclose(act["gain"].values, nmf.gain_)
    # the gain comes from the activation store, read directly: not through
    # Dask's default scheduler (a cluster's client, when one is running)
    with dask.config.set(scheduler=_no_dask_compute):
        hmm = BayesianHMM(**HMM).fit(out)
    np.testing.assert_allclose(hmm.gain_, nmf.gain_)
    expected = BayesianHMM(**HMM, gain=nmf.gain_).fit(nmf.transform(X))
    np.testing.assert_array_equal(hmm.B1_, expected.B1_)


def test_interrupted_transform_resumes_only_missing_chunks(
    X, stores, tmp_path, monkeypatch
) -> None:
    nmf = BayesianNonparametricNMF(**NMF).fit(X)
    spec = stores[7]
    reference = store.open_store(
        pipeline.transform_nmf(nmf, spec, str(tmp_path / "ref.zarr"))
    )

    # a run that stopped after some chunks: flags of chunks 2 and 4 never set,
    # their data never written, the store not finalised
    out = str(tmp_path / "act.zarr")
    pipeline.transform_nmf(nmf, spec, out)
    group = zarr.open_group(out, mode="r+")
    group[store.DONE_VAR][2] = 0
    group[store.DONE_VAR][4] = 0
    group[dims.ACTIVATION][14:21] = 0.0
    group[dims.ACTIVATION][28:35] = 0.0
    group.attrs[store.COMPLETE_ATTR] = 0
    zarr.consolidate_metadata(group.store)
    with pytest.raises(store.StoreError, match=r"is incomplete .* re-run the command"):
        BayesianHMM(**HMM).fit(out)

    written = []
    original = store.write_region

    def counting(path, block, chunk_index, chunk_size, storage_options=None, **kw):
        written.append(chunk_index)
        return original(path, block, chunk_index, chunk_size, storage_options, **kw)

    monkeypatch.setattr(store, "write_region", counting)
    pipeline.transform_nmf(nmf, spec, out)
    assert written == [2, 4]
    resumed = store.open_store(out)
    np.testing.assert_array_equal(
        resumed[dims.ACTIVATION].values, reference[dims.ACTIVATION].values
    )
    assert resumed.attrs[store.COMPLETE_ATTR] == 1


def _interrupt(out: str, chunks: list[int]) -> None:
    """Make a finished store look like a run that stopped before ``chunks``."""
    group = zarr.open_group(out, mode="r+")
    for c in chunks:
        group[store.DONE_VAR][c] = 0
    group.attrs[store.COMPLETE_ATTR] = 0
    zarr.consolidate_metadata(group.store)


def test_an_unfinished_transform_is_not_resumed_from_a_rewritten_input(
    X, tmp_path
) -> None:
    nmf = BayesianNonparametricNMF(**NMF).fit(X)
    spec = write_spectrogram_store(tmp_path / "spec.zarr", X, 7)
    out = str(tmp_path / "act.zarr")
    pipeline.transform_nmf(nmf, spec, out)
    _interrupt(out, [2, 4])
    # the same windows, other values: a resumed run would mix the two
    shutil.rmtree(spec)
    write_spectrogram_store(tmp_path / "spec.zarr", X * 2, 7)
    with pytest.raises(
        FileExistsError, match=r"is an unfinished run made with another"
    ):
        pipeline.transform_nmf(nmf, spec, out)
    fresh = pipeline.transform_nmf(nmf, spec, out, overwrite=True, dtype="float64")
    np.testing.assert_array_equal(
        store.open_store(fresh)[dims.ACTIVATION].values, nmf.transform(X * 2)
    )

    # an activation store written again by the package (same model, same
    # windows, so the same shape and layout) is told apart by its store id
    act = str(tmp_path / "act2.zarr")
    fingerprints = str(tmp_path / "fp.zarr")
    hmm = BayesianHMM(**HMM).fit(pipeline.transform_nmf(nmf, spec, act))
    first_id = store.open_store(act).attrs[store.STORE_ID_ATTR]
    pipeline.transform_hmm(hmm, act, fingerprints)
    _interrupt(fingerprints, [1])
    pipeline.transform_nmf(nmf, spec, act, overwrite=True)
    assert store.open_store(act).attrs[store.STORE_ID_ATTR] != first_id
    with pytest.raises(
        FileExistsError, match=r"is an unfinished run made with another"
    ):
        pipeline.transform_hmm(hmm, act, fingerprints)


def test_a_checkpoint_is_not_resumed_on_a_rewritten_store(X, tmp_path) -> None:
    spec = write_spectrogram_store(tmp_path / "spec.zarr", X, 7)
    checkpoint = str(tmp_path / "ck")
    BayesianNonparametricNMF(**dict(NMF, n_steps=4)).fit(
        spec, checkpoint=checkpoint, checkpoint_every=2
    )
    # the same windows and shape, other values
    shutil.rmtree(spec)
    write_spectrogram_store(tmp_path / "spec.zarr", X + 1, 7)
    with pytest.raises(ValueError, match=r"checkpoint in .* was made on other data"):
        BayesianNonparametricNMF(**NMF).fit(spec, checkpoint=checkpoint)


def test_transform_refuses_an_existing_output_unless_overwrite(
    X, stores, tmp_path
) -> None:
    nmf = BayesianNonparametricNMF(**NMF).fit(X)
    out = str(tmp_path / "act.zarr")
    pipeline.transform_nmf(nmf, stores[40], out)
    with pytest.raises(FileExistsError, match=r"act.zarr' already exists.*--overwrite"):
        pipeline.transform_nmf(nmf, stores[40], out)
    pipeline.transform_nmf(nmf, stores[13], out, overwrite=True)
    assert store.open_store(out)[dims.ACTIVATION].chunks[0][0] == 13


def test_not_a_spectrogram_store_is_named(tmp_path) -> None:
    xr.Dataset({"x": ("a", np.ones(3))}).to_zarr(tmp_path / "other.zarr", zarr_format=2)
    with pytest.raises(
        store.StoreError, match=r"has no 'spectrogram' variable .* \['x'\]"
    ):
        BayesianNonparametricNMF().fit(str(tmp_path / "other.zarr"))
    with pytest.raises(FileNotFoundError, match=r"no store at .*nothing.zarr"):
        BayesianNonparametricNMF().fit(str(tmp_path / "nothing.zarr"))


def test_bad_values_in_a_store_name_the_window(X, tmp_path) -> None:
    bad = X.copy()
    bad[17, 3, 4] = -1.0
    path = write_spectrogram_store(tmp_path / "bad.zarr", bad, 7)
    with pytest.raises(
        ValueError, match=r"window 'XX.STA2..HHZ.0017' has negative values"
    ):
        BayesianNonparametricNMF(n_patterns=4, n_steps=40, batch_size=40).fit(path)


# -- worker threads ---------------------------------------------------------------


class _CountingClient:
    """Stands in for a Client: answers nthreads and counts the asks."""

    status = "running"

    def __init__(self, threads: list[int]) -> None:
        self.threads = threads
        self.asks = 0

    def nthreads(self) -> dict:
        self.asks += 1
        return {f"w{i}": n for i, n in enumerate(self.threads)}


def test_thread_count_is_asked_again_only_once_it_is_old(monkeypatch) -> None:
    from specufex_dask import parallel

    now = [1000.0]
    monkeypatch.setattr(parallel.time, "monotonic", lambda: now[0])
    client = _CountingClient([1, 2])
    assert parallel.n_threads(client) == 3
    client.threads = [1, 2, 4]  # a worker joins
    now[0] += 0.5 * parallel.THREAD_COUNT_MAX_AGE_S
    # a step half a max age later uses the count it had, without asking
    assert (parallel.n_threads(client), client.asks) == (3, 1)
    now[0] += parallel.THREAD_COUNT_MAX_AGE_S
    assert (parallel.n_threads(client), client.asks) == (7, 2)
    # each client has its own count; an empty cluster counts as one thread
    assert parallel.n_threads(_CountingClient([])) == 1


class _RunningClient(_CountingClient):
    """A _CountingClient with an event loop in a thread of its own, as a
    Client has, whose ``run(..., asynchronous=True)`` gives a coroutine that
    runs the function once per worker asked, each worker with threads of its
    own. It records the arguments of each call."""

    def __init__(self, threads: list[int]) -> None:
        super().__init__(threads)
        self.calls: list[tuple] = []
        self.cancelled = threading.Event()
        asyncio_loop = asyncio.new_event_loop()
        self.loop = types.SimpleNamespace(asyncio_loop=asyncio_loop)
        self._thread = threading.Thread(target=asyncio_loop.run_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.loop.asyncio_loop.call_soon_threadsafe(self.loop.asyncio_loop.stop)
        self._thread.join(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def run(self, function, *args, workers, asynchronous):
        assert asynchronous
        self.calls.append((args, workers))
        return self._answer(function, args, workers)

    async def _answer(self, function, args, workers) -> dict:
        answers = {}
        for address in workers:
            with ThreadPoolExecutor(2, thread_name_prefix=address) as pool:
                worker = types.SimpleNamespace(address=address, executor=pool)
                answers[address] = await function(*args, dask_worker=worker)
        return answers


def _offset_and_thread(offset: int, x: int) -> tuple[int, str]:
    return offset + x, threading.current_thread().name.split("_")[0]


def test_direct_stage_shares_tasks_by_thread_and_keeps_their_order() -> None:
    from specufex_dask.parallel import StepRunner

    with _RunningClient([2, 1]) as client:  # w0 has two threads, w1 one
        runner = StepRunner(client, "direct")
        results = runner.run(_offset_and_thread, [(x,) for x in range(5)], shared=[100])
        # the workers take turns, one slot per thread (w0, w1, w0), the tasks
        # in order; each worker runs its share on its own threads
        assert results == [
            (100, "w0"),
            (101, "w1"),
            (102, "w0"),
            (103, "w0"),
            (104, "w1"),
        ]
        ((args, workers),) = client.calls
        assert sorted(workers) == ["w0", "w1"] and args[1] == [100]
        assert {w: [i for i, _ in share] for w, share in args[2].items()} == {
            "w0": [0, 2, 3],
            "w1": [1, 4],
        }
        # fewer tasks than threads: one task per worker before any gets two
        runner.run(_offset_and_thread, [(0,), (1,)], shared=[0])
        assert {w: [i for i, _ in s] for w, s in client.calls[-1][0][2].items()} == {
            "w0": [0],
            "w1": [1],
        }
        assert runner.n_direct_failures == 0


class _StuckClient(_RunningClient):
    """A _RunningClient whose calls never answer (a call to a worker that is
    gone waits out a connect timeout) and whose second count of threads no
    longer lists worker w1."""

    def nthreads(self) -> dict:
        threads = super().nthreads()
        if self.asks > 1:
            threads.pop("w1")
        return threads

    async def _answer(self, function, args, workers) -> dict:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("never cancelled")


def test_direct_stage_gives_up_once_one_of_its_workers_is_gone(monkeypatch) -> None:
    from specufex_dask import parallel

    monkeypatch.setattr(parallel, "DIRECT_CHECK_S", 0.01)
    with _StuckClient([1, 1]) as client:
        runner = parallel.StepRunner(client, "direct")
        with pytest.raises(RuntimeError, match=r"worker\(s\) w1 left the cluster"):
            runner._run_direct(_square, [(1,), (2,)], [], client.nthreads())
        # it asked once for the workers to share the stage out, then checked;
        # the call given up on was cancelled, not left waiting
        assert client.asks >= 2
        assert client.cancelled.wait(10)


class _TimedOutClient(_RunningClient):
    """A _RunningClient whose calls fail at once with a TimeoutError, as a
    read from a store that timed out would. After three counts of threads it
    has no workers left, so that a runner that took the failure for a call
    still running ends with another error instead of waiting forever."""

    def nthreads(self) -> dict:
        threads = super().nthreads()
        return threads if self.asks <= 3 else {}

    async def _answer(self, function, args, workers) -> dict:
        raise TimeoutError("read timed out")


def test_a_timeout_inside_a_direct_stage_is_its_failure_not_a_wait(
    monkeypatch,
) -> None:
    from specufex_dask import parallel

    monkeypatch.setattr(parallel, "DIRECT_CHECK_S", 0.2)
    with _TimedOutClient([1, 1]) as client:
        runner = parallel.StepRunner(client, "direct")
        with pytest.raises(TimeoutError, match="read timed out"):
            runner._run_direct(_square, [(1,), (2,)], [], client.nthreads())
        # the failed call is not mistaken for one still running: no check
        assert client.asks == 1


def test_direct_stage_without_workers_goes_to_tasks_without_failing(
    monkeypatch,
) -> None:
    from specufex_dask import parallel

    ran = []
    monkeypatch.setattr(
        parallel, "run_tasks", lambda func, arguments, **kw: ran.append(kw) or [7]
    )
    with _RunningClient([]) as client:
        runner = parallel.StepRunner(client, "direct")
        assert runner.run(_square, [(1,)], stage="early") == [7]
    # tasks wait for workers to come; no direct call was tried or failed
    assert client.calls == [] and runner.n_direct_failures == 0
    assert ran[0]["stage"] == "early"


def test_direct_calls_log_one_line_per_worker_not_one_per_step(caplog) -> None:
    import logging

    from specufex_dask import parallel

    worker_log = logging.getLogger("distributed.worker")
    try:
        parallel._quiet_worker_log()
        parallel._quiet_worker_log()
        assert worker_log.filters.count(parallel._share_filter) == 1
        with caplog.at_level(logging.INFO, logger="distributed.worker"):
            for name in ("_run_share", "other"):
                worker_log.info("Run out-of-band function %r", name)
    finally:
        worker_log.removeFilter(parallel._share_filter)
    assert caplog.messages == ["Run out-of-band function 'other'"]


def test_step_runner_refuses_an_unknown_way() -> None:
    from specufex_dask.parallel import StepRunner

    with pytest.raises(ValueError, match=r"how must be one of .*got 'actors'"):
        StepRunner(_CountingClient([1]), "actors")


def _task_keys(stream, prefix: str) -> list[str]:
    return [r["key"] for r in stream.data if str(r["key"]).startswith(prefix)]


@pytest.mark.cluster
def test_direct_stages_run_no_tasks_and_fall_back_to_tasks(
    cluster_clients, caplog
) -> None:
    from distributed import get_task_stream

    from specufex_dask.parallel import DIRECT_FAILURES_MAX, StepRunner

    client = cluster_clients[2]
    with StepRunner(client, "direct") as runner, get_task_stream(client) as stream:
        squares = runner.run(_square, [(i,) for i in range(3)], stage="direct")
        assert squares == [0, 1, 4]
        # a failing stage is run again as tasks, which fail the same way
        for attempt in range(1, DIRECT_FAILURES_MAX + 1):
            with pytest.raises(ArithmeticError, match="task 1 fails"):
                runner.run(
                    _fail_on, [(i, 1) for i in range(3)], stage=f"failing{attempt}"
                )
            assert runner.n_direct_failures == attempt
        # ... and after enough failures the runner keeps to tasks
        assert not runner.direct
        assert runner.run(_square, [(3,), (4,)], stage="later") == [9, 16]
    assert _task_keys(stream, "direct") == []
    assert len(_task_keys(stream, "failing1-")) >= 3
    assert len(_task_keys(stream, "later-")) == 2
    failures = [r for r in caplog.records if "direct call" in r.getMessage()]
    assert len(failures) == DIRECT_FAILURES_MAX
    assert "ArithmeticError: task 1 fails" in failures[0].getMessage()
    assert "as every later stage" in failures[-1].getMessage()


@pytest.mark.cluster
def test_fit_steps_direct_or_as_tasks_give_the_same_fit(
    X, stores, cluster_clients
) -> None:
    from distributed import get_task_stream

    client = cluster_clients[2]
    fits = {}
    for how in ("direct", "tasks"):
        with (
            dask.config.set({"specufex-dask.svi-steps": how}),
            get_task_stream(client) as stream,
        ):
            nmf = BayesianNonparametricNMF(**NMF).fit(stores[7], client=client)
        fits[how] = (nmf, len(_task_keys(stream, "BayesianNonparametricNMF-step")))
    (direct, n_direct), (tasks, n_tasks) = fits["direct"], fits["tasks"]
    assert (n_direct, n_tasks >= NMF["n_steps"]) == (0, True)
    for name in ("W1_", "W2_", "A1_", "A2_"):
        np.testing.assert_array_equal(
            getattr(direct, name), getattr(tasks, name), err_msg=name
        )


class _Cycle:
    """An object that refers to itself: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_frozen_heap_freezes_for_the_block_and_frees_after() -> None:
    import gc
    import weakref

    from specufex_dask.parallel import frozen_heap

    assert gc.get_freeze_count() == 0
    cycle = _Cycle()
    alive = weakref.ref(cycle)
    with pytest.raises(RuntimeError, match="inside"):
        with frozen_heap():
            outer = gc.get_freeze_count()
            assert outer > 0
            young = [_Cycle() for _ in range(1000)]
            with frozen_heap():  # nested: frozen once (``young`` stays out)
                count = gc.get_freeze_count()
                assert count <= outer
            del young
            # leaving the inner block unfroze nothing (frozen objects that
            # are freed leave the count, so it can only shrink)
            assert 0 < gc.get_freeze_count() <= count
            # garbage made of objects frozen here is not collected in the block
            del cycle
            gc.collect()
            assert alive() is not None
            raise RuntimeError("inside")
    # a failure in the block unfreezes too, and that garbage is then freed
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert alive() is None


def test_frozen_heap_leaves_a_process_frozen_by_someone_else_alone() -> None:
    import gc

    from specufex_dask.parallel import frozen_heap

    made = [_Cycle() for _ in range(1000)]  # in a young generation
    gc.freeze()
    try:
        count = gc.get_freeze_count()
        more = [_Cycle() for _ in range(1000)]
        with frozen_heap():
            # not frozen again (that would add ``more``; frozen objects that
            # are freed leave the count, so it can only shrink)
            assert gc.get_freeze_count() <= count
        # nor unfrozen
        assert 0 < gc.get_freeze_count() <= count
    finally:
        gc.unfreeze()
    del made, more


# -- the workers' memory allocator ----------------------------------------------


def test_slow_allocator_is_dasks_trim_threshold_without_an_mmap_threshold() -> None:
    from specufex_dask import parallel

    trim, mmap = parallel.TRIM_THRESHOLD_VAR, parallel.MMAP_THRESHOLD_VAR
    assert parallel.slow_allocator({trim: "65536"})
    assert parallel.slow_allocator({trim: "65536", mmap: None})
    assert not parallel.slow_allocator({trim: "65536", mmap: "67108864"})
    assert not parallel.slow_allocator({})
    assert not parallel.slow_allocator({trim: str(64 * 2**20)})
    assert parallel.worker_environ() == {mmap: "67108864", trim: "134217728"}


@pytest.mark.cluster
def test_package_cluster_workers_get_the_allocator_settings(monkeypatch) -> None:
    import dask

    from specufex_dask import parallel

    trim, mmap = parallel.TRIM_THRESHOLD_VAR, parallel.MMAP_THRESHOLD_VAR
    # as Dask leaves it after starting workers with its defaults
    monkeypatch.setenv(trim, "65536")
    monkeypatch.delenv(mmap, raising=False)
    with dask.config.set({"specufex-dask.worker-mmap-threshold-mb": 32}):
        client = parallel.get_client(n_workers=1, dashboard_address="127.0.0.1:0")
    try:
        (env,) = client.run(parallel._allocator_environ).values()
        assert env == {mmap: str(32 * 2**20), trim: str(64 * 2**20)}
        assert parallel.check_worker_allocator(client) == []
        # results are fetched from the workers, not relayed by the scheduler
        assert client.direct_to_workers is True
    finally:
        client.cluster.close()
        client.close()
    # this process's environment is left as it was
    assert os.environ[trim] == "65536" and mmap not in os.environ


@pytest.mark.cluster
def test_package_cluster_samples_itself_at_the_package_rates() -> None:
    import gc

    import dask
    import distributed  # noqa: F401  (registers distributed's config defaults)

    from specufex_dask import parallel

    keys = ("distributed.worker.profile.interval", "distributed.admin.tick.interval")
    here = [dask.config.get(key) for key in keys]
    with dask.config.set({"specufex-dask.local-cluster.tick-interval": None}):
        client = parallel.get_client(n_workers=1, dashboard_address="127.0.0.1:0")
    try:
        (worker,) = client.run(lambda: [dask.config.get(key) for key in keys]).values()
        # the package's profile rate; the tick left at distributed's
        assert worker == ["50ms", here[1]]
        # the worker froze what it held once started, and so does the
        # worker that replaces it after a restart
        (frozen,) = client.run(gc.get_freeze_count).values()
        assert frozen > 10_000
        (pid,) = client.run(os.getpid).values()
        client.restart()
        assert list(client.run(os.getpid).values()) != [pid]
        (frozen,) = client.run(gc.get_freeze_count).values()
        assert frozen > 10_000
    finally:
        client.cluster.close()
        client.close()
    # this process's settings are left as they were
    assert [dask.config.get(key) for key in keys] == here


@pytest.mark.cluster
def test_workers_with_dasks_allocator_defaults_get_a_warning(
    monkeypatch, caplog
) -> None:
    import dask

    from specufex_dask import parallel

    monkeypatch.setenv(parallel.TRIM_THRESHOLD_VAR, "65536")
    monkeypatch.delenv(parallel.MMAP_THRESHOLD_VAR, raising=False)
    with dask.config.set({"specufex-dask.worker-mmap-threshold-mb": None}):
        client = parallel.get_client(n_workers=1, dashboard_address="127.0.0.1:0")
    try:
        with caplog.at_level("WARNING", logger="specufex_dask.parallel"):
            slow = parallel.check_worker_allocator(client)
        assert slow == list(client.scheduler_info()["workers"])
        assert (
            "1 of 1 workers run with MALLOC_TRIM_THRESHOLD_=65536 and no "
            "MALLOC_MMAP_THRESHOLD_" in caplog.text
        )
        assert "export MALLOC_MMAP_THRESHOLD_=67108864" in caplog.text
    finally:
        client.cluster.close()
        client.close()


def _scheduler_keys(client, prefix: str) -> set[str]:
    """Keys starting with ``prefix`` that the scheduler still knows."""

    def keys(dask_scheduler, prefix=prefix):
        return {str(k) for k in dask_scheduler.tasks if str(k).startswith(prefix)}

    return client.run_on_scheduler(keys)


def _wait_for_keys(
    client, prefix: str, expected: int, patience_s: float = 30.0
) -> set[str]:
    """The scheduler's keys with ``prefix`` once there are ``expected`` of
    them (releases reach it asynchronously), or after ``patience_s``."""
    import time

    deadline = time.monotonic() + patience_s
    found = _scheduler_keys(client, prefix)
    while len(found) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        found = _scheduler_keys(client, prefix)
    return found


def _square(x: int) -> int:
    return x * x


def _fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ArithmeticError(f"task {x} fails")
    return x


@pytest.mark.cluster
def test_held_futures_are_released_after_the_next_stage_is_submitted(
    cluster_clients,
) -> None:
    from specufex_dask.parallel import HeldFutures, run_tasks

    client = cluster_clients[2]
    with HeldFutures() as hold:
        first = run_tasks(
            _square, [(i,) for i in range(3)], client=client, stage="first", hold=hold
        )
        assert first == [0, 1, 4]
        # gathered, yet still held: nothing tells the scheduler to forget them
        assert len(_wait_for_keys(client, "first-", 0, patience_s=1.0)) == 3
        second = run_tasks(
            _square, [(i,) for i in range(4)], client=client, stage="second", hold=hold
        )
        assert second == [0, 1, 4, 9]
        # submitting the second stage released the first, not the second
        assert _wait_for_keys(client, "first-", 0) == set()
        assert len(_scheduler_keys(client, "second-")) == 4
        # a failing stage releases what is held once it is submitted, and its
        # own futures when it fails
        with pytest.raises(ArithmeticError, match="task 1 fails"):
            run_tasks(
                _fail_on,
                [(i, 1) for i in range(3)],
                client=client,
                stage="failing",
                hold=hold,
            )
        assert _wait_for_keys(client, "failing-", 0) == set()
        assert _wait_for_keys(client, "second-", 0) == set()
    # without a hold, a stage's futures are released as soon as it is gathered
    assert run_tasks(_square, [(5,)], client=client, stage="plain") == [25]
    assert _wait_for_keys(client, "plain-", 0) == set()


@pytest.mark.cluster
def test_a_store_written_again_with_another_layout_is_read_afresh(
    X, stores, cluster_clients, tmp_path
) -> None:
    # workers (and this process) keep the stores they read open; activations
    # written again at the same path by a model with fewer patterns must not
    # be read with the old store's shape
    client = cluster_clients[1]
    out = str(tmp_path / "activations.zarr")
    for n_patterns in (8, 5):
        nmf = BayesianNonparametricNMF(**dict(NMF, n_patterns=n_patterns)).fit(X)
        pipeline.transform_nmf(
            nmf, stores[13], out, client=client, overwrite=True, dtype="float64"
        )
        V = nmf.transform(X)
        assert store.open_store(out)[dims.ACTIVATION].shape == V.shape
        expected = BayesianHMM(**HMM, gain=nmf.gain_).fit(V)
        for where in (client, None):
            hmm = BayesianHMM(**HMM).fit(out, client=where)
            np.testing.assert_array_equal(
                hmm.B1_, expected.B1_, err_msg=f"{n_patterns} patterns, {where}"
            )


@pytest.mark.cluster
def test_a_store_rewritten_with_other_ids_or_chunk_keys_is_read_afresh(
    X, cluster_clients, tmp_path
) -> None:
    # same spectrogram shape, type, chunks and codec each time: only the
    # window ids' width or the chunk files' layout changes
    client = cluster_clients[2]
    path = tmp_path / "spec.zarr"
    nested = {
        dims.SPECTROGRAM: {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
    }
    for i, (ids, encoding) in enumerate(
        [
            ([f"A.{i}" for i in range(len(X))], {}),
            ([f"LONGER.NETWORK.STATION.{i:06d}" for i in range(len(X))], {}),
            ([f"A.{i}" for i in range(len(X))], nested),
        ]
    ):
        values = X * (i + 1)
        ds = xr.Dataset(
            {dims.SPECTROGRAM: (dims.SPECTROGRAM_DIMS, values.astype("float32"))},
            coords={dims.WINDOW: ids},
        )
        ds.chunk({dims.WINDOW: 13}).to_zarr(
            path, zarr_format=2, mode="w", encoding=encoding
        )
        expected = BayesianNonparametricNMF(**NMF).fit(values)
        for where in (client, None):
            model = BayesianNonparametricNMF(**NMF).fit(str(path), client=where)
            np.testing.assert_array_equal(
                model.W1_, expected.W1_, err_msg=f"rewrite {i}, {where}"
            )
        act = pipeline.transform_nmf(
            expected, str(path), str(tmp_path / f"act{i}.zarr"), client=client
        )
        assert store.open_store(act)[dims.WINDOW].values.tolist() == ids


@pytest.mark.cluster
def test_relative_paths_follow_the_current_directory(
    X, cluster_clients, tmp_path, monkeypatch
) -> None:
    # two projects with stores of one name and one layout; the session moves
    # from one to the other (workers keep the directory they started in)
    client = cluster_clients[1]
    values = {"a": X, "b": X * 3}
    for name, data in values.items():
        (tmp_path / name).mkdir()
        write_spectrogram_store(tmp_path / name / "spec.zarr", data, 13)
    for name, data in values.items():
        monkeypatch.chdir(tmp_path / name)
        expected = BayesianNonparametricNMF(**NMF).fit(data)
        for where in (None, client):
            model = BayesianNonparametricNMF(**NMF).fit("spec.zarr", client=where)
            np.testing.assert_array_equal(model.W1_, expected.W1_, err_msg=name)
        pipeline.transform_nmf(
            expected, "spec.zarr", "act.zarr", client=client, dtype="float64"
        )
        written = store.open_store(tmp_path / name / "act.zarr")[dims.ACTIVATION]
        np.testing.assert_array_equal(written.values, expected.transform(data))


@pytest.mark.cluster
def test_a_memory_store_is_refused_on_worker_processes(X, cluster_clients, tmp_path):
    import uuid

    import fsspec

    client = cluster_clients[2]
    url = f"memory://specufex-{uuid.uuid4().hex}/spec.zarr"
    write_spectrogram_store(url, X, 13)
    message = (
        r"store 'memory://.*' is in this process's memory \(memory://\), which the "
        "Dask worker processes cannot see; use a local folder"
    )
    with pytest.raises(ValueError, match=message):
        BayesianNonparametricNMF(**NMF).fit(url, client=client)
    # in this process the same store is fine, and a model fitted on it
    nmf = BayesianNonparametricNMF(**NMF).fit(url)
    np.testing.assert_array_equal(nmf.W1_, BayesianNonparametricNMF(**NMF).fit(X).W1_)
    out = f"memory://specufex-{uuid.uuid4().hex}/act.zarr"
    local = write_spectrogram_store(tmp_path / "spec.zarr", X, 13)
    for spectrograms, output in ((url, str(tmp_path / "act.zarr")), (local, out)):
        with pytest.raises(ValueError, match=message):
            pipeline.transform_nmf(nmf, spectrograms, output, client=client)
    assert not (tmp_path / "act.zarr").exists()
    assert not fsspec.filesystem("memory").exists(out)


@pytest.mark.parametrize("folder", ["run*1", "run[1]", "run?"])
def test_paths_with_glob_characters_are_names(X, tmp_path, folder) -> None:
    """``*``, ``[`` and ``?`` in a folder's name are part of the name: the
    store is read, the model and checkpoints saved and the activations
    written there, as for any other folder."""
    root = tmp_path / folder
    root.mkdir()
    path = write_spectrogram_store(root / "spec.zarr", X, 13)
    expected = BayesianNonparametricNMF(**NMF).fit(X)
    model = BayesianNonparametricNMF(**NMF).fit(
        path, checkpoint=str(root / "checkpoints")
    )
    np.testing.assert_array_equal(model.W1_, expected.W1_)
    model.save(root / "nmf.nc")
    loaded = BayesianNonparametricNMF.load(root / "nmf.nc")
    out = pipeline.transform_nmf(loaded, path, str(root / "act.zarr"), dtype="float64")
    written = store.open_store(out)[dims.ACTIVATION]
    np.testing.assert_array_equal(written.values, expected.transform(X))
