# specufex-dask: one image for every role of a cluster.
#
#   scheduler   dask scheduler --host 0.0.0.0 --port 8786 --dashboard-address :8787
#   worker      dask worker tcp://scheduler:8786 --nthreads 1
#   notebook    (default command) JupyterLab on port 8888, token required
#   s3          moto_server -H 0.0.0.0 -p 5000   (S3 stand-in, docker-compose only)
#
# Build from the repository root:
#   docker build -t specufex-dask:latest .
# Versions come from deploy/constraints.txt, the lock for this image.

FROM python:3.11-slim

# one BLAS thread per Dask thread; glibc keeps chunk-sized arrays in reused
# memory (Dask's own MALLOC_TRIM_THRESHOLD_ would map each chunk afresh)
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    MALLOC_MMAP_THRESHOLD_=67108864 \
    MALLOC_TRIM_THRESHOLD_=134217728 \
    SPECUFEX_HEALTHCHECK_URL=http://127.0.0.1:8888/api

# Unprivileged user that runs every role.
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash specufex

WORKDIR /opt/specufex-dask

# Dependencies first, in their own layer, so that editing the package does not
# reinstall them. moto[server] is the S3 stand-in of docker-compose.yml.
COPY deploy/constraints.txt deploy/constraints.txt
RUN pip install --no-cache-dir -r deploy/constraints.txt \
        jupyterlab dask-labextension "moto[server]"

# The package itself (bundled Piton data included).
COPY pyproject.toml README.md ./
COPY specufex_dask specufex_dask
RUN pip install --no-cache-dir -c deploy/constraints.txt ".[s3]" jupyterlab dask-labextension bokeh \
    && rm -rf build specufex_dask.egg-info

# Third-party charts (the dask/dask Helm chart) still call the retired
# hyphenated commands; forward them to the `dask` command.
RUN printf '#!/bin/sh\nexec dask scheduler "$@"\n' > /usr/local/bin/dask-scheduler \
    && printf '#!/bin/sh\nexec dask worker "$@"\n' > /usr/local/bin/dask-worker \
    && chmod 0755 /usr/local/bin/dask-scheduler /usr/local/bin/dask-worker

COPY --chown=specufex:specufex notebooks/ /home/specufex/notebooks/
RUN mkdir -p /home/specufex/work && chown specufex:specufex /home/specufex/work

USER specufex
WORKDIR /home/specufex

# 8786 scheduler, 8787 dashboard, 8888 JupyterLab.
EXPOSE 8786 8787 8888

# Each role sets SPECUFEX_HEALTHCHECK_URL to an endpoint it serves without
# credentials: /api (JupyterLab), /health (scheduler and worker dashboards).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['SPECUFEX_HEALTHCHECK_URL'], timeout=4)"]

# JupyterLab listens on every interface of the container (publish the port on
# 127.0.0.1 only) and always asks for a token: JUPYTER_TOKEN when set, else a
# random one printed in the log.
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--ServerApp.root_dir=/home/specufex"]
