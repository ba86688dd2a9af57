"""Start a Dask cluster of Slurm jobs for specufex-dask, with dask-jobqueue.

The scheduler runs in this process; every worker is a Slurm job submitted by
``SLURMCluster``. The script writes a scheduler file on the shared file system,
prints how to join it, and keeps the cluster up until Ctrl-C or, with
``--run CONFIG``, until a full specufex-dask run on it ends. Workers leave at
the walltime of their job::

    python deploy/slurm/slurm_cluster.py --jobs 4 --cores 8 --memory 32GB \\
        --walltime 02:00:00 --account myproject --interface ib0 \\
        --scheduler-file ~/specufex/scheduler.json

    # from another shell on the same system
    specufex-dask run config.yaml --scheduler ~/specufex/scheduler.json

Run it where long-lived processes are allowed (a small interactive or batch
allocation rather than a busy login node), from the environment the workers
will use. Needs ``pip install dask-jobqueue``. The scheduler and the workers
listen on the interface given by ``--interface`` (pick the cluster-internal
one, never a public one; default: the address of each node's host name) and
the dashboard on 127.0.0.1 only: reach it with
``ssh -L 8787:127.0.0.1:8787 <host running this script>``.

Every connection is mutual TLS unless ``--no-tls`` is given: with the
certificates of ``--tls-dir``, or else with a set made by
``deploy/tls/make_certs.sh`` in ``dask-certs/`` beside the scheduler file.
Clients from another shell load the same settings first::

    source ~/specufex/dask-certs/dask-tls.env
    specufex-dask run config.yaml --scheduler ~/specufex/scheduler.json
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("specufex_dask.slurm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the script."""
    parser = argparse.ArgumentParser(
        description="Dask cluster of Slurm jobs for specufex-dask (dask-jobqueue)."
    )
    parser.add_argument("--jobs", type=int, default=2, help="Slurm jobs to submit")
    parser.add_argument("--cores", type=int, default=8, help="cores per job")
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="worker processes per job (default: one per core)",
    )
    parser.add_argument("--memory", default="32GB", help="memory per job")
    parser.add_argument("--walltime", default="02:00:00", help="walltime per job")
    parser.add_argument("--queue", default=None, help="Slurm partition")
    parser.add_argument("--account", default=None, help="Slurm account")
    parser.add_argument(
        "--interface",
        default=None,
        help="cluster-internal network interface, e.g. ib0 "
        "(default: the address of this host's name)",
    )
    parser.add_argument(
        "--job-extra",
        action="append",
        default=[],
        metavar="DIRECTIVE",
        help="extra #SBATCH directive, e.g. --job-extra=--constraint=cpu (repeatable)",
    )
    parser.add_argument(
        "--local-directory",
        default="$TMPDIR",
        help="node-local scratch for worker spill files",
    )
    parser.add_argument(
        "--log-directory",
        default="dask-slurm-logs",
        help="where the Slurm jobs write their logs",
    )
    parser.add_argument(
        "--scheduler-file",
        default="scheduler.json",
        help="connection file to write, on a shared file system",
    )
    parser.add_argument(
        "--tls-dir",
        default=None,
        help="folder of certificates made by deploy/tls/make_certs.sh, on a "
        "shared file system (default: dask-certs/ beside the scheduler file, "
        "made on first use)",
    )
    parser.add_argument(
        "--no-tls",
        action="store_true",
        help="plain TCP: anyone who can reach the scheduler can run code as you; "
        "only on a network no one else uses",
    )
    parser.add_argument(
        "--run",
        metavar="CONFIG",
        default=None,
        help="run `specufex-dask run CONFIG` on the cluster, then stop",
    )
    return parser.parse_args(argv)


def tls_settings(tls_dir: str) -> dict[str, Any]:
    """Dask configuration that makes every connection mutual TLS."""
    tls_dir = os.path.abspath(os.path.expanduser(tls_dir))
    return {
        "distributed.comm.require-encryption": True,
        "distributed.comm.default-scheme": "tls",
        "distributed.comm.tls.ca-file": os.path.join(tls_dir, "ca.pem"),
        "distributed.comm.tls.scheduler.cert": os.path.join(tls_dir, "scheduler.pem"),
        "distributed.comm.tls.scheduler.key": os.path.join(
            tls_dir, "scheduler-key.pem"
        ),
        "distributed.comm.tls.worker.cert": os.path.join(tls_dir, "worker.pem"),
        "distributed.comm.tls.worker.key": os.path.join(tls_dir, "worker-key.pem"),
        "distributed.comm.tls.client.cert": os.path.join(tls_dir, "client.pem"),
        "distributed.comm.tls.client.key": os.path.join(tls_dir, "client-key.pem"),
    }


def default_certificates(scheduler_file: str) -> str:
    """``dask-certs/`` beside the scheduler file, made with make_certs.sh if new."""
    folder = os.path.join(
        os.path.dirname(os.path.abspath(os.path.expanduser(scheduler_file))),
        "dask-certs",
    )
    if not os.path.exists(os.path.join(folder, "ca.pem")):
        make_certs = Path(__file__).resolve().parents[1] / "tls" / "make_certs.sh"
        subprocess.run(["bash", str(make_certs), folder], check=True)
    return folder


def write_environment(settings: dict[str, Any], path: str) -> None:
    """``export`` lines of the settings, for clients started from other shells."""
    lines = [
        f"export {name}={shlex.quote(value)}"
        for name, value in as_environment(settings).items()
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")


def as_environment(settings: dict[str, Any]) -> dict[str, str]:
    """The same settings as DASK_* environment variables, for child processes."""
    return {
        "DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
        for key, value in settings.items()
    }


def main(argv: list[str] | None = None) -> int:
    """Start the cluster, write the scheduler file, wait, shut down."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    # imported here so that this file can be read and checked without them
    import dask.config
    from dask_jobqueue import SLURMCluster
    from distributed import Client, Security

    # TLS, when asked for: the same settings for this process, the workers'
    # job scripts and the specufex-dask client started by --run
    tls_env: dict[str, str] = {}
    security = None
    if args.no_tls:
        logger.warning(
            "TLS is off (--no-tls): anyone who can reach the scheduler can run "
            "code as you on every worker"
        )
    else:
        tls_dir = args.tls_dir or default_certificates(args.scheduler_file)
        settings = tls_settings(tls_dir)
        dask.config.set(settings)
        tls_env = as_environment(settings)
        security = Security()
        env_file = os.path.join(
            os.path.abspath(os.path.expanduser(tls_dir)), "dask-tls.env"
        )
        write_environment(settings, env_file)
        logger.info("TLS on; clients in other shells: source %s", env_file)

    # one Slurm job = `processes` workers sharing `cores` and `memory`
    cluster = SLURMCluster(
        cores=args.cores,
        processes=args.processes or args.cores,
        memory=args.memory,
        walltime=args.walltime,
        queue=args.queue,
        account=args.account,
        interface=args.interface,
        local_directory=args.local_directory,
        log_directory=args.log_directory,
        job_name="specufex-dask",
        job_extra_directives=args.job_extra,
        # without an interface, each worker binds its own node's host name
        # (evaluated by the job script on that node), not every interface
        worker_extra_args=[] if args.interface else ["--host", "$(hostname)"],
        job_script_prologue=[
            "export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1",
            # chunk-sized arrays in reused memory, not mapped afresh per read
            "export MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=134217728",
            *(f"export {name}={value}" for name, value in tls_env.items()),
        ],
        # scheduler reachable from the compute nodes only, dashboard local
        scheduler_options={
            **(
                {"interface": args.interface}
                if args.interface
                else {"host": socket.gethostname()}
            ),
            "dashboard_address": "127.0.0.1:8787",
        },
        security=security,
    )
    logger.info("job script:\n%s", cluster.job_script())

    client = Client(cluster, security=security)
    scheduler_file = os.path.abspath(os.path.expanduser(args.scheduler_file))
    try:
        # submit the jobs, publish the address, wait for the first worker
        cluster.scale(jobs=args.jobs)
        client.write_scheduler_file(scheduler_file)
        logger.info("scheduler %s, file %s", client.scheduler.address, scheduler_file)
        logger.info(
            "dashboard %s (tunnel with ssh -L 8787:127.0.0.1:8787)",
            client.dashboard_link,
        )
        client.wait_for_workers(1, timeout=None)

        if args.run:
            command = ["specufex-dask", "run", args.run, "--scheduler", scheduler_file]
            logger.info("running %s", " ".join(command))
            return subprocess.call(command, env={**os.environ, **tls_env})

        logger.info(
            "join with: specufex-dask run CONFIG --scheduler %s", scheduler_file
        )
        logger.info("Ctrl-C stops the cluster")
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        logger.info("stopping")
        return 0
    finally:
        client.close()
        cluster.close()
        if os.path.exists(scheduler_file):
            os.remove(scheduler_file)


if __name__ == "__main__":
    sys.exit(main())
