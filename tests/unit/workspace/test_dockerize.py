"""`fx workspace dockerize`'s build context: files, Dockerfiles, wheel, secrets kept out, errors.

No Docker engine runs here, so these tests check the context that is written (and the commands
it names), never an image.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import fedrun
from fedrun.errors import WorkspaceError
from fedrun.plan.initialize import initialize_plan
from fedrun.workspace import dockerize
from fedrun.workspace.create import create_workspace
from fedrun.workspace.dockerize import (
    TORCH_CPU_INDEX,
    BuildContext,
    default_base_image,
    default_extra_index,
    default_tag,
    docker_engine,
    dockerize_workspace,
    fedrun_wheel,
    validate_tag,
)

KEY_MARKER = "AGGREGATOR-PRIVATE-KEY-MARKER-7f3a"
CERT_MARKER = "CERTIFICATE-MARKER-19be"
DATA_MARKER = "PATIENT-DATA-MARKER-c0d4"
VERSION = fedrun.__version__
WHEEL_NAME = f"fedrun-{VERSION}-py3-none-any.whl"


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _initialized_workspace(path: Path, template: str) -> Path:
    ws = create_workspace(path, template)
    initialize_plan(ws / "plan" / "plan.yaml", agg_addr="localhost")
    return ws


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this fedrun, built once from its source tree (the path dockerize takes)."""
    return fedrun_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialized torch/digits workspace holding keys, certificates and data."""
    ws = _initialized_workspace(tmp_path_factory.mktemp("ws") / "My Federation", "torch/digits")
    (ws / "cert" / "server").mkdir(parents=True)
    (ws / "cert" / "server" / "agg_localhost.key").write_text(KEY_MARKER)
    (ws / "cert" / "server" / "agg_localhost.crt").write_text(CERT_MARKER)
    (ws / "cert" / "cert_chain.crt").write_text(CERT_MARKER)
    (ws / "data" / "train.csv").write_text(DATA_MARKER)
    (ws / "src" / "forgotten.key").write_text(KEY_MARKER)
    (ws / "logs" / "aggregator.log").write_text(DATA_MARKER)
    return ws


@pytest.fixture(scope="module")
def context(workspace: Path, wheel: Path, tmp_path_factory: pytest.TempPathFactory):
    return dockerize_workspace(
        workspace, tmp_path_factory.mktemp("out") / "ctx", save=True, wheel=wheel
    )


@pytest.fixture(scope="module")
def enclave_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "enclave-key.pem"
    path.write_bytes(_pem(rsa.generate_private_key(public_exponent=3, key_size=3072)))
    return path


@pytest.fixture(scope="module")
def gramine_context(workspace, wheel, enclave_key, tmp_path_factory) -> BuildContext:
    return dockerize_workspace(
        workspace,
        tmp_path_factory.mktemp("out") / "sgx",
        gramine=True,
        enclave_key=enclave_key,
        tag="example_workspace",
        wheel=wheel,
    )


def _all_bytes(folder: Path) -> list[tuple[str, bytes]]:
    """Every file of the context, and every member of the zips in it."""
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        found.append((str(path), data))
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                found += [(f"{path}!{n}", zf.read(n)) for n in zf.namelist()]
    return found


def _copy_sources(dockerfile: str) -> list[str]:
    sources = []
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            words = [w for w in line.split()[1:] if not w.startswith("--")]
            sources += words[:-1]
    return sources


# ---------------------------------------------------------------------------- the files
def test_context_holds_the_expected_files(context):
    names = sorted(p.relative_to(context.folder).as_posix() for p in context.folder.rglob("*"))

    assert names == [
        ".dockerignore",
        "BUILD.md",
        "Dockerfile",
        "Dockerfile.base",
        "wheels",
        f"wheels/{WHEEL_NAME}",
        "workspace.zip",
    ]
    assert not any(p.name.endswith(".part") for p in context.folder.parent.iterdir())


def test_archive_holds_plan_code_and_model_but_no_keys_certificates_or_data(context):
    with zipfile.ZipFile(context.folder / "workspace.zip") as zf:
        names = zf.namelist()

    for needed in ("plan/plan.yaml", "src/taskrunner.py", "save/init.pbuf", "requirements.txt"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("cert/", "data/", "logs/")) and n[-1] != "/"]
    assert not [n for n in names if n.endswith((".key", ".crt", ".pem"))]
    for where, data in _all_bytes(context.folder):
        for marker in (KEY_MARKER, CERT_MARKER, DATA_MARKER):
            assert marker.encode() not in data, f"{marker} leaked into {where}"


def test_wheel_is_an_installable_wheel_of_this_fedrun(context, tmp_path):
    wheel = context.folder / "wheels" / WHEEL_NAME
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(f"fedrun-{VERSION}.dist-info/METADATA").decode()
        entry_points = zf.read(f"fedrun-{VERSION}.dist-info/entry_points.txt").decode()

    assert "fedrun/__init__.py" in names
    assert "fedrun/workspace/dockerize.py" in names
    assert "fedrun/plan/defaults/aggregator.yaml" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert re.search(r"^Name: fedrun$", meta, re.M)
    assert re.search(rf"^Version: {re.escape(VERSION)}$", meta, re.M)
    assert "fx = fedrun.cli.entry:run" in entry_points

    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
        + ["--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (target / "fedrun" / "__init__.py").read_text() == Path(fedrun.__file__).read_text()


def test_base_dockerfile_installs_the_wheel_on_the_python_image(context):
    text = (context.folder / "Dockerfile.base").read_text()

    assert (
        default_base_image() == f"python:{sys.version_info[0]}.{sys.version_info[1]}-slim-bookworm"
    )
    assert f"ARG BASE_IMAGE={default_base_image()}\nFROM $BASE_IMAGE\n" in text
    assert f"COPY --chown=fedrun:fedrun wheels/{WHEEL_NAME} /tmp/wheels/{WHEEL_NAME}" in text
    assert f"RUN pip install /tmp/wheels/{WHEEL_NAME}" in text
    assert "USER fedrun" in text


def test_workspace_dockerfile_imports_the_workspace_from_the_base_image(context):
    text = (context.folder / "Dockerfile").read_text()

    assert f"ARG FEDRUN_IMAGE=fedrun:{VERSION}\nFROM $FEDRUN_IMAGE AS workspace\n" in text
    assert "ARG PIP_INDEX_URL=https://pypi.org/simple\n" in text
    # the workspace needs torch, so the CPU-only index is the default extra index
    assert f"ARG PIP_EXTRA_INDEX_URL={TORCH_CPU_INDEX}\n" in text
    assert "RUN fx workspace import --archive /tmp/workspace.zip --no-install" in text
    assert "WORKDIR /home/fedrun/workspace\n" in text
    assert "pip install -r requirements.txt" in text
    assert "gramine" not in text.lower() and "--mount" not in text


def test_dockerignore_lets_only_the_copied_files_through(context):
    lines = [
        line
        for line in (context.folder / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]

    assert lines == ["*", "!workspace.zip", f"!wheels/{WHEEL_NAME}"]
    for name in ("Dockerfile.base", "Dockerfile"):
        for source in _copy_sources((context.folder / name).read_text()):
            assert f"!{source}" in lines, source
            assert (context.folder / source).is_file(), source


def test_commands_build_the_base_then_the_workspace_then_save(context):
    assert context.tag == "my-federation"
    assert context.commands() == [
        ["docker", "build", "-f", "Dockerfile.base", "-t", f"fedrun:{VERSION}", "."],
        ["docker", "build", "-t", "my-federation", "."],
        ["docker", "save", "-o", "my-federation.tar", "my-federation"],
    ]
    assert context.tarball == context.folder / "my-federation.tar"
    assert context.shell_lines()[0] == shlex.join(["cd", str(context.folder)])


def test_build_readme_has_the_commands_and_run_examples_with_mounted_certificates(context):
    text = (context.folder / "BUILD.md").read_text()

    for command in context.commands():
        assert shlex.join(command) in text
    aggregator, collaborator = dockerize.run_examples(context)
    assert aggregator in text and collaborator in text
    assert aggregator.endswith("my-federation fx aggregator start")
    assert collaborator.endswith("my-federation fx collaborator start -n NAME")
    cert = '--mount type=bind,source="$PWD/cert",target=/home/fedrun/workspace/cert,readonly'
    assert cert in aggregator and cert in collaborator
    assert "docker load -i my-federation.tar" not in text  # --save: the command is listed above


def test_options_reach_the_dockerfiles_and_commands(workspace, wheel, tmp_path):
    context = dockerize_workspace(
        workspace,
        tmp_path / "ctx",
        tag="registry:5000/team/fl:v1",
        base_image="ubuntu:24.04",
        wheel=wheel,
    )

    assert "ARG BASE_IMAGE=ubuntu:24.04\n" in (context.folder / "Dockerfile.base").read_text()
    assert context.commands() == [
        ["docker", "build", "-f", "Dockerfile.base", "-t", f"fedrun:{VERSION}", "."],
        ["docker", "build", "-t", "registry:5000/team/fl:v1", "."],
    ]
    text = (context.folder / "BUILD.md").read_text()
    assert "docker save -o fl-v1.tar registry:5000/team/fl:v1" in text  # shown, not run


def test_rebuild_builds_both_images_without_the_cache(workspace, wheel, tmp_path):
    # OpenFL's `fx workspace dockerize --rebuild` (click offered --no-build for it)
    context = dockerize_workspace(workspace, tmp_path / "ctx", wheel=wheel, rebuild=True)

    assert context.commands() == [
        ["docker", "build", "--no-cache", "-f", "Dockerfile.base", "-t", f"fedrun:{VERSION}", "."],
        ["docker", "build", "--no-cache", "-t", "my-federation", "."],
    ]
    assert "docker build --no-cache -t my-federation ." in (context.folder / "BUILD.md").read_text()


def test_default_output_is_the_docker_folder_of_the_workspace(wheel, tmp_path):
    ws = _initialized_workspace(tmp_path / "ws", "no-op")

    context = dockerize_workspace(ws, wheel=wheel)

    assert context.folder == ws / "docker"
    assert (ws / "docker" / "Dockerfile").is_file()


def test_docker_engine_is_none_without_docker_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))

    assert docker_engine() is None


# ---------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    ("folder", "tag"),
    [
        ("My Federation", "my-federation"),
        ("example_workspace", "example_workspace"),
        ("ws.v2", "ws.v2"),
        ("__odd--name__", "odd--name"),
        ("a-_b", "a-b"),
        ("Überfed", "uberfed"),
        ("!!!", "fedrun-workspace"),
    ],
)
def test_default_tag_is_a_valid_lower_case_name(folder, tag):
    assert default_tag(folder) == tag
    assert validate_tag(default_tag(folder)) == tag


@pytest.mark.parametrize("tag", ["My_Image", "ws:bad tag", "-ws", "ws:", "a..b", "ws/"])
def test_invalid_tag_is_refused_before_anything_is_written(workspace, tmp_path, tag):
    with pytest.raises(WorkspaceError) as caught:
        dockerize_workspace(workspace, tmp_path / "ctx", tag=tag)

    assert caught.value.code == "FX-WS-032"
    assert "--tag" in caught.value.fix
    assert not (tmp_path / "ctx").exists()


@pytest.mark.parametrize("image", ["python:3.11 slim", "", "python:3.11\nRUN rm -rf /"])
def test_invalid_base_image_is_refused_before_anything_is_written(workspace, tmp_path, image):
    with pytest.raises(WorkspaceError) as caught:
        dockerize_workspace(workspace, tmp_path / "ctx", base_image=image)

    assert caught.value.code == "FX-WS-032"
    assert default_base_image() in caught.value.fix
    assert not (tmp_path / "ctx").exists()


@pytest.mark.parametrize(
    ("requirements", "index"),
    [
        ("numpy==2.0\ntorch==2.3.0+cpu\n", TORCH_CPU_INDEX),
        ("Torch>=2.2\n", TORCH_CPU_INDEX),
        ("torchvision ; python_version>'3'\n", TORCH_CPU_INDEX),
        ("keras==3.5\n# torch is not needed\n", ""),
        ("torchmetrics==1.0\n", ""),
        ("", ""),
    ],
)
def test_extra_index_is_the_cpu_torch_index_only_for_torch(requirements, index):
    assert default_extra_index(requirements) == index


# ---------------------------------------------------------------------------- refusals
def test_a_folder_without_a_plan_is_not_a_workspace(tmp_path):
    with pytest.raises(WorkspaceError) as caught:
        dockerize_workspace(tmp_path, tmp_path / "ctx")

    assert caught.value.code == "FX-WS-030"
    assert "no plan/plan.yaml" in caught.value.message
    assert "fx workspace create" in caught.value.fix
    assert not (tmp_path / "ctx").exists()


def test_a_non_empty_output_folder_is_refused_and_kept(workspace, wheel, tmp_path):
    out = tmp_path / "ctx"
    out.mkdir()
    (out / "notes.txt").write_text("mine")

    with pytest.raises(WorkspaceError) as caught:
        dockerize_workspace(workspace, out, wheel=wheel)

    assert caught.value.code == "FX-WS-031"
    assert "not empty" in caught.value.message
    assert "--force" in caught.value.fix
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_force_rewrites_dockerize_files_and_keeps_the_others(workspace, wheel, tmp_path):
    out = tmp_path / "ctx"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "Dockerfile").write_text("old")

    context = dockerize_workspace(workspace, out, wheel=wheel, force=True)

    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "Dockerfile").read_text().startswith("# Image of the fedrun workspace")
    assert (out / "workspace.zip").is_file() and context.folder == out


@pytest.mark.parametrize("where", ["workspace", "parent"])
def test_the_workspace_itself_is_not_a_build_context(workspace, wheel, where):
    output = workspace if where == "workspace" else workspace.parent

    with pytest.raises(WorkspaceError) as caught:
        dockerize_workspace(workspace, output, wheel=wheel, force=True)

    assert caught.value.code == "FX-WS-031"
    assert "-o" in caught.value.fix
    assert not (workspace / "Dockerfile").exists()


def test_a_failure_leaves_no_half_written_context(wheel, tmp_path):
    ws = create_workspace(tmp_path / "ws", "no-op")  # never initialized: no save/init.pbuf

    with pytest.raises(WorkspaceError) as caught:
        dockerize_workspace(ws, tmp_path / "out" / "ctx", wheel=wheel)

    assert caught.value.code == "FX-WS-010"
    assert "fx plan initialize" in caught.value.fix
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------------------- the wheel
def test_a_wheel_that_is_not_fedrun_is_refused(workspace, tmp_path):
    fake = tmp_path / f"fedrun-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("other/__init__.py", "")

    with pytest.raises(WorkspaceError) as caught:
        dockerize_workspace(workspace, tmp_path / "ctx", wheel=fake)

    assert caught.value.code == "FX-WS-035"
    assert "not a fedrun wheel" in caught.value.message
    assert "--wheel" in caught.value.fix
    assert not (tmp_path / "ctx").exists()


def test_a_wheel_pip_cannot_install_by_its_name_is_refused(workspace, wheel, tmp_path):
    renamed = tmp_path / "fedrun.whl"
    renamed.write_bytes(wheel.read_bytes())

    with pytest.raises(WorkspaceError) as caught:
        dockerize_workspace(workspace, tmp_path / "ctx", wheel=renamed)

    assert caught.value.code == "FX-WS-035"
    assert f"fedrun-{VERSION}-py3-none-any.whl" in caught.value.message


def test_without_a_source_tree_the_wheel_comes_from_the_package_index(wheel, tmp_path, monkeypatch):
    # an index holding only this fedrun's wheel, and no pip configuration of this machine
    index = tmp_path / "index"
    index.mkdir()
    (index / wheel.name).write_bytes(wheel.read_bytes())
    monkeypatch.setattr(dockerize, "fedrun_source_tree", lambda: None)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))

    got = fedrun_wheel(tmp_path / "dest")

    assert got == tmp_path / "dest" / wheel.name
    assert got.read_bytes() == wheel.read_bytes()


def test_without_a_source_tree_or_index_the_error_names_the_fixes(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(dockerize, "fedrun_source_tree", lambda: None)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))

    with pytest.raises(WorkspaceError) as caught:
        fedrun_wheel(tmp_path / "dest")

    assert caught.value.code == "FX-WS-035"
    assert f"fedrun=={VERSION}" in caught.value.message
    assert "pip install -e" in caught.value.fix and "--wheel" in caught.value.fix


def test_the_source_tree_is_the_checkout_fedrun_runs_from():
    repo = Path(__file__).resolve().parents[3]
    if Path(fedrun.__file__).resolve().parents[1] != repo:
        pytest.skip("fedrun is not installed from this checkout")

    assert dockerize.fedrun_source_tree() == repo


# ---------------------------------------------------------------------------- Gramine
def test_gramine_needs_an_enclave_key(workspace, wheel, tmp_path):
    with pytest.raises(WorkspaceError) as caught:
        dockerize_workspace(workspace, tmp_path / "ctx", gramine=True, wheel=wheel)

    assert caught.value.code == "FX-WS-033"
    assert "--enclave-key" in caught.value.message
    assert "gramine-sgx-gen-private-key" in caught.value.fix
    assert not (tmp_path / "ctx").exists()


def test_a_missing_enclave_key_is_named(workspace, wheel, tmp_path):
    missing = tmp_path / "nowhere.pem"

    with pytest.raises(WorkspaceError) as caught:
        dockerize_workspace(
            workspace, tmp_path / "ctx", gramine=True, enclave_key=missing, wheel=wheel
        )

    assert caught.value.code == "FX-WS-033"
    assert str(missing) in caught.value.message and "does not exist" in caught.value.message


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), "(EC secp256r1)"),
        (
            lambda: rsa.generate_private_key(public_exponent=3, key_size=2048),
            "(RSA-2048, exponent 3)",
        ),
        (
            lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
            "(RSA-3072, exponent 65537)",
        ),
    ],
)
def test_a_key_sgx_cannot_sign_with_is_refused(workspace, wheel, tmp_path, make, kind):
    key = tmp_path / "key.pem"
    key.write_bytes(_pem(make()))

    with pytest.raises(WorkspaceError) as caught:
        dockerize_workspace(workspace, tmp_path / "ctx", gramine=True, enclave_key=key, wheel=wheel)

    assert caught.value.code == "FX-WS-034"
    assert kind in caught.value.message and "RSA-3072, exponent 3" in caught.value.message


def test_an_enclave_key_without_gramine_is_refused(workspace, enclave_key, tmp_path):
    with pytest.raises(WorkspaceError) as caught:
        dockerize_workspace(workspace, tmp_path / "ctx", enclave_key=enclave_key)

    assert caught.value.code == "FX-WS-033"
    assert "--gramine" in caught.value.fix


def test_gramine_manifest_is_toml_and_uses_only_defined_values(gramine_context):
    text = (gramine_context.folder / "fx.manifest.template").read_text()
    manifest = tomllib.loads(text)
    dockerfile = (gramine_context.folder / "Dockerfile").read_text()

    assert manifest["libos"]["entrypoint"] == "{{ entrypoint }}"
    assert manifest["loader"]["entrypoint"]["uri"] == "file:{{ gramine.libos }}"
    assert manifest["fs"]["start_dir"] == "{{ workspace }}"
    assert "file:{{ workspace }}/src/" in manifest["sgx"]["trusted_files"]
    assert "file:{{ workspace }}/cert/" in manifest["sgx"]["allowed_files"]
    assert isinstance(manifest["sgx"]["max_threads"], int)
    used = set(re.findall(r"\{\{\s*([a-z_]+)", text)) - {"gramine"}
    defined = set(re.findall(r"-D([a-z_]+)=", dockerfile))
    assert used and used <= defined, used - defined
    assert "-Dentrypoint=/opt/fedrun/bin/fx" in dockerfile


def test_gramine_stage_signs_with_the_key_as_a_build_secret(gramine_context, enclave_key):
    dockerfile = (gramine_context.folder / "Dockerfile").read_text()
    lines = (gramine_context.folder / ".dockerignore").read_text().splitlines()

    assert "FROM $FEDRUN_IMAGE AS workspace" in dockerfile
    assert "\nFROM workspace AS gramine\n" in dockerfile
    assert "RUN --mount=type=secret,id=enclave-key,required=true,uid=1000" in dockerfile
    assert "gramine-sgx-sign --manifest fx.manifest --output fx.manifest.sgx" in dockerfile
    assert "!fx.manifest.template" in lines
    for source in _copy_sources(dockerfile):
        assert f"!{source}" in lines, source
    assert gramine_context.commands()[1] == [
        "docker",
        "build",
        "--secret",
        f"id=enclave-key,src={enclave_key}",
        "-t",
        "example_workspace",
        ".",
    ]
    secret = enclave_key.read_bytes()
    body = secret.split(b"\n")[1]  # a line of the key itself
    for where, data in _all_bytes(gramine_context.folder):
        assert body not in data, f"the enclave key leaked into {where}"
    assert not [p for p in gramine_context.folder.rglob("*.pem")]


def test_gramine_readme_shows_enclave_runs(gramine_context):
    text = (gramine_context.folder / "BUILD.md").read_text()

    assert "example_workspace gramine-sgx fx aggregator start" in text
    assert "example_workspace gramine-sgx fx collaborator start -n NAME" in text
    assert "--device=/dev/sgx_enclave" in text
    assert "-v /var/run/aesmd/aesm.socket:/var/run/aesmd/aesm.socket" in text
