"""The speed targets of specufex_dask, measured, in one table.

Usage (from the repository root)::

    python -m benchmarks.run                  # the full suite, 100 000 windows
    python -m benchmarks.run --quick          # minutes, 10 000 windows
    python -m benchmarks.run --n 25000 --skip-kernels

See ``benchmarks/README.md`` for what each row measures. Stores are written
once into ``.benchmarks/`` and reused; outputs of the runs are deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass

from benchmarks import cluster, data, kernels

logger = logging.getLogger("benchmarks")

GB = 1e9


@dataclass
class Row:
    name: str
    measured: str
    target: str
    passed: bool | None

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "-"}[self.passed]


def load_average() -> str:
    try:
        return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "load average unknown"


def kernel_rows(quick: bool) -> list[Row]:
    ratios = kernels.measure(quick)
    targets = {
        "NMF transform per spectrogram": 25,
        "NMF fit local step per spectrogram": 25,
        "HMM transform per sequence": 200,
        "HMM fit local step per sequence": 200,
    }
    rows = []
    for name, target in targets.items():
        found = [r for r in ratios if r.name == name]
        worst = min(found, key=lambda r: r.speedup)
        measured = "; ".join(
            f"1/{r.speedup:.0f} ({r.kernel_s * 1e6:.0f} us vs "
            f"{r.literal_s * 1e3:.1f} ms" + (f", {r.detail})" if r.detail else ")")
            for r in found
        )
        rows.append(
            Row(name, measured, f"<= 1/{target} of literal", worst.speedup >= target)
        )
    return rows


def scaling_rows(store: str, n_window: int, workload, rounds: int, scratch) -> list:
    """2 workers against 1, and 1 worker against no cluster, on one store."""
    best: dict[int, dict[str, float]] = {}
    for _ in range(rounds):
        for n_workers in (0, 1, 2):
            run = cluster.run_pipeline(store, n_window, workload, n_workers, scratch)
            times = {"fit": run.stage_s("fit"), "transform": run.stage_s("transform")}
            previous = best.setdefault(n_workers, times)
            for kind in times:
                previous[kind] = min(previous[kind], times[kind])
            logger.warning(
                "%d workers: %s",
                n_workers,
                {k: round(v, 2) for k, v in run.seconds.items()},
            )
    rows = []
    for kind in ("fit", "transform"):
        speedup = best[1][kind] / best[2][kind]
        rows.append(
            Row(
                f"2 workers vs 1 on 2 cores, {kind}",
                f"{speedup:.2f}x ({best[1][kind]:.1f} s -> {best[2][kind]:.1f} s)",
                ">= 1.8x",
                speedup >= 1.8,
            )
        )
    for kind in ("fit", "transform"):
        ratio = best[1][kind] / best[0][kind]
        rows.append(
            Row(
                f"Dask (1 worker) vs in-process, {kind}",
                f"{ratio:.2f}x the time ({best[0][kind]:.1f} s -> "
                f"{best[1][kind]:.1f} s)",
                "<= 1.15x",
                ratio <= 1.15,
            )
        )
    return rows, best


def end_to_end_rows(n_window: int, chunk: int, workload, scratch) -> list:
    """The whole chain on ``n_window`` windows with 2 workers, and on a
    quarter of them to see whether the workers' memory grows with N."""
    runs = {}
    for n in (n_window // 4, n_window):
        store = data.spectrogram_store(n, chunk)
        runs[n] = cluster.run_pipeline(store, n, workload, 2, scratch)
        logger.info("end to end, %d windows: %s", n, runs[n].seconds)
    big, small = runs[n_window], runs[n_window // 4]
    peak = max(big.peak_rss.values())
    peak_small = max(small.peak_rss.values())
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in big.seconds.items())
    rows = [
        Row(
            f"{n_window:,} spectrograms end to end, 2 workers",
            f"{big.total_s:.0f} s ({stages})",
            "<= 300 s",
            big.total_s <= 300,
        ),
        Row(
            "peak memory per worker",
            f"{peak / GB:.2f} GB at {n_window:,} windows; "
            f"{peak_small / GB:.2f} GB at {n_window // 4:,} "
            f"(x{peak / peak_small:.2f})",
            "<= 1.5 GB, not growing with N",
            peak <= 1.5 * GB and peak <= 1.1 * peak_small,
        ),
    ]
    return rows, runs


def print_table(rows: list[Row], out=sys.stdout) -> None:
    headers = ("target row", "measured", "target", "result")
    cells = [(r.name, r.measured, r.target, r.verdict) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = (
        "| "
        + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
        + " |"
    )
    print(line, file=out)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=out)
    for c in cells:
        print(
            "| "
            + " | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True))
            + " |",
            file=out,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run")
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats, smaller runs"
    )
    parser.add_argument(
        "--n", type=int, default=None, help="windows of the end-to-end run"
    )
    parser.add_argument("--chunk", type=int, default=64, help="windows per store chunk")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds of the scaling runs, the best of which counts "
        "(default 3; 1 with --quick)",
    )
    parser.add_argument("--skip-kernels", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument(
        "--what-if",
        choices=["blocks"],
        default=None,
        help="apply a proposed change to the fits' minibatches (benchmarks/what_if.py)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    n_window = args.n or (10_000 if args.quick else 100_000)
    scratch = data.CACHE / f"run-{os.getpid()}"
    command = "python -m benchmarks.run " + " ".join(argv or sys.argv[1:])
    print(f"# {command.strip()}")
    print(
        f"# {platform.node()}: {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {load_average()} at start"
    )
    started = time.perf_counter()
    rows: list[Row] = []
    # one BLAS thread here too: the in-process path runs its kernels here, and
    # the workers pin theirs (specufex_dask.parallel.get_client)
    import scipy.linalg  # noqa: F401  (load every BLAS before pinning them)
    from threadpoolctl import threadpool_limits

    with contextlib.ExitStack() as stack:
        blas = threadpool_limits(1)
        stack.callback(blas.restore_original_limits)
        stack.callback(data.remove, scratch)
        if not args.skip_kernels:
            rows += kernel_rows(args.quick)
        if args.what_if == "blocks":
            from benchmarks.what_if import block_minibatches

            stack.enter_context(block_minibatches())
        if not args.skip_scaling:
            n_scaling = 2048 if args.quick else 8192
            workload = cluster.Workload(
                nmf_steps=4 if args.quick else 30,
                hmm_steps=4 if args.quick else 30,
                batch_size=256,
                validation=False,
            )
            store = data.spectrogram_store(n_scaling, args.chunk)
            rounds = args.rounds or (1 if args.quick else 3)
            more, _ = scaling_rows(store, n_scaling, workload, rounds, scratch)
            rows += more
        if not args.skip_e2e:
            workload = cluster.Workload(nmf_steps=100, hmm_steps=100, batch_size=256)
            more, _ = end_to_end_rows(n_window, args.chunk, workload, scratch)
            rows += more
    print(
        f"# {load_average()} at end, {time.perf_counter() - started:.0f} s in all; "
        f"store chunks of {args.chunk} windows; end-to-end fits of 100 steps x 256 "
        f"windows; minibatches {args.what_if or 'as committed'}"
    )
    print_table(rows)
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
