"""Deployment recipes: the files parse, agree with each other and with the
image, keep every port private, and the compose commands make a working
cluster when run as plain local processes.

Nothing here needs Docker, Kubernetes, Slurm or a network.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import py_compile
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import dask.config
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
DASKCLUSTER = DEPLOY / "kubernetes" / "daskcluster.yaml"
HELM_VALUES = DEPLOY / "kubernetes" / "helm-values.yaml"
CONSTRAINTS = DEPLOY / "constraints.txt"
SLURM_SCRIPT = DEPLOY / "slurm" / "slurm_cluster.py"
SBATCH = DEPLOY / "slurm" / "submit.sbatch"
MAKE_CERTS = DEPLOY / "tls" / "make_certs.sh"
PACKAGE_CONFIG = REPO / "specufex_dask" / "specufex-dask.yaml"

IMAGE = "specufex-dask:latest"
YAML_FILES = sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml"))


# -- helpers ------------------------------------------------------------------


def _load(path: Path) -> Any:
    with open(path, encoding="utf-8") as file:
        return yaml.safe_load(file)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _exposed_ports() -> set[int]:
    ports = set()
    for keyword, rest in _dockerfile_instructions():
        if keyword == "EXPOSE":
            ports.update(int(p.split("/")[0]) for p in rest.split())
    return ports


def _command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def _option(command: list[str], name: str) -> str | None:
    """Value of ``--name VALUE`` or ``--name=VALUE`` in a command line."""
    for i, arg in enumerate(command):
        if arg == name and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _host_bindings(service: dict) -> list[str]:
    """Host side of each published port, as "ip:port"."""
    bindings = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            bindings.append(f"{entry.get('host_ip', '')}:{entry.get('published', '')}")
        else:
            parts = str(entry).split(":")
            bindings.append(":".join(parts[:-1]) if len(parts) > 1 else "")
    return bindings


def _container_ports(service: dict) -> set[int]:
    ports = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).rsplit(":", 1)[1].split("/")[0]))
    return ports


def _pod_specs(cluster: dict) -> list[dict]:
    return [cluster["spec"]["scheduler"]["spec"], cluster["spec"]["worker"]["spec"]]


def _load_slurm_module():
    spec = importlib.util.spec_from_file_location("slurm_cluster", SLURM_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compose() -> dict:
    return _load(COMPOSE)


@pytest.fixture
def fresh_dask_config():
    """Rebuild Dask's configuration after a test that changed the environment."""
    yield
    dask.config.refresh()


# -- every YAML file ----------------------------------------------------------


@pytest.mark.parametrize(
    "path", [*YAML_FILES, PACKAGE_CONFIG], ids=lambda p: str(p.relative_to(REPO))
)
def test_yaml_files_parse(path: Path) -> None:
    with open(path, encoding="utf-8") as file:
        documents = [doc for doc in yaml.safe_load_all(file) if doc is not None]
    assert documents, f"{path} holds no YAML document"


# -- Dockerfile ---------------------------------------------------------------


def test_dockerfile_runs_as_non_root_user() -> None:
    instructions = _dockerfile_instructions()
    users = [rest for keyword, rest in instructions if keyword == "USER"]

    assert users, "the Dockerfile never switches away from root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert any("--uid 1000" in rest and "specufex" in rest for _, rest in instructions)
    workdirs = [rest for keyword, rest in instructions if keyword == "WORKDIR"]
    assert workdirs[-1] == "/home/specufex"


def test_dockerfile_base_install_ports_and_notebooks() -> None:
    instructions = _dockerfile_instructions()
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    copies = [rest for keyword, rest in instructions if keyword == "COPY"]

    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert (
        'pip install --no-cache-dir -c deploy/constraints.txt ".[s3]" jupyterlab '
        "dask-labextension bokeh" in runs
    )
    assert any(rest.split()[-2].rstrip("/") == "notebooks" for rest in copies)
    assert {8786, 8787, 8888} <= _exposed_ports()
    assert any(keyword == "HEALTHCHECK" for keyword, _ in instructions)


def test_dockerfile_jupyterlab_requires_a_token() -> None:
    cmd = [rest for keyword, rest in _dockerfile_instructions() if keyword == "CMD"][-1]
    args = ast.literal_eval(cmd)

    assert args[:2] == ["jupyter", "lab"]
    assert "--ip=0.0.0.0" in args
    assert not any(re.search(r"token=(''|\"\")?$", arg) for arg in args)
    assert "token=''" not in DOCKERFILE.read_text(encoding="utf-8")


# -- docker compose -----------------------------------------------------------


def test_compose_has_scheduler_two_workers_notebook_and_s3(compose: dict) -> None:
    services = compose["services"]
    kinds = {name: _command(service)[:2] for name, service in services.items()}

    assert set(services) == {"scheduler", "worker", "notebook", "s3"}
    assert kinds["scheduler"] == ["dask", "scheduler"]
    assert kinds["worker"] == ["dask", "worker"]
    assert kinds["notebook"] == ["jupyter", "lab"]
    assert kinds["s3"][0] == "moto_server"
    assert services["worker"]["deploy"]["replicas"] == 2


def test_compose_services_share_one_image(compose: dict) -> None:
    for name, service in compose["services"].items():
        build = service["build"]
        assert service["image"] == IMAGE, name
        assert (COMPOSE.parent / build["context"]).resolve() == REPO, name
        assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE, name


def test_compose_ports_agree_with_commands_and_dockerfile(compose: dict) -> None:
    services = compose["services"]
    scheduler = _command(services["scheduler"])
    worker = _command(services["worker"])

    # scheduler: its listening ports are the published ones and the exposed ones
    scheduler_port = int(_option(scheduler, "--port"))
    dashboard_port = _port(_option(scheduler, "--dashboard-address"))
    assert (scheduler_port, dashboard_port) == (8786, 8787)
    assert _container_ports(services["scheduler"]) == {scheduler_port, dashboard_port}
    assert {scheduler_port, dashboard_port} <= _exposed_ports()

    # worker: joins the scheduler service on that port
    address = worker[2]
    assert address == f"tcp://scheduler:{scheduler_port}"

    # notebook: the JupyterLab port is published and exposed
    notebook_port = int(_option(_command(services["notebook"]), "--port"))
    assert _container_ports(services["notebook"]) == {notebook_port}
    assert notebook_port in _exposed_ports()


def test_compose_healthchecks_probe_the_ports_served(compose: dict) -> None:
    services = compose["services"]
    served = {
        "scheduler": _port(
            _option(_command(services["scheduler"]), "--dashboard-address")
        ),
        "worker": _port(_option(_command(services["worker"]), "--dashboard-address")),
        "notebook": int(_option(_command(services["notebook"]), "--port")),
        "s3": int(_option(_command(services["s3"]), "-p")),
    }

    for name, port in served.items():
        url = services[name]["environment"]["SPECUFEX_HEALTHCHECK_URL"]
        assert url.startswith(f"http://127.0.0.1:{port}/"), name


def test_compose_publishes_ports_on_localhost_only(compose: dict) -> None:
    bindings = [
        binding
        for service in compose["services"].values()
        for binding in _host_bindings(service)
    ]

    assert bindings, "nothing is published; the dashboard would be unreachable"
    for binding in bindings:
        assert binding.startswith("127.0.0.1:"), binding
    assert "ports" not in compose["services"]["worker"]


def test_compose_jupyterlab_requires_a_token(compose: dict) -> None:
    notebook = compose["services"]["notebook"]
    text = COMPOSE.read_text(encoding="utf-8")

    assert re.fullmatch(
        r"\$\{JUPYTER_TOKEN:\?[^}]+\}", notebook["environment"]["JUPYTER_TOKEN"]
    )
    assert not any(re.search(r"token=(''|\"\")?$", arg) for arg in _command(notebook))
    assert "token=''" not in text and 'token=""' not in text


def test_compose_s3_standin_and_credentials(compose: dict) -> None:
    services = compose["services"]
    s3 = _command(services["s3"])
    s3_port = int(_option(s3, "-p"))

    assert _option(s3, "-H") == "0.0.0.0"
    for name in ("worker", "notebook"):
        environment = services[name]["environment"]
        assert environment["AWS_ENDPOINT_URL"] == f"http://s3:{s3_port}"
        assert not any(key.startswith("AWS_SECRET") for key in environment), name
        assert not any(key == "AWS_ACCESS_KEY_ID" for key in environment), name

        env_files = services[name]["env_file"]
        env_text = "".join(
            (COMPOSE.parent / path).read_text(encoding="utf-8") for path in env_files
        )
        assert "AWS_ACCESS_KEY_ID=" in env_text and "AWS_SECRET_ACCESS_KEY=" in env_text


# -- Kubernetes ----------------------------------------------------------------


def test_daskcluster_is_private_non_root_and_uses_the_image() -> None:
    cluster = _load(DASKCLUSTER)
    service = cluster["spec"]["scheduler"]["service"]

    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    assert cluster["kind"] == "DaskCluster"
    assert cluster["spec"]["worker"]["replicas"] == 2
    assert service["type"] == "ClusterIP"
    assert {port["port"] for port in service["ports"]} == {8786, 8787}
    for pod in _pod_specs(cluster):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 1000
        for container in pod["containers"]:
            assert container["image"] == IMAGE
            assert container["resources"]["requests"]
            assert container["resources"]["limits"]


def test_helm_values_are_private_non_root_and_use_the_image() -> None:
    values = _load(HELM_VALUES)

    for role in ("scheduler", "worker"):
        image = values[role]["image"]
        assert f"{image['repository']}:{image['tag']}" == IMAGE, role
        assert values[role]["securityContext"]["runAsNonRoot"] is True, role
    assert values["scheduler"]["serviceType"] == "ClusterIP"
    assert values["worker"]["replicas"] == 2
    jupyter = values["jupyter"]
    assert jupyter["enabled"] is False or jupyter["serviceType"] == "ClusterIP"


# -- constraints ----------------------------------------------------------------


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+!\-]+)", line)
            assert match, f"constraint {line!r} is not an exact pin (name==version)"
            pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return pins


def test_constraints_pin_exact_versions_of_dask_and_distributed() -> None:
    pins = _pins()
    text = CONSTRAINTS.read_text(encoding="utf-8")

    assert text.startswith("#") and "lock" in text.splitlines()[0].lower()
    # dask and distributed are released together: the image pins one release
    assert pins["dask"] == pins["distributed"]
    # and the lock satisfies the package's own lower bounds
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    for requirement in pyproject["project"]["dependencies"]:
        match = re.fullmatch(
            r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?>=([0-9.]+)", requirement
        )
        if match and re.sub(r"[-_.]+", "-", match[1]).lower() in (
            "dask",
            "distributed",
        ):
            pinned = tuple(int(p) for p in pins[match[1].lower()].split(".")[:2])
            lower = tuple(int(p) for p in match[2].split(".")[:2])
            assert pinned >= lower, requirement


def test_constraints_pin_every_direct_dependency() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["s3"]
    names = {
        re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", req)[0]).lower()
        for req in requirements
    }

    assert names <= set(_pins())


# -- Slurm ----------------------------------------------------------------------


def test_slurm_script_compiles_without_dask_jobqueue(tmp_path: Path) -> None:
    source = SLURM_SCRIPT.read_text(encoding="utf-8")
    tree = ast.parse(source)
    top_level_imports = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level_imports |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level_imports.add(node.module.split(".")[0])

    py_compile.compile(str(SLURM_SCRIPT), cfile=str(tmp_path / "s.pyc"), doraise=True)
    assert "dask_jobqueue" not in top_level_imports
    assert "SLURMCluster(" in source and "scale(jobs=" in source
    assert "write_scheduler_file" in source


def test_slurm_tls_settings_round_trip_through_environment() -> None:
    import distributed  # noqa: F401  (registers the distributed.* defaults)

    module = _load_slurm_module()
    settings = module.tls_settings("/certs")
    collected = dask.config.collect_env(module.as_environment(settings))

    for key, value in settings.items():
        assert dask.config.get(key, config=collected) == value, key
        dask.config.get(key)  # a real distributed key: raises KeyError otherwise


def test_sbatch_starts_scheduler_workers_and_the_run() -> None:
    text = SBATCH.read_text(encoding="utf-8")

    assert "dask scheduler --scheduler-file" in text
    assert re.search(r"srun .*\n?.*dask worker --scheduler-file", text)
    assert 'specufex-dask run "$CONFIG" --scheduler "$SCHEDULER_FILE"' in text
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(SBATCH)], check=True)


# -- TLS ------------------------------------------------------------------------


def test_tls_readme_variables_are_dask_settings() -> None:
    readme = (DEPLOY / "tls" / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^(DASK_[A-Z_]+)=", readme, flags=re.MULTILINE))
    slurm = _load_slurm_module()
    known = set(slurm.as_environment(slurm.tls_settings("/certs")))

    assert documented
    assert documented == known


@pytest.mark.skipif(
    not (shutil.which("openssl") and shutil.which("bash")), reason="needs openssl"
)
def test_make_certs_gives_working_mutual_tls(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster, Security

    certs = tmp_path / "certs"
    subprocess.run(
        ["bash", str(MAKE_CERTS), str(certs), "2"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    settings = _load_slurm_module().tls_settings(str(certs))

    assert (certs / ".gitignore").read_text() == "*\n"
    assert oct((certs / "worker-key.pem").stat().st_mode & 0o777) == "0o600"
    with dask.config.set(settings):
        security = Security()
        assert security.require_encryption
        with (
            LocalCluster(
                n_workers=1,
                threads_per_worker=1,
                processes=False,
                host="127.0.0.1",
                protocol="tls://",
                dashboard_address=None,
                security=security,
            ) as cluster,
            Client(cluster) as client,
        ):
            assert client.scheduler.address.startswith("tls://127.0.0.1:")
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6


# -- walkthrough ------------------------------------------------------------------


def test_readme_walkthrough_config_is_a_valid_run_config() -> None:
    run_config = pytest.importorskip("specufex_dask.config")
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", readme, flags=re.DOTALL)[1]

    config = run_config.load_config(yaml.safe_load(block))
    layout = run_config.OutputLayout(config.output)
    assert config.output.startswith("s3://")
    assert config.storage_options["endpoint_url"] == "http://s3:5000"
    assert f'xr.open_zarr("{layout.fingerprints}"' in readme


# -- package Dask configuration -------------------------------------------------


def test_config_defaults_load_through_dask() -> None:
    import specufex_dask.config_dask as config_dask

    expected = _load(PACKAGE_CONFIG)["specufex-dask"]

    assert dask.config.get("specufex-dask.worker-threads") == 1
    for key, value in expected.items():
        assert config_dask.get(key) == value, key
    assert set(expected) == {
        "worker-threads",
        "blas-threads",
        "worker-mmap-threshold-mb",
        "local-cluster",
        "dashboard-link",
        "chunk-target-mb",
        "retries",
        "svi-steps",
    }


def test_config_overridable_by_dask_config_set() -> None:
    import specufex_dask.config_dask as config_dask

    with dask.config.set({"specufex-dask.worker-threads": 4}):
        assert config_dask.get("worker-threads") == 4
        assert dask.config.get("specufex-dask.worker-threads") == 4
    assert config_dask.get("worker-threads") == 1


def test_config_overridable_by_environment(
    monkeypatch: pytest.MonkeyPatch, fresh_dask_config: None
) -> None:
    import specufex_dask.config_dask as config_dask

    monkeypatch.setenv("DASK_SPECUFEX_DASK__WORKER_THREADS", "3")
    monkeypatch.setenv("DASK_SPECUFEX_DASK__CHUNK_TARGET_MB", "64")
    dask.config.refresh()

    assert dask.config.get("specufex-dask.worker-threads") == 3
    assert config_dask.get("chunk-target-mb") == 64
    assert config_dask.get("retries") == 2


def test_config_dashboard_link_applied_to_distributed() -> None:
    import distributed  # noqa: F401  (registers distributed's config defaults)

    import specufex_dask.config_dask as config_dask

    template = "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status"
    original = dask.config.get("distributed.dashboard.link")

    assert config_dask.apply_dashboard_link() is None
    assert dask.config.get("distributed.dashboard.link") == original
    with dask.config.set(
        {
            "specufex-dask.dashboard-link": template,
            "distributed.dashboard.link": original,
        }
    ):
        assert config_dask.apply_dashboard_link() == template
        assert dask.config.get("distributed.dashboard.link") == template
    assert dask.config.get("distributed.dashboard.link") == original


def test_local_cluster_settings_name_distributeds_keys(
    monkeypatch: pytest.MonkeyPatch, fresh_dask_config: None
) -> None:
    import specufex_dask.config_dask as config_dask

    assert config_dask.local_cluster_settings() == {
        "distributed.worker.profile.interval": "50ms",
        "distributed.admin.system-monitor.interval": "2s",
        "distributed.admin.tick.interval": "1s",
    }
    # null leaves distributed's own setting; the environment reaches each key
    monkeypatch.setenv("DASK_SPECUFEX_DASK__LOCAL_CLUSTER__TICK_INTERVAL", "200ms")
    dask.config.refresh()
    with dask.config.set({"specufex-dask.local-cluster.profile-interval": None}):
        assert config_dask.local_cluster_settings() == {
            "distributed.admin.system-monitor.interval": "2s",
            "distributed.admin.tick.interval": "200ms",
        }
    with dask.config.set({"specufex-dask.local-cluster": None}):
        assert config_dask.local_cluster_settings() == {}


def test_local_cluster_freeze_heap_is_a_switch() -> None:
    import specufex_dask.config_dask as config_dask

    assert config_dask.local_cluster_freeze_heap() is True
    with dask.config.set({"specufex-dask.local-cluster.freeze-heap": None}):
        assert config_dask.local_cluster_freeze_heap() is False
    with dask.config.set({"specufex-dask.local-cluster.freeze-heap": "yes"}):
        with pytest.raises(
            ValueError, match=r"freeze-heap must be true or false; got 'yes'"
        ):
            config_dask.local_cluster_freeze_heap()


def test_svi_steps_is_direct_or_tasks() -> None:
    import specufex_dask.config_dask as config_dask

    assert config_dask.svi_steps() == "direct"
    with dask.config.set({"specufex-dask.svi-steps": "tasks"}):
        assert config_dask.svi_steps() == "tasks"
    with dask.config.set({"specufex-dask.svi-steps": "actors"}):
        with pytest.raises(ValueError) as info:
            config_dask.svi_steps()
    message = str(info.value)
    assert "specufex-dask.svi-steps must be 'direct' or 'tasks'; got 'actors'" in (
        message
    )
    assert "DASK_SPECUFEX_DASK__SVI_STEPS=direct" in message


@pytest.mark.parametrize("value", ["soon", 0, "-1s"])
def test_local_cluster_setting_that_is_no_duration_is_named(value) -> None:
    import specufex_dask.config_dask as config_dask

    with dask.config.set(
        {"specufex-dask.local-cluster.system-monitor-interval": value}
    ):
        with pytest.raises(ValueError) as info:
            config_dask.local_cluster_settings()
    message = str(info.value)
    assert "specufex-dask.local-cluster.system-monitor-interval" in message
    assert repr(value) in message and "'2s'" in message


# -- the compose cluster as local processes -------------------------------------


def _localize(command: list[str], scheduler_file: Path, workdir: Path) -> list[str]:
    """A compose command line made to run here: 127.0.0.1, free ports, a file."""
    local = [sys.executable, "-m", "dask", *command[1:]]
    if command[1] == "worker":
        local = [arg for arg in local if not arg.startswith("tcp://")]
        local += ["--host", "127.0.0.1", "--local-directory", str(workdir)]
    replacements = {
        "--host": "127.0.0.1",
        "--port": "0",
        "--dashboard-address": "127.0.0.1:0",
    }
    for i, arg in enumerate(local[:-1]):
        if arg in replacements:
            local[i + 1] = replacements[arg]
    if "--dashboard-address" not in local:
        local += ["--dashboard-address", "127.0.0.1:0"]
    return [*local, "--scheduler-file", str(scheduler_file)]


def _listening_hosts(pids: list[int]) -> set[str] | None:
    """Addresses on which these processes and their children listen.

    ``None`` where the platform does not let us look.
    """
    import psutil

    hosts = set()
    try:
        for pid in pids:
            parent = psutil.Process(pid)
            for process in [parent, *parent.children(recursive=True)]:
                connections = getattr(process, "net_connections", process.connections)
                for conn in connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        hosts.add(conn.laddr.ip)
    except psutil.AccessDenied:
        return None
    return hosts


@pytest.mark.cluster
def test_compose_commands_make_a_working_cluster(compose: dict, tmp_path: Path) -> None:
    from distributed import Client

    services = compose["services"]
    scheduler_file = tmp_path / "s.json"
    replicas = services["worker"]["deploy"]["replicas"]
    scheduler_cmd = _localize(_command(services["scheduler"]), scheduler_file, tmp_path)
    worker_cmd = _localize(_command(services["worker"]), scheduler_file, tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    processes: list[subprocess.Popen] = []
    logs = []
    client = None

    def start(command: list[str], name: str) -> subprocess.Popen:
        logs.append(open(tmp_path / f"{name}.log", "wb"))
        process = subprocess.Popen(
            command, stdout=logs[-1], stderr=subprocess.STDOUT, env=env
        )
        processes.append(process)
        return process

    try:
        # scheduler first, then the workers once it has written its file
        start(scheduler_cmd, "scheduler")
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            assert processes[0].poll() is None, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.2)
        assert scheduler_file.exists(), (tmp_path / "scheduler.log").read_text()

        for i in range(replicas):
            start(worker_cmd, f"worker-{i}")

        # the cluster answers, with every worker, on 127.0.0.1 only
        client = Client(scheduler_file=str(scheduler_file), timeout="30s")
        client.wait_for_workers(replicas, timeout=120)
        threads = client.nthreads()

        assert len(threads) == replicas == 2
        assert set(threads.values()) == {1}
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert all(address.startswith("tcp://127.0.0.1:") for address in threads)
        assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
        hosts = _listening_hosts([p.pid for p in processes])
        assert hosts is None or hosts == {"127.0.0.1"}
    finally:
        if client is not None:
            client.close()
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        for log in logs:
            log.close()
