"""The Dockerfiles are correct by construction: no Docker engine runs here, so each is parsed with BuildKit's
own parser and checked against the repository (COPY sources, .dockerignore, pyproject, the CLI, the chart)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import dockerfile
import pytest
import yaml

from gorgon.cli import COMMANDS, build_parser

pytestmark = pytest.mark.processes


REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"api": REPO_ROOT / "Dockerfile.api", "worker": REPO_ROOT / "Dockerfile.worker"}
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
CHART_VALUES = yaml.safe_load((REPO_ROOT / "charts" / "gorgon" / "values.yaml").read_text())
# Wildcards BuildKit lets match nothing: the Medusa heads directory, absent until heads are shipped.
OPTIONAL_SOURCES = {"model[s]"}


@dataclass(frozen=True)
class Stage:
    name: str | None
    base: str
    commands: tuple[dockerfile.Command, ...]

    def all(self, instruction: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == instruction]

    def last(self, instruction: str) -> dockerfile.Command:
        found = self.all(instruction)
        assert found, f"stage {self.name or self.base} has no {instruction}"
        return found[-1]

    def run_text(self) -> str:
        return "\n".join(c.value[0] for c in self.all("RUN"))


def parse_stages(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults, and the build stages in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    current: list[dockerfile.Command] = []
    header: tuple[str | None, str] | None = None
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "FROM":
            if header is not None:
                stages.append(Stage(header[1], header[0], tuple(current)))
            words = command.value
            header = (words[0], words[2] if len(words) == 3 and words[1].upper() == "AS" else None)
            current = []
        elif header is None and command.cmd == "ARG":
            name, _, default = command.value[0].partition("=")
            global_args[name] = default.strip('"')
        else:
            current.append(command)
    assert header is not None, f"{path.name} has no FROM"
    stages.append(Stage(header[1], header[0], tuple(current)))
    return global_args, stages


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(.dockerignore) patterns as (excludes, regex), in order; the last matching pattern decides."""
    patterns = []
    for raw in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*", "\0").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace("\0/", "(.*/)?").replace("\0", ".*")
        patterns.append((not negated, re.compile(f"^{regex}$")))
    return patterns


def excluded_from_context(relative: str) -> bool:
    """Docker's rule: a pattern matching a path or any of its parent directories applies to it."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for excludes, pattern in dockerignore_patterns():
        if any(pattern.match(candidate) for candidate in candidates):
            excluded = excludes
    return excluded


def context_files(source: str) -> list[str]:
    root = REPO_ROOT / source
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    return [str(p.relative_to(REPO_ROOT)) for p in files]


def final_stage(name: str) -> Stage:
    return parse_stages(DOCKERFILES[name])[1][-1]


def build_arg_default(name: str, arg: str) -> str:
    global_args, _ = parse_stages(DOCKERFILES[name])
    declared = dict(global_args)
    for command in final_stage(name).all("ARG"):
        key, _, default = command.value[0].partition("=")
        declared[key] = default.strip('"')
    return declared[arg]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_copy_source_exists_and_is_in_the_build_context(name: str) -> None:
    _, stages = parse_stages(DOCKERFILES[name])
    stage_names = {stage.name for stage in stages}
    for stage in stages:
        for command in stage.all("COPY") + stage.all("ADD"):
            from_stage = next((f.split("=", 1)[1] for f in command.flags if f.startswith("--from=")), None)
            sources = command.value[:-1]
            if from_stage is not None:
                assert from_stage in stage_names, f"line {command.start_line}: no stage {from_stage}"
                continue
            for source in sources:
                if source in OPTIONAL_SOURCES:
                    continue
                assert (REPO_ROOT / source).exists(), f"{name} line {command.start_line}: {source} is missing"
                shipped = [f for f in context_files(source) if not excluded_from_context(f)]
                assert shipped, f"{name} line {command.start_line}: .dockerignore drops all of {source}"


def test_dockerignore_keeps_secrets_and_caches_out() -> None:
    for path in (
        ".env",
        ".venv/bin/python",
        ".git/config",
        "services/gorgon/__pycache__/cli.cpython-311.pyc",
    ):
        assert excluded_from_context(path), path
    assert not excluded_from_context("services/gorgon/cli.py")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_images_copy_every_package_the_build_finds(name: str) -> None:
    package_roots = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"]
    copied = {
        source
        for stage in parse_stages(DOCKERFILES[name])[1]
        for c in stage.all("COPY")
        for source in c.value[:-1]
    }
    assert {*package_roots, "pyproject.toml", PYPROJECT["project"]["readme"]} <= copied


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_image_runs_as_a_non_root_user(name: str) -> None:
    stage = final_stage(name)
    uid, _, gid = stage.last("USER").value[0].partition(":")
    assert uid.isdigit(), "a numeric uid lets Kubernetes' runAsNonRoot verify it"
    assert int(uid) != 0
    assert f"useradd --uid {uid} --gid {gid}" in stage.run_text()
    assert f"groupadd --gid {gid}" in stage.run_text()
    assert int(uid) == CHART_VALUES["podSecurityContext"]["runAsUser"]
    assert int(gid) == CHART_VALUES["podSecurityContext"]["runAsGroup"]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_entrypoint_and_default_command_are_a_real_gorgon_command(name: str) -> None:
    stage = final_stage(name)
    entrypoint, cmd = stage.last("ENTRYPOINT"), stage.last("CMD")
    assert entrypoint.json and cmd.json, "exec form, so the process gets SIGTERM for the drain"
    assert list(entrypoint.value) == ["gorgon"]
    assert PYPROJECT["project"]["scripts"]["gorgon"] == "gorgon.cli:main"
    assert tuple(cmd.value) in {words for words, _, _ in COMMANDS}
    assert callable(build_parser().parse_args(list(cmd.value)).run)
    assert cmd.value[0] == name


@pytest.mark.parametrize(("name", "component"), [("api", "api"), ("worker", "worker")])
def test_exposed_port_matches_the_chart(name: str, component: str) -> None:
    exposed = {int(p) for c in final_stage(name).all("EXPOSE") for p in c.value}
    assert CHART_VALUES[component]["port"] in exposed


def test_api_image_installs_no_extras_and_refuses_torch() -> None:
    assert build_arg_default("api", "EXTRAS") == ""
    run = final_stage("api").run_text()
    assert '"${wheel}${EXTRAS:+[${EXTRAS}]}"' in run
    assert "import torch" in run and "exit 1" in run


def test_operator_extra_used_for_the_operator_image_exists() -> None:
    assert "operator" in PYPROJECT["project"]["optional-dependencies"]
    assert "--build-arg EXTRAS=operator" in DOCKERFILES["api"].read_text()


def test_worker_image_builds_on_cuda_pytorch_of_the_pinned_version() -> None:
    base = build_arg_default("worker", "BASE_IMAGE")
    assert base.startswith("pytorch/pytorch:")
    assert "cuda" in base
    worker_extra = PYPROJECT["project"]["optional-dependencies"]["worker"]
    torch_pin = next(req for req in worker_extra if req.startswith("torch=="))
    tag = base.split(":")[1]
    assert re.fullmatch(re.escape(torch_pin.removeprefix("torch==")) + r"-cuda\d+\.\d+-cudnn\d+-runtime", tag)
    assert any(req.startswith("deepspeed") for req in worker_extra)
    assert '"${wheel}[worker]"' in final_stage("worker").run_text()


def test_worker_base_tag_names_where_it_was_checked_and_the_build_proves_cuda() -> None:
    base = build_arg_default("worker", "BASE_IMAGE")
    text = DOCKERFILES["worker"].read_text()
    assert "https://hub.docker.com/r/pytorch/pytorch/tags" in text
    assert base.split(":")[1] in text.split("ARG BASE_IMAGE")[0], "the comment above the tag names it"
    assert "assert torch.version.cuda" in final_stage("worker").run_text()


def test_worker_image_pip_may_install_into_the_base_system_python() -> None:
    for stage in parse_stages(DOCKERFILES["worker"])[1]:
        env = " ".join(" ".join(c.value) for c in stage.all("ENV"))
        assert re.search(r"PIP_BREAK_SYSTEM_PACKAGES\s*=?\s*1", env), stage.name


def test_worker_image_default_model_wheel_is_the_one_make_installs() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    pinned = re.search(r"^SMOLLM2_WHEEL := (\S+)$", makefile, flags=re.MULTILINE)
    assert pinned is not None
    assert build_arg_default("worker", "DEFAULT_MODEL_WHEEL") == pinned.group(1)


def test_worker_image_bakes_a_model_only_through_a_build_arg_and_a_secret() -> None:
    stage = final_stage("worker")
    assert build_arg_default("worker", "MODEL_ID") == ""
    bake = next(c for c in stage.all("RUN") if "snapshot_download" in c.value[0])
    assert "--mount=type=secret,id=hf_token,required=false" in bake.flags
    declared = {c.value[0].partition("=")[0] for c in stage.all("ARG")}
    assert not {arg for arg in declared if "TOKEN" in arg.upper()}, (
        "a token as build arg lands in the image history"
    )


def test_worker_image_points_the_default_model_at_the_heads_it_copies() -> None:
    from gorgon.engine.config import EngineSettings

    assert EngineSettings.model_config["env_prefix"] == "GORGON_ENGINE_"
    assert "default_model_heads_path" in EngineSettings.model_fields
    stage = final_stage("worker")
    env = " ".join(" ".join(c.value) for c in stage.all("ENV"))
    heads = re.search(r"GORGON_ENGINE_DEFAULT_MODEL_HEADS_PATH\s*=?\s*(\S+)", env)
    assert heads is not None
    _, stages = parse_stages(DOCKERFILES["worker"])
    build = next(s for s in stages if s.name == "build")
    assert [c.value for c in build.all("COPY") if c.value[0] == "model[s]"] == [("model[s]", "./models/")]
    copy = next(c for c in stage.all("COPY") if c.value[0] == "/src/models")
    assert "--from=build" in copy.flags
    assert heads.group(1).startswith(copy.value[-1].rstrip("/") + "/")
    shipped_heads = REPO_ROOT / "models" / Path(heads.group(1)).name
    default_heads = EngineSettings.model_fields["default_model_heads_path"].default
    assert shipped_heads.name == Path(default_heads).name, (
        "the image ships the heads the engine uses by default"
    )
    assert not re.search(r"GORGON_ENGINE_HEADS_PATH\b", env), "the shipped heads fit the default model only"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_shell_run_is_valid_posix_shell(name: str) -> None:
    for stage in parse_stages(DOCKERFILES[name])[1]:
        for command in stage.all("RUN"):
            if command.json:
                continue
            result = subprocess.run(
                ["sh", "-n", "-c", command.value[0]], capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, f"{name} line {command.start_line}: {result.stderr}"


@pytest.mark.parametrize(
    ("extras", "expected"),
    [("", "gorgon-0.1.0-py3-none-any.whl"), ("operator", "gorgon-0.1.0-py3-none-any.whl[operator]")],
)
def test_api_image_install_line_adds_extras_only_when_given(
    tmp_path: Path, extras: str, expected: str
) -> None:
    install = next(c.value[0] for c in final_stage("api").all("RUN") if "pip install" in c.value[0])
    (tmp_path / "gorgon-0.1.0-py3-none-any.whl").touch()
    pip_line = install.split("&&")[0:2]
    script = " && ".join(pip_line).replace("/wheels/", f"{tmp_path}/").replace("pip install", "printf '%s'")
    result = subprocess.run(
        ["sh", "-c", script],
        env={"EXTRAS": extras, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tmp_path}/{expected}"
