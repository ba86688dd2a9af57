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
will use. Needs ``pip install dask-jobqueue``. The scheduler listens on the
interface given by ``--interface`` (pick the cluster-internal one, never a
public one) and its dashboard on 127.0.0.1 only: reach it with
``ssh -L 8787:127.0.0.1:8787 <host running this script>``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import time
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
        help="folder of certificates made by deploy/tls/make_certs.sh, "
        "on a shared file system; switches TLS on",
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
    if args.tls_dir:
        settings = tls_settings(args.tls_dir)
        dask.config.set(settings)
        tls_env = as_environment(settings)
        security = Security()

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
        job_script_prologue=[
            "export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1",
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
