"""The production deployment (`docker compose up`), checked statically: no Docker engine needed.

The compose file must be valid Compose, run only real `bnlab` commands, set only real settings,
and wire the services together the way design.md describes (migrate first, checkpoints shared by
the API and every worker, the GPU worker on queue `gpu` with an NVIDIA device reserved, and,
with `--profile objectstore`, checkpoints in a MinIO bucket instead of the shared volume).
"""

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from jsonschema import Draft7Validator
from sqlalchemy.engine import make_url

from bnlab.api.core.auth import is_open
from bnlab.cli import app
from bnlab.settings import Settings
from bnlab.vocabulary import Queue

REPO_ROOT = Path(__file__).parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
COMPOSE_SCHEMA = REPO_ROOT.parent / "shared/compose-spec/compose-spec.json"

# `${NAME}`, `${NAME:-default}`, `${NAME-default}` or `${NAME:?error}` (required): Compose's
# interpolation syntax.
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*)|:?\?(?P<error>[^}]*))?\}")
# What the person running `docker compose up` must set (compose stops with the error otherwise),
# and the value this test sets for each.
REQUIRED = {"BNLAB_API_TOKEN": "a-token-for-the-test"}


def load_compose() -> dict[str, Any]:
    """The compose file as Compose sees it: YAML anchors and merge keys resolved."""
    compose: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return compose


COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def interpolate(value: str, given: dict[str, str] | None = None) -> str:
    """Resolve `${NAME:-default}` to its default, as `docker compose up` does with NAME unset,
    and a required `${NAME:?error}` to the value in REQUIRED, as if the person had set it;
    a NAME in `given` to its value there, as if the person had set it (in .env)."""

    def default(match: re.Match[str]) -> str:
        if given and match["name"] in given:
            return given[match["name"]]
        if match["error"] is not None:
            if match["name"] not in REQUIRED:
                pytest.fail(f"{match[0]} is required: give the test a value in REQUIRED")
            return REQUIRED[match["name"]]
        if match["default"] is None:
            pytest.fail(f"{match[0]} has no default: `docker compose up` needs it set")
        return match["default"]

    return INTERPOLATION.sub(default, value)


def environment(service: dict[str, Any], given: dict[str, str] | None = None) -> dict[str, str]:
    """A service's environment (mapping or `KEY=value` list), interpolated to defaults (or to
    the values `given`)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: interpolate(str(value), given) for key, value in raw.items()}


def built_here(service: dict[str, Any]) -> bool:
    build = service.get("build")
    context = build.get("context") if isinstance(build, dict) else build
    return context in (".", "./")


def bnlab_services() -> list[str]:
    return [name for name, service in SERVICES.items() if built_here(service)]


def parse_bnlab_command(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse argv as the `bnlab` command line would: unknown commands, options or choices raise."""
    group = typer.main.get_command(app)  # the click group behind the typer app
    with group.make_context("bnlab", list(argv), resilient_parsing=False) as context:
        name, command, rest = group.resolve_command(context, list(argv))
        assert name is not None and command is not None
        with command.make_context(name, rest, parent=context) as command_context:
            return name, command_context.params


def workers() -> list[str]:
    return [name for name in bnlab_services() if SERVICES[name]["command"][0] == "worker"]


def queue_of(service_name: str) -> Queue:
    name, params = parse_bnlab_command(SERVICES[service_name]["command"])
    assert name == "worker"
    queue: Queue = params["queue"]  # as the CLI parsed it: one of the vocabulary's queues
    return queue


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source for each volume of a service (short or long syntax)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        mounts[target] = source
    return mounts


def dockerfile_instructions(name: str) -> list[str]:
    """The arguments of each Dockerfile instruction `name` (e.g. RUN), line continuations joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    pattern = re.compile(rf"^\s*{name}\s+(.*)$", re.IGNORECASE | re.MULTILINE)
    return [match.strip() for match in pattern.findall(text)]


def dockerfile_environment() -> dict[str, str]:
    env = {}
    for arguments in dockerfile_instructions("ENV"):
        for pair in shlex.split(arguments):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


# --- the file itself ---------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    if not COMPOSE_SCHEMA.exists():
        reason = f"Compose specification schema not found at {COMPOSE_SCHEMA}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; in CI the shared schema is expected")
        pytest.skip(reason)
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    errors = sorted(
        Draft7Validator(schema).iter_errors(COMPOSE), key=lambda error: list(map(str, error.path))
    )
    messages = [
        f"{'.'.join(map(str, error.path)) or '<root>'}: {error.message}" for error in errors
    ]
    assert not messages, "\n".join(messages)


# --- commands ----------------------------------------------------------------------------------


def test_there_are_services_built_from_the_repository() -> None:
    assert {"migrate", "api", "worker", "worker-gpu"} <= set(bnlab_services())


@pytest.mark.parametrize("service_name", bnlab_services())
def test_each_service_runs_a_real_bnlab_command(service_name: str) -> None:
    command = SERVICES[service_name].get("command")
    assert isinstance(command, list), f"{service_name}: command should be an exec-form list"
    parse_bnlab_command(command)  # raises a usage error on anything `bnlab` would reject


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["serve"], "No such command"),
        (["worker", "--queue", "tpu"], "'tpu' is not one of"),
        (["worker", "--threads", "2"], "No such option"),
        (["worker", "--concurrency", "0"], "greater than or equal to 1|not in the range"),
        (["api", "extra"], "unexpected extra argument"),
    ],
)
def test_command_check_rejects_what_bnlab_would_reject(argv: list[str], error: str) -> None:
    # typer may ship its own copy of click, so match the usage error by its message.
    with pytest.raises(Exception, match=error):
        parse_bnlab_command(argv)


# --- settings ----------------------------------------------------------------------------------


def test_every_bnlab_variable_is_a_setting() -> None:
    variables = {key for service in SERVICES.values() for key in environment(service)}
    variables |= set(dockerfile_environment())
    bnlab_variables = {key for key in variables if key.startswith("BNLAB_")}
    assert bnlab_variables, "no BNLAB_ variables found in docker-compose.yml or the Dockerfile"
    unknown = {
        key
        for key in bnlab_variables
        if key.removeprefix("BNLAB_").lower() not in Settings.model_fields
    }
    assert not unknown, f"not fields of bnlab.settings.Settings (silently ignored): {unknown}"


@pytest.mark.parametrize("service_name", bnlab_services())
def test_settings_from_the_compose_environment_point_at_the_servers(
    service_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith("BNLAB_"):
            monkeypatch.delenv(key)
    env = environment(SERVICES[service_name])
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    settings = Settings()

    database = make_url(settings.database_url)
    postgres = environment(SERVICES["postgres"])
    assert database.get_backend_name() == "postgresql"
    assert (database.host, database.port) == ("postgres", 5432)
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"]
    assert database.database == postgres["POSTGRES_DB"]

    broker = urlsplit(settings.broker_url)
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)
    assert "redis" in SERVICES

    assert settings.checkpoint_dir == env["BNLAB_CHECKPOINT_DIR"] == "/checkpoints"
    assert settings.data_dir == Path(env["BNLAB_DATA_DIR"])
    assert settings.host == "0.0.0.0"


def test_the_api_requires_a_token_and_its_healthcheck_needs_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = SERVICES["api"]["environment"]["BNLAB_API_TOKEN"]
    match = INTERPOLATION.fullmatch(raw)
    assert match is not None and match["error"], f"{raw}: compose must refuse to start without it"
    for key in list(os.environ):
        if key.startswith("BNLAB_"):
            monkeypatch.delenv(key)
    for key, value in environment(SERVICES["api"]).items():
        monkeypatch.setenv(key, value)
    token = Settings().api_token
    assert token is not None and token.get_secret_value() == REQUIRED["BNLAB_API_TOKEN"]
    assert is_open("/health")  # what the healthcheck asks for


# --- wiring ------------------------------------------------------------------------------------


def test_api_publishes_bnlab_port() -> None:
    api = SERVICES["api"]
    port = int(environment(api)["BNLAB_PORT"])
    published = [str(mapping).rsplit(":", 1)[-1] for mapping in api["ports"]]
    assert str(port) in published
    assert dockerfile_instructions("EXPOSE") == [str(port)]


def test_api_healthcheck_asks_for_health_on_bnlab_port() -> None:
    api = SERVICES["api"]
    port = environment(api)["BNLAB_PORT"]
    test = api["healthcheck"]["test"]
    command = " ".join(test) if isinstance(test, list) else test
    assert re.search(rf"//(127\.0\.0\.1|localhost):{port}/health\b", command), command


@pytest.mark.parametrize("service_name", ["api", *workers()])
def test_checkpoints_volume_is_mounted_at_the_checkpoint_dir(service_name: str) -> None:
    service = SERVICES[service_name]
    checkpoint_dir = environment(service)["BNLAB_CHECKPOINT_DIR"]
    assert volume_mounts(service).get(checkpoint_dir) == "checkpoints"
    assert "checkpoints" in COMPOSE["volumes"]


@pytest.mark.parametrize("service_name", ["api", *workers()])
def test_datasets_volume_is_mounted_at_the_data_dir(service_name: str) -> None:
    service = SERVICES[service_name]
    data_dir = environment(service)["BNLAB_DATA_DIR"]
    assert volume_mounts(service).get(data_dir) == "data"
    assert "data" in COMPOSE["volumes"]


def test_cpu_worker_starts_by_default_on_the_cpu_queue() -> None:
    assert queue_of("worker") == "cpu"
    assert not SERVICES["worker"].get("profiles")


def test_gpu_worker_takes_the_gpu_queue_with_an_nvidia_device() -> None:
    worker_gpu = SERVICES["worker-gpu"]
    assert queue_of("worker-gpu") == "gpu"
    assert worker_gpu.get("profiles") == ["gpu"]
    devices = worker_gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        device.get("driver") == "nvidia"
        and device.get("count") == 1
        and "gpu" in device.get("capabilities", [])
        for device in devices
    ), devices


# A worker stopped with SIGTERM hands its job back at the job's next sample point (500 batches
# apart by default) after saving its state; Docker's default grace is 10 s, then SIGKILL, which
# loses the work since the last sample point and counts as a lost worker.
HAND_BACK_SECONDS = 60
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def duration_seconds(value: str) -> float:
    """A Compose duration (`1m30s`, `90s`, `2m`) in seconds."""
    parts = DURATION_PART.findall(value)
    assert "".join(number + unit for number, unit in parts) == value, f"not a duration: {value}"
    return sum(float(number) * UNIT_SECONDS[unit] for number, unit in parts)


@pytest.mark.parametrize("service_name", workers())
def test_workers_are_given_time_to_hand_their_job_back_on_stop(service_name: str) -> None:
    grace = SERVICES[service_name].get("stop_grace_period")
    assert grace is not None, f"{service_name} gets Docker's 10 s, then SIGKILL"
    assert duration_seconds(str(grace)) >= HAND_BACK_SECONDS


@pytest.mark.parametrize("service_name", ["api", *workers()])
def test_migrate_completes_before_the_service_starts(service_name: str) -> None:
    depends_on = SERVICES[service_name]["depends_on"]
    assert depends_on["migrate"]["condition"] == "service_completed_successfully"
    assert depends_on["redis"]["condition"] == "service_healthy"


def test_migrate_runs_once_after_postgres_is_healthy() -> None:
    migrate = SERVICES["migrate"]
    assert parse_bnlab_command(migrate["command"])[0] == "migrate"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no"  # a finished migration must not be restarted


def test_servers_have_healthchecks() -> None:
    assert "pg_isready" in " ".join(SERVICES["postgres"]["healthcheck"]["test"])
    assert "ping" in " ".join(SERVICES["redis"]["healthcheck"]["test"])


# --- the image ---------------------------------------------------------------------------------


def test_dockerfile_installs_bnlab_and_runs_it_as_entrypoint() -> None:
    assert dockerfile_instructions("ENTRYPOINT") == ['["bnlab"]']
    assert dockerfile_instructions("CMD") == ['["api"]']
    installs = [run for run in dockerfile_instructions("RUN") if re.search(r"pip install\b", run)]
    assert any(re.search(r"pip install (--no-deps )?\.(\s|$)", run) for run in installs), installs


def test_dockerfile_runs_as_a_user_other_than_root() -> None:
    users = dockerfile_instructions("USER")
    assert users, "no USER instruction: the container would run as root"
    assert users[-1] not in ("root", "0")


# --- the object-store profile ------------------------------------------------------------------

# What README's "More machines" tells the person to put in .env for `--profile objectstore`.
OBJECT_STORE_ENV = {
    "BNLAB_CHECKPOINT_DIR": "s3://bnlab/checkpoints",
    "AWS_ENDPOINT_URL": "http://minio:9000",
    "AWS_ACCESS_KEY_ID": "bnlab-store",
    "AWS_SECRET_ACCESS_KEY": "a-secret-for-the-test",
}


def test_the_object_store_runs_only_with_its_profile() -> None:
    for name in ("minio", "minio-bucket"):
        assert SERVICES[name].get("profiles") == ["objectstore"], name
    bucket = SERVICES["minio-bucket"]
    assert bucket["depends_on"]["minio"]["condition"] == "service_healthy"
    assert bucket["restart"] == "no"  # it makes the bucket once, then exits


@pytest.mark.parametrize("service_name", ["api", *workers()])
def test_with_the_profile_checkpoints_go_to_the_bucket_it_makes(
    service_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(SERVICES[service_name], OBJECT_STORE_ENV)
    for key in list(os.environ):
        if key.startswith(("BNLAB_", "AWS_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    store = urlsplit(Settings().checkpoint_dir)
    made = environment(SERVICES["minio-bucket"], OBJECT_STORE_ENV)
    alias = urlsplit(made["MC_HOST_store"])
    command = SERVICES["minio-bucket"]["command"]
    assert command[0] == "mb" and f"store/{store.hostname}" in command
    endpoint = urlsplit(env["AWS_ENDPOINT_URL"])
    assert (endpoint.hostname, endpoint.port) == (alias.hostname, alias.port) == ("minio", 9000)
    assert ":9000" in SERVICES["minio"]["command"]
    # bnlab signs with MinIO's root user: the same two variables on both sides.
    minio = environment(SERVICES["minio"], OBJECT_STORE_ENV)
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    assert (alias.username, alias.password) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    # Optional: without the profile the service starts without waiting for a bucket.
    waits_for = SERVICES[service_name]["depends_on"]["minio-bucket"]
    assert waits_for == {"condition": "service_completed_successfully", "required": False}


@pytest.mark.parametrize("service_name", ["api", *workers()])
def test_without_the_profile_no_s3_setting_is_given(service_name: str) -> None:
    """Empty AWS_* values are what botocore ignores: the config chain (an IAM role, ~/.aws)
    still applies when the store is AWS's own."""
    env = environment(SERVICES[service_name])
    assert env["BNLAB_CHECKPOINT_DIR"] == "/checkpoints"
    assert env["AWS_ENDPOINT_URL"] == env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == ""
