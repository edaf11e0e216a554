"""Running on a Ray cluster: deployment files (static), submission refusals, and for real
(slow) a two-node Ray cluster on 127.0.0.1 with a PostgreSQL-backed MLflow server.

Everything a slow test starts it stops by PID at the end, also on failure: the Ray nodes via
``clusters/local.sh stop`` (it TERMs the ``ray start --block`` processes it recorded), Postgres
and MLflow via the process groups these fixtures created. Never ``ray stop`` (it would stop
every Ray on the machine).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import require
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE_REPO = "registry.example.com/kdtune"


# =========================================================================== static: docker/
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker/compose.yaml").read_text())


def env_example() -> dict[str, str]:
    out = {}
    for line in (ROOT / "docker/.env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def _flag(command: list[str], name: str) -> str:
    vals = [c.split("=", 1)[1] for c in command if c.startswith(f"{name}=")]
    assert len(vals) == 1, f"{name} given {len(vals)} times in {command}"
    return vals[0]


def _var(s: str) -> str:
    """The variable a compose value interpolates: ``${NAME:?msg}`` → NAME."""
    m = re.fullmatch(r"\$\{([A-Z0-9_]+)[^}]*\}", s)
    assert m, f"{s!r} is not a ${{VAR}} reference"
    return m.group(1)


def test_compose_services_volumes_and_dependencies():
    c = compose()
    services = c["services"]
    assert {"postgres", "minio", "minio-init", "mlflow", "ray-head", "ray-worker"} <= set(services)
    declared = set(c.get("volumes") or {})
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"{name}: neither image nor build"
        for v in svc.get("volumes", []):
            src = v.split(":", 1)[0] if isinstance(v, str) else v.get("source")
            if not src.startswith(("/", ".", "~")):
                assert src in declared, f"{name}: named volume {src!r} is not declared"
        deps = svc.get("depends_on", {})
        for dep, cond in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s healthcheck: none"
    for name in ("postgres", "minio", "mlflow", "ray-head"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    # the bucket is made by a one-shot mc service that mlflow waits for
    init = services["minio-init"]
    assert "minio/mc" in init["image"] and init.get("restart") == "no"
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    # pinned images, and kdtune's tagged with the package version
    for name, svc in services.items():
        image = svc.get("image", "")
        assert image and not image.endswith(":latest") and ":" in image, f"{name}: unpinned {image!r}"
    assert services["mlflow"]["image"] == services["ray-head"]["image"] == f"kdtune:{VERSION}"
    assert services["ray-worker"]["image"] == f"kdtune:{VERSION}-cuda"
    assert services["ray-worker"]["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    for f in ("Dockerfile", "Dockerfile.cuda"):
        assert (ROOT / "docker" / f).is_file()


def test_compose_ports_only_on_loopback():
    published = 0
    for name, svc in compose()["services"].items():
        for p in svc.get("ports", []):
            published += 1
            if isinstance(p, dict):
                assert p.get("host_ip") == "127.0.0.1", f"{name}: {p} is not bound to 127.0.0.1"
            else:
                assert str(p).startswith("127.0.0.1:") and str(p).count(":") == 2, \
                    f"{name}: port {p!r} is not bound to 127.0.0.1"
    assert published >= 3  # MinIO, MLflow, Ray's Jobs API


def test_compose_wiring_is_consistent():
    c = compose()
    s = c["services"]
    pg_env = s["postgres"]["environment"]
    ml = s["mlflow"]
    cmd = ml["command"]
    # MLflow's backend is this Postgres: its service name, user, password and database
    backend = urlsplit(_flag(cmd, "--backend-store-uri"))
    assert backend.scheme.startswith("postgresql") and backend.hostname == "postgres"
    assert backend.port in (None, 5432)
    assert _var(backend.username) == _var(pg_env["POSTGRES_USER"])
    assert _var(backend.password) == _var(pg_env["POSTGRES_PASSWORD"])
    assert _var(backend.path.lstrip("/")) == _var(pg_env["POSTGRES_DB"])
    # artifacts go to the bucket minio-init creates, through the MinIO service
    dest = _flag(cmd, "--artifacts-destination")
    bucket = s["minio-init"]["environment"]["S3_BUCKET"]
    assert dest.startswith(f"s3://{bucket}/")
    assert "mc mb" in "".join(s["minio-init"]["command"]) and "$$S3_BUCKET" in "".join(s["minio-init"]["command"])
    minio_ports = {str(p).rsplit(":", 1)[-1] for p in s["minio"]["ports"]}
    for url in (ml["environment"]["MLFLOW_S3_ENDPOINT_URL"], s["ray-head"]["environment"]["AWS_ENDPOINT_URL"]):
        u = urlsplit(url)
        assert u.hostname == "minio" and str(u.port) in minio_ports
    assert ml["environment"]["AWS_ACCESS_KEY_ID"] == s["minio"]["environment"]["MINIO_ROOT_USER"]
    assert ml["environment"]["AWS_SECRET_ACCESS_KEY"] == s["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    # the Ray nodes log to this MLflow, whose --allowed-hosts answers that Host header
    port = _flag(cmd, "--port")
    for node in ("ray-head", "ray-worker"):
        u = urlsplit(s[node]["environment"]["MLFLOW_TRACKING_URI"])
        assert u.hostname == "mlflow" and str(u.port) == port
    allowed = _flag(cmd, "--allowed-hosts").split(",")
    assert "mlflow" in allowed and any(a in allowed for a in ("mlflow:*", f"mlflow:{port}"))
    assert "*" not in allowed
    # the worker joins the head's GCS port; the head and worker share the results volume
    head_port = re.search(r"--port=(\d+)", s["ray-head"]["command"]).group(1)
    assert f"--address=ray-head:{head_port}" in s["ray-worker"]["command"]
    assert "results:/results" in s["ray-head"]["volumes"] and "results:/results" in s["ray-worker"]["volumes"]


def test_compose_gpu_reservation_and_secrets():
    c = compose()
    devices = c["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert "deploy" not in c["services"]["ray-head"]  # trials belong on workers
    # every variable the file interpolates is in .env.example (or has a default), and back
    text = (ROOT / "docker/compose.yaml").read_text()
    refs = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)(:?[-?][^}]*)?\}", text))
    example = env_example()
    for name, rest in refs:
        assert name in example or rest.startswith((":-", "-")), f"${{{name}}} is not in .env.example"
    used = {n for n, _ in refs}
    assert set(example) <= used, f"unused in compose: {set(example) - used}"
    assert all("change-me" in example[k] for k in example if "PASSWORD" in k or "TOKEN" in k)
    assert ".env" in (ROOT / "docker/.gitignore").read_text().split()


# =========================================================================== static: clusters/
def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _gpus(container: dict) -> int:
    res = container.get("resources", {})
    return int(res.get("limits", {}).get("nvidia.com/gpu", 0))


def _check_raycluster_spec(spec: dict) -> None:
    import ray

    assert spec["rayVersion"].rsplit(".", 1)[0] == ray.__version__.rsplit(".", 1)[0]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus") == "0"
    for c in _containers(head["template"]):
        assert _gpus(c) == 0 and c["image"] == f"{IMAGE_REPO}:{VERSION}"
    groups = spec["workerGroupSpecs"]
    assert groups
    for g in groups:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        for c in _containers(g["template"]):
            assert _gpus(c) >= 1, f"worker group {g['groupName']} requests no nvidia.com/gpu"
            assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"]
            assert c["image"] == f"{IMAGE_REPO}:{VERSION}-cuda"


def test_kuberay_raycluster():
    docs = list(yaml.safe_load_all((ROOT / "clusters/kuberay/raycluster.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs}
    rc = by_kind["RayCluster"]
    assert rc["apiVersion"] == "ray.io/v1"
    _check_raycluster_spec(rc["spec"])
    claims = {v["persistentVolumeClaim"]["claimName"]
              for g in [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]
              for v in g["template"]["spec"].get("volumes", []) if "persistentVolumeClaim" in v}
    pvc = by_kind["PersistentVolumeClaim"]
    assert claims == {pvc["metadata"]["name"]} and pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_kuberay_rayjob_runs_a_valid_cluster_spec():
    from kdtune.cluster import check_cluster_spec
    from kdtune.spec import parse_spec

    docs = list(yaml.safe_load_all((ROOT / "clusters/kuberay/rayjob.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs}
    job = by_kind["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    _check_raycluster_spec(job["spec"]["rayClusterSpec"])
    entry = job["spec"]["entrypoint"].split()
    assert entry[:3] == ["kdtune", "sweep", "run"]
    # the spec file the entrypoint names is the ConfigMap mounted on the head
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == "spec")
    cm_name = next(v["configMap"]["name"] for v in head["volumes"] if v["name"] == "spec")
    cm = by_kind["ConfigMap"]
    assert cm["metadata"]["name"] == cm_name
    assert entry[3] == f"{mount['mountPath']}/spec.yaml" and "spec.yaml" in cm["data"]
    spec = parse_spec(yaml.safe_load(cm["data"]["spec.yaml"]))
    check_cluster_spec(spec)  # s3:// storage and an MLflow server: nothing local
    assert spec.resources.gpu > 0


def test_cluster_launcher_yaml():
    d = yaml.safe_load((ROOT / "clusters/aws-gpu.yaml").read_text())
    types = d["available_node_types"]
    head = types[d["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for n, t in types.items() if n != d["head_node_type"]]
    gpu = [t for t in workers if t["resources"].get("GPU", 0) >= 1]
    assert gpu, "no GPU worker type"
    for t in gpu:
        assert 0 <= t["min_workers"] <= t["max_workers"] <= d["max_workers"]
    assert d["docker"]["image"] == f"{IMAGE_REPO}:{VERSION}-cuda"
    assert d["provider"]["type"] == "aws" and d["setup_commands"]
    assert any("ray start --head" in c for c in d["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in d["worker_start_ray_commands"])


def test_local_sh_parses():
    script = ROOT / "clusters/local.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert os.access(script, os.X_OK)
    out = subprocess.run(["bash", str(script), "nonsense"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage" in out.stderr


def test_readmes_name_every_file():
    text = (ROOT / "clusters/README.md").read_text()
    for f in ("local.sh", "aws-gpu.yaml", "raycluster.yaml", "rayjob.yaml", "--shared-storage"):
        assert f in text
    text = (ROOT / "docker/README.md").read_text()
    for f in ("Dockerfile.cuda", "compose.yaml", ".env.example", "--allowed-hosts"):
        assert f in text


# =========================================================================== submission, no cluster
SPEC = """\
name: {name}
data: {{name: digits, val_fraction: 0.2, train_limit: {limit}}}
teacher: {{model: cnn4, epochs: 1}}
student: {{model: cnn_small, kwargs: {{width: 0.25}}}}
method: kd
epochs: {epochs}
search: {{algorithm: random, num_samples: {samples}, seed: 0}}
scheduler: {{type: none}}
resources: {{cpu: 1, gpu: {gpu}}}
storage: {storage}
tracking: {{uri: {uri}}}
"""


def write_spec(path: Path, *, name="cluster-e2e", storage="./results", uri="null", epochs=2,
               samples=4, limit=600, gpu=0.5) -> Path:
    path.write_text(SPEC.format(name=name, storage=storage, uri=uri, epochs=epochs,
                                samples=samples, limit=limit, gpu=gpu))
    return path


def cli(*args: str, env: dict | None = None):
    from typer.testing import CliRunner

    from kdtune.cli.app import app

    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


@pytest.mark.parametrize("storage, uri, extra, says", [
    ("s3://bucket/kd", "sqlite:///tmp/mlflow.db", [], "tracking.uri: 'sqlite:///tmp/mlflow.db' is local"),
    ("s3://bucket/kd", "null", [], "tracking.uri: 'sqlite:///"),  # the default: sqlite under storage
    ("s3://bucket/kd", "/srv/mlruns", [], "needs an MLflow server every node reaches"),
    ("./results", "http://mlflow.internal:5000", [], "storage: '"),
    ("file:///srv/results", "http://mlflow.internal:5000", [], "pass --shared-storage"),
    ("./results", "http://127.0.0.1:5000", ["--shared-storage"], "is this machine's loopback"),
])
def test_submit_refuses_what_cannot_run_on_nodes(tmp_path, monkeypatch, storage, uri, extra, says):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = write_spec(tmp_path / "spec.yaml", storage=storage, uri=uri)
    # nothing listens there: a refusal must come before any connection
    r = cli("sweep", "submit", str(spec), "--address", "http://10.255.255.1:8265", *extra)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], r.stderr
    assert "s3://" in lines[0] or "http://" in lines[0]  # it says what to set


def test_submit_needs_an_address(tmp_path, monkeypatch):
    for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    spec = write_spec(tmp_path / "spec.yaml", storage="s3://b/kd", uri="http://mlflow:5000")
    r = cli("sweep", "submit", str(spec))
    assert r.exit_code == 2 and "--address: set it (or RAY_ADDRESS)" in r.stderr
    r = cli("sweep", "status", "some-id", "--address", "127.0.0.1:6379")
    assert r.exit_code == 2 and "GCS address" in r.stderr


def test_unreachable_cluster_exits_1(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", storage="s3://b/kd", uri="http://mlflow:5000")
    port = free_port()  # nobody listens
    r = cli("sweep", "submit", str(spec), "--address", f"http://127.0.0.1:{port}")
    assert r.exit_code == 1 and "cannot reach the Ray Jobs API" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_staged_job_carries_the_resolved_spec(tmp_path, monkeypatch):
    from kdtune import cluster
    from kdtune.checks import load_spec
    from kdtune.spec.paths import spaces_dir

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    own = tmp_path / "my_space.yaml"
    shutil.copy(spaces_dir() / "kd.yaml", own)
    spec = load_spec(write_spec(tmp_path / "spec.yaml", storage="s3://b/kd"),
                     [f"search.space={own}"])
    work = tmp_path / "job"
    work.mkdir()
    cluster.stage_job(spec, work)
    shipped = yaml.safe_load((work / "spec.yaml").read_text())
    assert shipped["tracking"]["uri"] == "http://mlflow:5000"  # pinned: what was checked
    assert shipped["search"]["space"] == cluster.OWN_SPACE and (work / cluster.OWN_SPACE).is_file()
    assert sorted(p.name for p in (work / "search_spaces").glob("*.yaml")) == \
        sorted(p.name for p in spaces_dir().glob("*.yaml"))
    env = cluster.runtime_env(work, env={"A": "1"}, ship_source=True)
    assert env["working_dir"] == str(work) and env["env_vars"] == {"A": "1"}
    assert Path(env["py_modules"][0]).name == "kdtune"
    assert cluster.entrypoint() == 'KDTUNE_SPACES="$PWD/search_spaces" kdtune sweep run spec.yaml'
    # the shipped spec loads as the job will load it: from the working dir
    monkeypatch.chdir(work)
    monkeypatch.setenv("KDTUNE_SPACES", str(work / "search_spaces"))
    again = load_spec("spec.yaml")
    assert again.search.space == str(work / cluster.OWN_SPACE)
    assert again.model_dump(exclude={"search", "tracking"}) == spec.model_dump(exclude={"search", "tracking"})


# =========================================================================== the real cluster
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, fn, timeout: float, every: float = 1.0, proc=None, log=None):
    """Poll fn until truthy; give up at once if proc (the server being waited for) died."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = Path(log).read_text()[-3000:] if log else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail}")
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(every)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s (last error: {last})")


def _end_group(proc: subprocess.Popen, sig=signal.SIGTERM, wait: float = 20) -> None:
    """Stop a process this file started in its own session, and its children."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def node_env() -> dict[str, str]:
    """The environment the Ray nodes (and so the job's entrypoint) run with: this venv first."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true",
               RAY=str(BIN / "ray"), PYTHON=sys.executable)
    for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "KDTUNE_SPACES"):
        env.pop(k, None)
    return env


@pytest.fixture(scope="module")
def shared_dir():
    d = Path(tempfile.mkdtemp(prefix="kdtc-", dir="/tmp"))  # short: Ray's socket paths < 108 bytes
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_boot(shared_dir):
    """Starts a head and a worker node on 127.0.0.1 (1 CPU, 1 fake GPU each) with
    clusters/local.sh in the background: Ray boots (~1 min on 2 cores) while the MLflow stack
    starts. ``ray_cluster`` waits for it."""
    d = shared_dir / "ray"
    dash = free_port()
    script = ROOT / "clusters/local.sh"
    env = node_env()
    log = open(shared_dir / "local-sh.log", "w")
    proc = subprocess.Popen(["bash", str(script), "start", "--dir", str(d), "--cpus", "1",
                             "--gpus", "1", "--port", str(free_port()), "--dashboard-port", str(dash)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc, f"http://127.0.0.1:{dash}"
    finally:
        try:
            proc.wait(240)  # a start still under way finishes (or cleans up after itself) first
        finally:
            subprocess.run(["bash", str(script), "stop", "--dir", str(d)], env=env, timeout=120)
            for pid_file in d.glob("*.pid"):  # if stop itself failed: the recorded process groups
                try:
                    os.killpg(int(pid_file.read_text()), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            log.close()


@pytest.fixture(scope="module")
def ray_cluster(ray_boot, shared_dir) -> str:
    """The Jobs API address of the two-node cluster, once both nodes are up."""
    proc, address = ray_boot
    rc = proc.wait(240)
    assert rc == 0, (shared_dir / "local-sh.log").read_text()[-3000:]
    return address


def _pg_bin() -> Path | None:
    cands = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if cands:
        return cands[-1].parent
    which = shutil.which("initdb")
    return Path(which).resolve().parent if which else None


@pytest.fixture(scope="module")
def postgres(shared_dir):
    """A throwaway PostgreSQL on 127.0.0.1 (as the `postgres` user when run as root)."""
    pg = _pg_bin()
    require(pg is not None, "PostgreSQL is not installed (scripts/install.sh installs it as root)")
    require(importlib.util.find_spec("psycopg2") is not None, "psycopg2 is not installed")
    import psycopg2

    root = shared_dir / "pg"
    root.mkdir()
    as_user = {}
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chmod(shared_dir, 0o755)
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    secret = "kdtune-test"
    pwfile = root / "pw"
    pwfile.write_text(secret + "\n")
    if as_user:
        os.chown(pwfile, as_user["user"], as_user["group"])
    subprocess.run([str(pg / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--no-locale",
                    "-E", "UTF8", "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync"],
                   check=True, capture_output=True, timeout=120, **as_user)
    port = free_port()
    log = open(root / "postgres.log", "w")
    proc = subprocess.Popen([str(pg / "postgres"), "-D", str(root / "data"), "-p", str(port),
                             "-k", str(root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **as_user)
    try:
        def connect(db="postgres", user="postgres", password=secret):
            return psycopg2.connect(host="127.0.0.1", port=port, dbname=db, user=user,
                                    password=password, connect_timeout=3)

        wait_until("postgres", lambda: connect().close() or True, 60, proc=proc,
                   log=root / "postgres.log")
        conn = connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE ROLE mlflow LOGIN PASSWORD 'mlflow-pw'")
            cur.execute("CREATE DATABASE mlflow OWNER mlflow")
        conn.close()
        # +psycopg2: SQLAlchemy 2.1's default Postgres driver is psycopg 3, which `server` lacks
        yield {"uri": f"postgresql+psycopg2://mlflow:mlflow-pw@127.0.0.1:{port}/mlflow",
               "connect": lambda: connect("mlflow", "mlflow", "mlflow-pw")}
    finally:
        _end_group(proc, signal.SIGINT)  # SIGINT: postgres' fast shutdown
        log.close()


@pytest.fixture(scope="module")
def mlflow_server(shared_dir, postgres):
    port = free_port()
    arts = shared_dir / "mlartifacts"
    log = open(shared_dir / "mlflow.log", "w")
    env = node_env()
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", postgres["uri"],
                             "--artifacts-destination", arts.as_uri(), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy():
            with urllib.request.urlopen(f"{url}/health", timeout=3) as r:
                return r.status == 200
        wait_until("mlflow server", healthy, 180, every=2, proc=proc, log=shared_dir / "mlflow.log")
        yield {"url": url, "db": postgres["connect"]}
    finally:
        _end_group(proc)
        log.close()


def kdtune(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "kdtune"), *args], capture_output=True, text=True,
                          env=node_env(), timeout=timeout)


def _ray_job_id(address: str, submission_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address).get_job_info(submission_id).job_id


def _trial_actors(address: str, job_hex: str) -> list:
    from ray.util.state import list_actors

    actors = list_actors(address=address, filters=[("job_id", "=", job_hex)], detail=True,
                         limit=1000, raise_on_missing_output=False)
    return [a for a in actors if a.placement_group_id]  # Tune runs every trial in a placement group


@pytest.mark.slow
def test_local_cluster_listens_on_loopback_only(ray_cluster, shared_dir):
    """Every TCP socket of every process of both nodes clusters/local.sh started (GCS,
    raylets, agents, dashboard, workers) is on 127.0.0.1 (issue 9; Ray 2.60 would otherwise
    turn `--node-ip-address=127.0.0.1` into the machine's outward address)."""
    import psutil

    pids: set[int] = set()
    for f in (shared_dir / "ray").glob("*.pid"):
        node = psutil.Process(int(f.read_text()))
        pids |= {node.pid, *(c.pid for c in node.children(recursive=True))}
    socks = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
             if c.status == psutil.CONN_LISTEN and c.pid in pids}
    assert len(socks) > 8, socks  # two nodes' worth of servers were found
    assert {ip for ip, _ in socks} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, socks


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_submit_wait_runs_trials_on_both_nodes_into_postgres_mlflow(ray_boot, mlflow_server, ray_cluster,
                                                                     shared_dir):
    from ray.util.state import list_nodes

    # CPU trials (1 CPU a node), so the teacher-output cache, built on the driver's device type,
    # serves them. Trials of ~30 s: with 1-epoch (~1 s) and 100-epoch (~9 s) trials the head's
    # actor ran all four while the worker's actor was still being created (21 s under load;
    # Tune hands a pending trial to whichever actor is free), so no trial showed the worker
    # node reading the cache.
    spec = write_spec(shared_dir / "spec.yaml", name="cluster-e2e", storage=str(shared_dir / "storage"),
                      uri=mlflow_server["url"], epochs=300, gpu=0)
    r = kdtune("sweep", "submit", str(spec), "--address", ray_cluster, "--shared-storage", "--wait")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    job_id = r.stdout.splitlines()[0].strip()
    assert job_id.startswith("kdtune-cluster-e2e-") and "SUCCEEDED" in r.stderr
    assert "best:" in r.stdout  # the driver's log was streamed

    st = kdtune("sweep", "status", job_id, "--address", ray_cluster)
    assert st.returncode == 0 and st.stdout.split()[:2] == [job_id, "SUCCEEDED"]
    logs = kdtune("sweep", "logs", job_id, "--address", ray_cluster)
    assert logs.returncode == 0 and "best:" in logs.stdout

    # trials ran on both nodes: each trial runs in a Tune actor; the cluster records its node
    alive = [n for n in list_nodes(address=ray_cluster, detail=True) if n.state == "ALIVE"]
    nodes = {n.node_id for n in alive}
    assert len(nodes) == 2
    workers = {n.node_id for n in alive if not n.is_head_node}
    actors = _trial_actors(ray_cluster, _ray_job_id(ray_cluster, job_id))
    assert {a.node_id for a in actors} == nodes, [(a.class_name, a.node_id) for a in actors]

    # results on the shared storage
    run_dir = shared_dir / "storage" / "cluster-e2e"
    assert (run_dir / "best.yaml").is_file()

    # every trial is a child run with its checkpoint, in the Postgres-backed MLflow server
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=mlflow_server["url"])
    exp = c.get_experiment_by_name("cluster-e2e")
    runs = c.search_runs([exp.experiment_id], max_results=100)
    parents = [x for x in runs if x.data.tags.get("kdtune.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 4
    for ch in children:
        assert ch.info.status == "FINISHED"
        assert "val_acc" in ch.data.metrics
        files = [f.path for f in c.list_artifacts(ch.info.run_id, "checkpoint")]
        assert "checkpoint/checkpoint.pt" in files, (ch.info.run_name, files)
        # the teacher-output cache served it, wherever it ran (no live teacher)
        assert ch.data.tags.get("kdtune.teacher_cache") == "true", (ch.info.run_name, ch.data.tags)
    tagged = {ch.data.tags.get("kdtune.node_id") for ch in children}
    assert tagged and tagged <= nodes, (tagged, nodes)  # each trial records the node it ran on
    # a KD trial on the worker node (not the driver's) read the sweep's teacher-output cache
    assert tagged & workers, (tagged, workers)
    assert "live teacher" not in r.stdout + r.stderr + logs.stdout
    conn = mlflow_server["db"]()
    try:
        with conn.cursor() as cur:  # the same runs, read from PostgreSQL itself
            cur.execute("SELECT count(*) FROM runs WHERE experiment_id = %s", (int(exp.experiment_id),))
            assert cur.fetchone()[0] == len(runs)
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_stop_ends_a_running_sweep(ray_boot, mlflow_server, ray_cluster, shared_dir):
    spec = write_spec(shared_dir / "long.yaml", name="cluster-long", storage=str(shared_dir / "storage"),
                      uri=mlflow_server["url"], epochs=200, samples=50)  # the same teacher: cached
    r = kdtune("sweep", "submit", str(spec), "--address", ray_cluster, "--shared-storage")
    assert r.returncode == 0, r.stderr[-3000:]
    job_id = r.stdout.strip().splitlines()[-1]

    def trials_running():
        actors = _trial_actors(ray_cluster, _ray_job_id(ray_cluster, job_id))
        return any(a.state == "ALIVE" for a in actors)
    wait_until("a running trial", trials_running, 240, every=3)

    s = kdtune("sweep", "stop", job_id, "--address", ray_cluster)
    assert s.returncode == 0 and s.stdout.split()[:2] == [job_id, "STOPPED"], s.stdout + s.stderr
    st = kdtune("sweep", "status", job_id, "--address", ray_cluster)
    assert st.stdout.split()[:2] == [job_id, "STOPPED"]
    # its trials end with it: no actor of the job stays alive
    wait_until("the job's actors to exit", lambda: not trials_running(), 60, every=2)
