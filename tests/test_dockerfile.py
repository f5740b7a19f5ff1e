"""The container image: the Dockerfile lints clean, matches the exporter (port, version) and
the chart (numeric user), keeps secrets and build tools out, and what it would run works.

No Docker daemon is needed: the last tests replay the Dockerfile's own build and install
commands (read from the Dockerfile, not copied) into a clean virtualenv, then run the image's
ENTRYPOINT + CMD and HEALTHCHECK against a real database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import exporter
from exporter import cli
from exporter.config.settings import DEFAULT_PORT, parse_listen
from exporter.ops.schema_file import SQL_DIR
from tests.helm_support import REPO
from tests.helpers import require_tool

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
LISTEN_RE = re.compile(r"listening on (http://127\.0\.0\.1:(\d+))/metrics")


# ------------------------------------------------------------------ a small Dockerfile reader


@dataclass
class Instruction:
    keyword: str  # upper case, e.g. "RUN"
    flags: dict[str, str]  # --mount=..., --from=... (last one of a name wins)
    value: str  # the rest, continuation lines joined

    def exec_form(self) -> list[str]:
        parsed = json.loads(self.value)
        assert isinstance(parsed, list), f"{self.keyword} must use the exec (JSON) form"
        return [str(item) for item in parsed]


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.value):
                key, _, value = word.partition("=")
                env[key] = value
        return env


@dataclass
class Dockerfile:
    args: dict[str, str]  # ARGs declared before the first FROM, with their defaults
    stages: list[Stage]
    text: str

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def logical_lines(text: str) -> Iterator[str]:
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        yield current + line
        current = ""
    if current:
        yield current


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    text = path.read_text()
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        flags: dict[str, str] = {}
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        if keyword == "FROM":
            base, _, alias = rest.partition(" AS ") if " AS " in rest else rest.partition(" as ")
            stages.append(Stage(base.strip(), alias.strip() or str(len(stages))))
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, flags, rest))
    return Dockerfile(args, stages, text)


def resolve(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def mount_options(instruction: Instruction) -> dict[str, str]:
    return dict(part.split("=", 1) for part in instruction.flags.get("mount", "").split(","))


# ------------------------------------------------------------------ .dockerignore semantics


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((negated, _pattern_regex(pattern)))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            result = not negated
    return result


# ------------------------------------------------------------------ static checks


def test_hadolint_reports_nothing() -> None:
    hadolint = require_tool("hadolint")
    assert "hadolint ignore" not in DOCKERFILE.read_text(), "no inline rule suppressions"
    assert not (REPO / ".hadolint.yaml").exists() and not (REPO / ".hadolint.yml").exists()
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_base_image_is_pinned_to_a_release_and_digest() -> None:
    dockerfile = parse_dockerfile()
    assert len(dockerfile.stages) >= 2, "multi-stage: a builder and a slim runtime"
    for stage in dockerfile.stages:
        base = resolve(stage.base, dockerfile.args)
        assert re.fullmatch(r"python:3\.12\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base), (
            f"stage {stage.name} starts from an unpinned image: {base}"
        )


def test_exposed_port_is_the_exporters_default() -> None:
    final = parse_dockerfile().final
    (expose,) = final.all("EXPOSE")
    assert expose.value.split() == [str(DEFAULT_PORT)]
    # Without TW_EXPORTER_LISTEN the HEALTHCHECK probes the port the exporter listens on.
    healthcheck = final.all("HEALTHCHECK")[-1].value
    fallback = re.search(r"environ\.get\('TW_EXPORTER_LISTEN', '([^']*)'\)", healthcheck)
    assert fallback, f"the HEALTHCHECK no longer reads TW_EXPORTER_LISTEN: {healthcheck}"
    assert parse_listen(fallback.group(1))[1] == DEFAULT_PORT, fallback.group(0)


def test_runs_as_a_numeric_non_root_user() -> None:
    users = parse_dockerfile().final.all("USER")
    assert users, "the runtime stage must set USER"
    user = users[-1].value
    assert re.fullmatch(r"\d+:\d+", user), f"USER must be numeric uid:gid, got {user!r}"
    uid, gid = (int(part) for part in user.split(":"))
    assert (uid, gid) == (65532, 65532)  # the chart's runAsUser/runAsGroup


def test_entrypoint_and_cmd() -> None:
    final = parse_dockerfile().final
    assert final.all("ENTRYPOINT")[-1].exec_form() == ["tw-exporter"]
    assert final.all("CMD")[-1].exec_form() == ["run"]


def test_oci_labels() -> None:
    dockerfile = parse_dockerfile()
    labels: dict[str, str] = {}
    for instruction in dockerfile.final.all("LABEL"):
        for word in shlex.split(instruction.value):
            key, _, value = word.partition("=")
            labels[key] = value
    for key in ("title", "description", "version", "revision", "created", "source", "licenses"):
        assert f"org.opencontainers.image.{key}" in labels, key
    version_args = [i for i in dockerfile.final.all("ARG") if i.value.startswith("VERSION=")]
    assert [i.value for i in version_args] == [f"VERSION={exporter.__version__}"]
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    license_id = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    assert labels["org.opencontainers.image.licenses"] == license_id


def test_runtime_stage_holds_only_the_installed_wheel() -> None:
    dockerfile = parse_dockerfile()
    final = dockerfile.final
    assert not final.all("COPY") and not final.all("ADD"), "no source tree in the runtime image"
    (install,) = [i for i in final.all("RUN") if "pip install" in i.value]
    mount = mount_options(install)
    assert mount["type"] == "bind" and mount["from"] == dockerfile.stages[0].name
    for flag in ("--no-cache-dir", "--no-index"):
        assert flag in install.value
    assert ".whl" in install.value
    runs = " ".join(i.value for i in final.all("RUN"))
    for tool in ("apt-get", "gcc", "build-essential", "pip wheel", "python -m build"):
        assert tool not in runs, f"runtime stage must not use {tool}"
    builder_runs = " ".join(i.value for i in dockerfile.stages[0].all("RUN"))
    assert "pip wheel" in builder_runs or "python -m build" in builder_runs


def test_no_secret_or_dsn_is_baked_in() -> None:
    dockerfile = parse_dockerfile()
    for stage in dockerfile.stages:
        for instruction in stage.all("ENV") + stage.all("ARG"):
            assert not re.search(r"DSN|PASSWORD|SECRET|TOKEN", instruction.value, re.I), (
                instruction.value
            )
    assert "postgresql://" not in dockerfile.text and "postgres://" not in dockerfile.text


def test_dockerignore_keeps_the_context_to_what_the_build_copies() -> None:
    rules = dockerignore_rules()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_dockerfile.py",
        "benchmarks/run.py",
        ".pytest_cache/v/cache",
        ".mypy_cache/x.json",
        ".ruff_cache/x",
        "exporter/__pycache__/cli.cpython-312.pyc",
        "helm/tw-exporter/values.yaml",
        ".env",
        "dist/tw_exporter-0.1.0-py3-none-any.whl",
    ):
        assert ignored(path, rules), f"{path} must not be sent to the build"
    builder = parse_dockerfile().stages[0]
    for copy in builder.all("COPY"):
        *sources, _dest = shlex.split(copy.value)
        for source in sources:
            assert not ignored(source.rstrip("/"), rules), f"the build copies {source}"
            source_path = REPO / source
            files = source_path.rglob("*.py") if source_path.is_dir() else [source_path]
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                assert "__pycache__" in relative or not ignored(relative, rules), relative


# ------------------------------------------------------------------ what the image would run


@dataclass(frozen=True)
class Image:
    """The image's filesystem, replayed into a clean virtualenv."""

    venv: Path
    workdir: Path  # a directory outside the repository, like the container's /
    env: dict[str, str]  # the runtime stage's ENV, PATH pointing at the venv
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]


def _sh(command: str, *, cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        ["/bin/sh", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"`{command}` failed:\n{result.stdout}\n{result.stderr}"


def _copy_into(source: Path, dest: Path, rules: list[tuple[bool, re.Pattern[str]]]) -> None:
    files = [p for p in source.rglob("*") if p.is_file()] if source.is_dir() else [source]
    for file in files:
        relative = file.relative_to(REPO).as_posix()
        if ignored(relative, rules):
            continue
        target = dest / file.relative_to(source) if source.is_dir() else dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """Builder stage: COPY (through .dockerignore) + RUN exactly as written; runtime stage:
    its ENV and its install RUN, with the bind-mounted wheel directory mapped to a temp dir."""
    dockerfile = parse_dockerfile()
    builder, final = dockerfile.stages[0], dockerfile.final
    root = tmp_path_factory.mktemp("image-root")
    wheels = tmp_path_factory.mktemp("wheels")
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    base_env = {"PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(root)}
    (install,) = [i for i in final.all("RUN") if "mount" in i.flags]
    mount = mount_options(install)

    def host(path: str) -> Path:
        return root / path.lstrip("/")

    rules = dockerignore_rules()
    workdir = host("/")
    for instruction in builder.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = host(instruction.value)
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            # Docker semantics: a directory's contents go into dest; files go into dest/
            # when dest ends with "/" (or several sources are given), else become dest.
            *sources, dest = shlex.split(instruction.value)
            target = host(dest) if dest.startswith("/") else workdir / dest
            into_dir = dest.endswith("/") or len(sources) > 1
            for source in sources:
                path = REPO / source
                if path.is_dir():
                    _copy_into(path, target, rules)
                else:
                    _copy_into(path, target / path.name if into_dir else target, rules)
        elif instruction.keyword == "RUN":
            command = instruction.value.replace(mount["source"], str(wheels))
            _sh(command, cwd=workdir, env={**base_env, **builder.env()})
    assert list(wheels.glob("tw_exporter-*.whl")), "the builder stage built no wheel"

    runtime_env = {**base_env, **final.env()}
    _sh(install.value.replace(mount["target"], str(wheels)), cwd=root, env=runtime_env)
    healthcheck = final.all("HEALTHCHECK")[-1].value
    assert healthcheck.startswith("CMD ")
    return Image(
        venv=venv,
        workdir=root,
        env=runtime_env,
        entrypoint=final.all("ENTRYPOINT")[-1].exec_form(),
        cmd=final.all("CMD")[-1].exec_form(),
        healthcheck=json.loads(healthcheck.removeprefix("CMD ")),
    )


def _run(image: Image, argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=image.workdir,
        env={**image.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_image_holds_the_wheel_not_the_source(image: Image) -> None:
    result = _run(image, ["python", "-c", "import exporter; print(exporter.__file__)"])
    assert result.returncode == 0, result.stderr
    package = Path(result.stdout.strip()).parent
    assert package.is_relative_to(image.venv), result.stdout
    assert not (image.venv / "bin" / "pip").exists(), "pip is removed from the runtime"
    # Compiled at install time: a read-only root filesystem costs no start-up compilation.
    assert list((package / "__pycache__").glob("cli.*.pyc")), "bytecode was not compiled"


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_package_with_its_sql_files(image: Image) -> None:
    """``pip install`` puts nothing but ``exporter`` on sys.path (no ``tools``), and the SQL files
    that ``check``'s hint and the docs name are inside it."""
    (record,) = image.venv.glob("lib/python*/site-packages/tw_exporter-*.dist-info/RECORD")
    installed = {line.split(",")[0] for line in record.read_text().splitlines()}
    top_level = {
        path.split("/")[0]
        for path in installed
        if ".dist-info/" not in path and not path.startswith("../")  # bin/tw-exporter
    }
    assert top_level == {"exporter"}, sorted(top_level - {"exporter"})
    for name in ("schema.sql", "recommended-indexes.sql", "least-privilege.sql"):
        assert f"exporter/sql/{name}" in installed, name
        shipped = record.parent.parent / "exporter" / "sql" / name
        assert shipped.read_bytes() == (SQL_DIR / name).read_bytes(), name


@pytest.mark.slow
def test_a_plain_pip_install_of_the_repository_ships_only_the_exporter_package(
    tmp_path: Path,
) -> None:
    """``pip install .`` from a checkout (not the image's filtered context) adds no ``tools``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("tw_exporter-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"exporter"}
    assert "exporter/sql/schema.sql" in names and "exporter/monitoring/custom.py" in names


@pytest.mark.slow
def test_every_command_of_the_image_answers_help(image: Image) -> None:
    (commands,) = [
        action.choices
        for action in cli.build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    assert {"run", "check", "monitoring", "demo", "sample-data"} <= set(commands)
    for command in commands:
        result = _run(image, [*image.entrypoint, command, "--help"])
        assert result.returncode == 0, f"{command} --help:\n{result.stdout}{result.stderr}"
        assert result.stdout.startswith(f"usage: tw-exporter {command}"), result.stdout


@pytest.mark.slow
def test_the_image_writes_monitoring_for_an_example_queries_file(
    image: Image, tmp_path: Path
) -> None:
    example = REPO / "examples" / "queries" / "activity.yml"
    result = _run(
        image,
        [*image.entrypoint, "monitoring", "--queries-file", str(example), "--out", str(tmp_path)],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == ["custom-dashboard.json", "custom.rules.test.yml", "custom.rules.yml"]
    assert "tw_tweets_last_hour" in (tmp_path / "custom.rules.yml").read_text()


@pytest.mark.slow
def test_the_installed_generator_finds_the_repositorys_monitoring_current(image: Image) -> None:
    """The shipped rules and dashboard generator runs from the installed package alone."""
    result = _run(image, ["python", "-m", "exporter.monitoring", "--check", "--root", str(REPO)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_image_reports_its_version(image: Image) -> None:
    result = _run(image, [*image.entrypoint, "--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tw-exporter {exporter.__version__}"


@pytest.mark.slow
async def test_image_checks_and_serves_a_real_database(image: Image, seeded_db: str) -> None:
    check = await asyncio.to_thread(_run, image, [*image.entrypoint, "check", "--dsn", seeded_db])
    assert check.returncode == 0, check.stdout + check.stderr

    # ENTRYPOINT + CMD, configured the way a container is: environment only.
    proc = await asyncio.create_subprocess_exec(
        *image.entrypoint,
        *image.cmd,
        cwd=image.workdir,
        env={**image.env, "TW_EXPORTER_DSN": seeded_db, "TW_EXPORTER_LISTEN": "127.0.0.1:0"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    logs: list[str] = []
    drain: asyncio.Task[bytes] | None = None
    port = ""
    try:
        async with asyncio.timeout(30):
            while not (match := LISTEN_RE.search("".join(logs))):
                line = await proc.stderr.readline()
                assert line, "the exporter exited:\n" + "".join(logs)
                logs.append(line.decode())
        url, port = match.group(1), match.group(2)
        drain = asyncio.create_task(proc.stderr.read())

        async def metrics() -> str:
            def get() -> str:
                with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
                    return str(response.read().decode())

            return await asyncio.to_thread(get)

        for _ in range(150):  # the first collection cycle runs at start; allow 30 s
            body = await metrics()
            if re.search(r"^tw_up 1(\.0)?$", body, re.MULTILINE):
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail("tw_up never became 1:\n" + body)
        assert "tw_exporter_build_info" in body

        # The image's HEALTHCHECK finds the port through TW_EXPORTER_LISTEN.
        health = await asyncio.to_thread(
            _run, image, image.healthcheck, TW_EXPORTER_LISTEN=f"0.0.0.0:{port}"
        )
        assert health.returncode == 0, health.stderr
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            status = await proc.wait()
    assert status == 0, "SIGTERM must stop the exporter cleanly"
    assert drain is not None
    await drain
    unhealthy = await asyncio.to_thread(
        _run, image, image.healthcheck, TW_EXPORTER_LISTEN=f"0.0.0.0:{port}"
    )
    assert unhealthy.returncode != 0, "the healthcheck must fail once the exporter is gone"
