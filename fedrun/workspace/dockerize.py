"""The container build context of a workspace: what ``fx workspace dockerize`` writes.

A build context is one folder holding everything ``docker build`` needs and nothing secret::

    workspace.zip            the exported workspace (plan, src, requirements, initial model),
                             made by fedrun.workspace.archive: never keys, certificates or data
    wheels/fedrun-*.whl      a wheel of the running fedrun (built from its source tree, or
                             downloaded from the package index when fedrun came from there)
    Dockerfile.base          fedrun itself on a Python image; tagged fedrun:<version>
    Dockerfile               the workspace image, FROM fedrun:<version>
    fx.manifest.template     (--gramine) the Gramine manifest the Dockerfile renders and signs
    .dockerignore            lets only the files above reach the Docker engine
    BUILD.md                 the exact commands to build, save and run the images

Keys, certificates and data are mounted into the containers at run time (BUILD.md shows how).
With ``--gramine`` the enclave signing key reaches ``docker build`` as a BuildKit secret: it is
read by the one ``RUN gramine-sgx-sign`` step and never copied into the context or the image.

Error codes (all :class:`fedrun.errors.WorkspaceError`, exit code 3):

==========  ==================================================================================
FX-WS-030   the folder is not a workspace (no plan/plan.yaml)
FX-WS-031   the output folder is not empty (no --force), is a file, or is the workspace itself
FX-WS-032   the image tag (or --base-image) is not a valid Docker image name
FX-WS-033   --gramine without an enclave key, a key path that does not exist, or a key given
            without --gramine
FX-WS-034   the enclave key is not an unencrypted RSA-3072 key with public exponent 3
FX-WS-035   no wheel of the running fedrun could be built, downloaded or read
FX-WS-036   a docker command failed (the build context is kept)
==========  ==================================================================================
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from fedrun.errors import WorkspaceError
from fedrun.workspace.archive import export_workspace

#: the build context's folder inside the workspace when no --output is given
CONTEXT_DIR = "docker"
ARCHIVE_NAME = "workspace.zip"
WHEEL_DIR = "wheels"
MANIFEST_TEMPLATE = "fx.manifest.template"
#: where things live inside the images
IMAGE_USER = "fedrun"
IMAGE_UID = 1000
IMAGE_HOME = "/home/fedrun"
IMAGE_WORKSPACE = f"{IMAGE_HOME}/workspace"
IMAGE_VENV = "/opt/fedrun"
#: package indexes the workspace image's requirements come from
PYPI_INDEX = "https://pypi.org/simple"
#: CPU-only torch wheels; the default index's torch is a multi-GB CUDA build
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_PACKAGES = frozenset({"torch", "torchvision", "torchaudio"})
#: BuildKit secret id under which `docker build` passes the enclave signing key
ENCLAVE_KEY_SECRET = "enclave-key"
#: SGX signs enclaves with RSA-3072, public exponent 3 (fixed by the hardware's SIGSTRUCT)
SGX_KEY_BITS = 3072
SGX_KEY_EXPONENT = 3
FALLBACK_TAG = "fedrun-workspace"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
_REFERENCE = re.compile(
    rf"(?:{_DOMAIN}(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
)
_TAG_FIX = (
    "pass --tag NAME[:TAG] with lower-case letters, digits and single '.', '_' or '-' between "
    "them in NAME (e.g. --tag my-federation:v1)"
)


# ------------------------------------------------------------------------------- image names
def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid Docker image reference ``[registry/]name[:tag]``."""
    name = tag.rsplit(":", 1)[0] if ":" in tag.rsplit("/", 1)[-1] else tag
    if len(name) > 255 or not _REFERENCE.fullmatch(tag):
        raise WorkspaceError("FX-WS-032", f"{tag!r} is not a valid Docker image name", _TAG_FIX)
    return tag


def default_tag(folder_name: str) -> str:
    """The workspace image's name for a workspace folder: lower-cased, a valid Docker name."""
    ascii_name = unicodedata.normalize("NFKD", folder_name).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9._-]+", "-", ascii_name.lower())

    def separator(match: re.Match[str]) -> str:
        run = match.group(0)
        return run if run == "__" or set(run) == {"-"} else "-"

    text = re.sub(r"[._-]{2,}", separator, text).strip("._-")[:128].strip("._-")
    return text if text and _REFERENCE.fullmatch(text) else FALLBACK_TAG


def validate_base_image(image: str) -> str:
    """Return ``image`` if it can stand in ``FROM``: ``name[:tag][@digest]``, no spaces."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*", image):
        raise WorkspaceError(
            "FX-WS-032",
            f"--base-image {image!r} is not a Docker image name",
            f"pass an image such as {default_base_image()} (a Python 3.10-3.13 image with venv)",
        )
    return image


def tarball_name(tag: str) -> str:
    """File name ``docker save`` writes the workspace image to: ``<name>[-<tag>].tar``."""
    return tag.rsplit("/", 1)[-1].replace(":", "-") + ".tar"


def default_base_image() -> str:
    """The Python image Dockerfile.base starts from: this interpreter's version, Debian slim.

    The workspace's requirements are pinned from this environment, so the image's Python
    matches it. Debian 12 (bookworm) is named explicitly so rebuilds get the same system, and
    because Gramine publishes packages for it.
    """
    return f"python:{sys.version_info.major}.{sys.version_info.minor}-slim-bookworm"


def fedrun_version() -> str:
    """Version of the running fedrun (its installed metadata, else ``fedrun.__version__``)."""
    try:
        return metadata.version("fedrun")
    except metadata.PackageNotFoundError:
        from fedrun import __version__

        return __version__


def base_tag(version: str) -> str:
    """Tag of the fedrun base image built from Dockerfile.base: ``fedrun:<version>``."""
    return "fedrun:" + re.sub(r"[^A-Za-z0-9_.-]", "-", version)


def default_extra_index(requirements: str) -> str:
    """The extra package index the workspace image uses by default.

    The CPU-only torch index when the requirements name torch (the default index's torch is a
    multi-GB CUDA build); otherwise none.
    """
    names = set()
    for line in requirements.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "-")):
            names.add(re.split(r"[\s<>=!~;\[@]", line, maxsplit=1)[0].lower())
    return TORCH_CPU_INDEX if names & TORCH_PACKAGES else ""


# ------------------------------------------------------------------------------- enclave key
def check_enclave_key(path: Path | None) -> Path:
    """Return the absolute path of a usable SGX enclave signing key, or say what is wrong."""
    make_key = (
        "make one with `gramine-sgx-gen-private-key KEY.pem` (or `openssl genrsa -3 -out "
        "KEY.pem 3072`) and pass --enclave-key KEY.pem; it is handed to the build as a secret "
        "and never copied into the image"
    )
    if path is None:
        raise WorkspaceError(
            "FX-WS-033", "--gramine needs the enclave signing key (--enclave-key)", make_key
        )
    key_path = Path(path).expanduser().resolve()
    if not key_path.is_file():
        raise WorkspaceError(
            "FX-WS-033", f"the enclave signing key {key_path} does not exist", make_key
        )
    from cryptography.hazmat.primitives.asymmetric import rsa

    from fedrun.errors import CertificateError
    from fedrun.pki.keys import load_private_key

    try:
        key = load_private_key(key_path, "the enclave signing key")
    except CertificateError as exc:  # unreadable, encrypted, or neither EC nor RSA
        raise WorkspaceError("FX-WS-034", exc.message, make_key) from None
    if (
        not isinstance(key, rsa.RSAPrivateKey)
        or key.key_size != SGX_KEY_BITS
        or key.public_key().public_numbers().e != SGX_KEY_EXPONENT
    ):
        if isinstance(key, rsa.RSAPrivateKey):
            kind = f"RSA-{key.key_size}, exponent {key.public_key().public_numbers().e}"
        else:
            kind = f"EC {key.curve.name}"
        raise WorkspaceError(
            "FX-WS-034",
            f"{key_path} is not an SGX signing key ({kind}); SGX signs enclaves with RSA-3072, "
            "exponent 3",
            make_key,
        )
    return key_path


# ------------------------------------------------------------------------------- fedrun wheel
def fedrun_source_tree() -> Path | None:
    """The source tree the running fedrun comes from (editable install or checkout), if any."""
    import fedrun

    root = Path(fedrun.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    try:
        text = pyproject.read_text()
    except OSError:
        return None
    # [project] name = "fedrun" (a regex, not tomllib: fedrun also runs on Python 3.10)
    section = re.search(r"^\[project\][ \t]*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    name = section and re.search(r"^name\s*=\s*[\"']([^\"']+)[\"']", section.group(1), re.M)
    return root if name and name.group(1) == "fedrun" else None


def _wheel_error(version: str, detail: str) -> WorkspaceError:
    return WorkspaceError(
        "FX-WS-035",
        f"cannot get a wheel of fedrun {version}: {detail}",
        f"install fedrun from its source tree (`pip install -e <fedrun source>`), make "
        f"fedrun=={version} available on your package index, or pass --wheel with a fedrun "
        f"{version} wheel",
    )


def check_wheel(path: Path, version: str) -> Path:
    """Return ``path`` if it is a wheel of fedrun ``version`` (package and metadata inside)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            meta = next((n for n in names if n.endswith(".dist-info/METADATA")), None)
            text = zf.read(meta).decode("utf-8", "replace") if meta else ""
    except (OSError, zipfile.BadZipFile) as exc:
        raise _wheel_error(version, f"{path} is not a readable wheel ({exc})") from None
    fields = dict(
        line.split(": ", 1) for line in text.split("\n\n", 1)[0].splitlines() if ": " in line
    )
    if fields.get("Name", "").lower() != "fedrun" or "fedrun/cli/main.py" not in names:
        raise _wheel_error(version, f"{path} is not a fedrun wheel")
    if fields.get("Version") != version:
        raise _wheel_error(
            version,
            f"{path} holds fedrun {fields.get('Version')}, but this fedrun (whose version the "
            f"workspace's requirements.txt pins) is {version}",
        )
    return path


def _pip(args: list[str], what: str, version: str) -> None:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _wheel_error(version, f"{what} failed: {exc}") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip())[-1500:]
        raise _wheel_error(version, f"{what} failed:\n{tail}")


def _can_build_offline() -> bool:
    """Whether this environment's setuptools can build fedrun's wheel without an index."""
    try:
        setuptools_version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        return False
    major, minor = (int(p) if p.isdigit() else 0 for p in setuptools_version.split(".")[:2])
    if (major, minor) >= (70, 1):  # bdist_wheel is built in from 70.1 on
        return True
    try:
        metadata.version("wheel")
    except metadata.PackageNotFoundError:
        return False
    return major >= 65


def _build_wheel(source: Path, dest: Path, version: str) -> Path:
    """``pip wheel`` a clean copy of the source tree (no caches, nothing written into it)."""
    with tempfile.TemporaryDirectory(prefix="fedrun-wheel-") as tmp:
        copy = Path(tmp) / "src"
        copy.mkdir()
        for pattern in ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in"):
            for path in source.glob(pattern):
                shutil.copy2(path, copy / path.name)
        for pattern in ("README*", "LICENSE*", "COPYING*", "NOTICE*"):
            for path in source.glob(pattern):
                if path.is_file():
                    shutil.copy2(path, copy / path.name)
        shutil.copytree(
            source / "fedrun",
            copy / "fedrun",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
        )
        args = ["wheel", "--no-deps", "--quiet", "--wheel-dir", str(dest), str(copy)]
        if _can_build_offline():
            args.insert(1, "--no-build-isolation")
        _pip(args, f"building the wheel from {source}", version)
    return _only_wheel(dest, version)


def _only_wheel(dest: Path, version: str) -> Path:
    wheels = sorted(dest.glob("fedrun-*.whl"))
    if len(wheels) != 1:
        raise _wheel_error(version, f"expected one fedrun wheel in {dest}, found {len(wheels)}")
    return check_wheel(wheels[0], version)


def fedrun_wheel(dest: str | Path, wheel: str | Path | None = None) -> Path:
    """Put a wheel of the running fedrun into the folder ``dest``; returns its path.

    ``wheel`` given: that file, once checked. Otherwise the wheel is built with ``pip wheel``
    from the source tree the running fedrun comes from; when fedrun was installed from a wheel
    or the package index (no source tree), ``pip download`` fetches ``fedrun==<version>``.
    """
    version = fedrun_version()
    target = Path(dest)
    target.mkdir(parents=True, exist_ok=True)
    if wheel is not None:
        given = Path(wheel).expanduser()
        if not given.is_file():
            raise _wheel_error(version, f"--wheel {given} does not exist")
        if not re.fullmatch(rf"fedrun-{re.escape(version)}-[^-]+-[^-]+-[^-]+\.whl", given.name):
            raise _wheel_error(
                version,
                f"{given.name} is not named like a wheel of fedrun {version} "
                f"(fedrun-{version}-py3-none-any.whl); pip installs only wheels named that way",
            )
        check_wheel(given, version)
        return Path(shutil.copy2(given, target / given.name))
    source = fedrun_source_tree()
    if source is not None:
        return _build_wheel(source, target, version)
    _pip(
        [
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "--dest",
            str(target),
            f"fedrun=={version}",
        ],
        f"no fedrun source tree found, and downloading fedrun=={version}",
        version,
    )
    return _only_wheel(target, version)


# ------------------------------------------------------------------------------- the context
@dataclass(frozen=True)
class BuildContext:
    """A written build context and the names its images get."""

    folder: Path
    workspace: Path
    tag: str
    base_tag: str
    base_image: str
    wheel: Path
    extra_index: str
    gramine: bool = False
    enclave_key: Path | None = None
    save: bool = False
    #: build from scratch, no layer reused (`docker build --no-cache`; OpenFL's --rebuild)
    rebuild: bool = False

    @property
    def tarball(self) -> Path:
        """Where ``docker save`` writes the workspace image (only with ``save``)."""
        return self.folder / tarball_name(self.tag)

    def commands(self) -> list[list[str]]:
        """The docker commands that build (and with ``save`` export) the images.

        Each runs from the build context folder; the first word is ``docker``.
        """
        build = ["docker", "build", *(["--no-cache"] if self.rebuild else [])]
        base = [*build, "-f", "Dockerfile.base", "-t", self.base_tag, "."]
        image = [*build, "-t", self.tag, "."]
        if self.gramine and self.enclave_key is not None:
            image[2:2] = ["--secret", f"id={ENCLAVE_KEY_SECRET},src={self.enclave_key}"]
        commands = [base, image]
        if self.save:
            commands.append(["docker", "save", "-o", self.tarball.name, self.tag])
        return commands

    def shell_lines(self) -> list[str]:
        """The commands as a person types them: ``cd`` into the context, then each command."""
        return [shlex.join(["cd", str(self.folder)])] + [shlex.join(c) for c in self.commands()]


def _check_output(folder: Path, workspace: Path, force: bool) -> None:
    if folder == workspace or folder in workspace.parents:
        raise WorkspaceError(
            "FX-WS-031",
            f"{folder} is the workspace or holds it; the build context needs a folder of its own",
            f"leave out -o (the context goes to {workspace / CONTEXT_DIR}) or pass -o NEW_FOLDER",
        )
    if folder.exists() and not folder.is_dir():
        raise WorkspaceError(
            "FX-WS-031", f"{folder} is a file, not a folder", "pass -o with a folder path"
        )
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise WorkspaceError(
            "FX-WS-031",
            f"the build context folder {folder} already exists and is not empty",
            "pass --force to rewrite the files dockerize writes there (other files are kept), "
            "or pass -o with another folder",
        )


def dockerize_workspace(
    workspace: str | Path = ".",
    output: str | Path | None = None,
    *,
    tag: str | None = None,
    base_image: str | None = None,
    save: bool = False,
    gramine: bool = False,
    enclave_key: str | Path | None = None,
    force: bool = False,
    wheel: str | Path | None = None,
    rebuild: bool = False,
) -> BuildContext:
    """Write the Docker build context of ``workspace``; returns what was written.

    The context goes to ``output`` (default ``<workspace>/docker``). Everything is checked
    before anything is written, and files are assembled in a scratch folder next to the
    context, so a failure leaves no half-written context behind. Nothing is built here: see
    :func:`docker_engine` and :func:`build_images`.
    """
    ws = Path(workspace).expanduser().resolve()
    if not (ws / "plan" / "plan.yaml").is_file():
        raise WorkspaceError(
            "FX-WS-030",
            f"{ws} is not a workspace (no plan/plan.yaml)",
            "run `fx workspace dockerize` inside a workspace made by `fx workspace create` "
            "(after `fx plan initialize`)",
        )
    folder = Path(output).expanduser().resolve() if output else ws / CONTEXT_DIR
    name = validate_tag(tag) if tag is not None else default_tag(ws.name)
    if base_image is not None:
        validate_base_image(base_image)
    if enclave_key is not None and not gramine:
        raise WorkspaceError(
            "FX-WS-033",
            "--enclave-key signs a Gramine enclave and is only used with --gramine",
            "add --gramine, or leave out --enclave-key",
        )
    key = check_enclave_key(Path(enclave_key) if enclave_key else None) if gramine else None
    _check_output(folder, ws, force)
    version = fedrun_version()

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part", dir=folder.parent))
    try:
        archive = export_workspace(ws, staging / ARCHIVE_NAME)
        with zipfile.ZipFile(archive) as zf:
            requirements = zf.read("requirements.txt").decode("utf-8", "replace")
        built = fedrun_wheel(staging / WHEEL_DIR, wheel)
        context = BuildContext(
            folder=folder,
            workspace=ws,
            tag=name,
            base_tag=base_tag(version),
            base_image=validate_base_image(base_image) if base_image else default_base_image(),
            wheel=folder / WHEEL_DIR / built.name,
            extra_index=default_extra_index(requirements),
            gramine=gramine,
            enclave_key=key,
            save=save,
            rebuild=rebuild,
        )
        files = {
            "Dockerfile.base": base_dockerfile(context, version),
            "Dockerfile": workspace_dockerfile(context),
            ".dockerignore": dockerignore(context),
            "BUILD.md": build_readme(context),
        }
        if gramine:
            files[MANIFEST_TEMPLATE] = GRAMINE_MANIFEST
        for file_name, text in files.items():
            (staging / file_name).write_text(text)
        folder.mkdir(exist_ok=True)
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                target = folder / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return context


# ------------------------------------------------------------------------------- docker
def docker_engine() -> str | None:
    """Path of the ``docker`` client if it is on PATH and its engine answers ``docker info``."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        proc = subprocess.run([docker, "info"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return docker if proc.returncode == 0 else None


def build_images(context: BuildContext, docker: str = "docker") -> None:
    """Run the context's docker commands from its folder, their output going to the terminal.

    BuildKit is switched on (``DOCKER_BUILDKIT=1``): the Gramine stage reads the enclave key
    as a build secret. Raises FX-WS-036 naming the command that failed.
    """
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    for command in context.commands():
        argv = [docker, *command[1:]]
        try:
            returncode = subprocess.run(argv, cwd=context.folder, env=env).returncode
        except OSError as exc:
            returncode, detail = -1, f" ({exc.strerror})"
        else:
            detail = f" (exit code {returncode})"
        if returncode != 0:
            raise WorkspaceError(
                "FX-WS-036",
                f"`{shlex.join(command)}` failed{detail}",
                f"read the docker output above, fix the cause and run the commands in "
                f"{context.folder / 'BUILD.md'} again from {context.folder} (the build context "
                "is kept)",
            )


# ------------------------------------------------------------------------------- file texts
def _render(text: str, **values: str) -> str:
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    leftover = re.search(r"@[A-Z_]+@", text)
    if leftover is not None:
        raise RuntimeError(f"unfilled placeholder {leftover.group(0)}")
    return text


_BASE_DOCKERFILE = """\
# fedrun @VERSION@ on @BASE_IMAGE@: the base image of fedrun workspace images.
# Written by `fx workspace dockerize`; from this folder:
#   docker build -f Dockerfile.base -t @BASE_TAG@ .
# fedrun is installed from the wheel in wheels/, its dependencies from the package index.
# Another Python image (Debian or Ubuntu based, Python 3.10 to 3.13, with venv):
#   --build-arg BASE_IMAGE=...
ARG BASE_IMAGE=@BASE_IMAGE@
FROM $BASE_IMAGE

ARG PIP_INDEX_URL=@PYPI@
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    PIP_NO_CACHE_DIR=1 \\
    PYTHONUNBUFFERED=1 \\
    VIRTUAL_ENV=@VENV@ \\
    PATH=@VENV@/bin:$PATH

# fx runs as an unprivileged user, from a virtual environment that user owns, so workspace
# images can pip-install their requirements without root.
RUN useradd --create-home --uid @UID@ --shell /bin/bash @USER@ \\
 && python3 -m venv @VENV@ \\
 && chown -R @USER@:@USER@ @VENV@
USER @USER@
WORKDIR @HOME@
COPY --chown=@USER@:@USER@ wheels/@WHEEL@ /tmp/wheels/@WHEEL@
RUN pip install /tmp/wheels/@WHEEL@ \\
 && rm -rf /tmp/wheels \\
 && fx --help > /dev/null
CMD ["fx", "--help"]
"""

_WORKSPACE_DOCKERFILE = """\
# Image of the fedrun workspace '@WORKSPACE_NAME@', written by `fx workspace dockerize`.
# It holds the exported workspace (workspace.zip: plan, src, requirements, initial model) and
# never keys, certificates or data: mount those when you run it (see BUILD.md).
# From this folder, after the base image (docker build -f Dockerfile.base -t @BASE_TAG@ .):
#   docker build -t @TAG@ .
ARG FEDRUN_IMAGE=@BASE_TAG@
FROM $FEDRUN_IMAGE AS workspace

# Where pip finds the workspace's requirements. The default extra index, when set, serves
# CPU-only torch wheels (the default index's torch is a multi-GB CUDA build). Override with
#   --build-arg PIP_INDEX_URL=...   --build-arg PIP_EXTRA_INDEX_URL=...   (empty: none)
ARG PIP_INDEX_URL=@PYPI@
ARG PIP_EXTRA_INDEX_URL=@EXTRA_INDEX@

WORKDIR @HOME@
COPY --chown=@USER@:@USER@ @ARCHIVE@ /tmp/@ARCHIVE@
RUN fx workspace import --archive /tmp/@ARCHIVE@ --no-install \\
 && rm /tmp/@ARCHIVE@
WORKDIR @WORKSPACE@
RUN if [ -z "$PIP_EXTRA_INDEX_URL" ]; then unset PIP_EXTRA_INDEX_URL; fi \\
 && pip install -r requirements.txt
CMD ["fx", "--help"]
"""

_GRAMINE_STAGE = """
# ---- Gramine: the same workspace, able to run `gramine-sgx fx ...` inside an SGX enclave ----
# Needs BuildKit (the default builder since Docker 23) and the enclave signing key as a secret:
#   docker build --secret id=@SECRET@,src=KEY.pem -t @TAG@ .
# The plain image without Gramine is the `workspace` stage: docker build --target workspace ...
FROM workspace AS gramine
USER root
ARG GRAMINE_REPO=https://packages.gramineproject.io/
ARG INTEL_SGX_REPO=https://download.01.org/intel-sgx/sgx_repo/ubuntu
RUN apt-get update \\
 && apt-get install -y --no-install-recommends ca-certificates curl \\
 && . /etc/os-release \\
 && { curl -fsSLo /usr/share/keyrings/gramine-keyring.gpg \\
        "${GRAMINE_REPO}gramine-keyring-${VERSION_CODENAME}.gpg" \\
      || curl -fsSLo /usr/share/keyrings/gramine-keyring.gpg \\
        "${GRAMINE_REPO}gramine-keyring.gpg"; } \\
 && echo "deb [arch=amd64 signed-by=/usr/share/keyrings/gramine-keyring.gpg] ${GRAMINE_REPO} ${VERSION_CODENAME} main" \\
      > /etc/apt/sources.list.d/gramine.list \\
 && curl -fsSLo /usr/share/keyrings/intel-sgx-deb.asc "${INTEL_SGX_REPO}/intel-sgx-deb.key" \\
 && echo "deb [arch=amd64 signed-by=/usr/share/keyrings/intel-sgx-deb.asc] ${INTEL_SGX_REPO} jammy main" \\
      > /etc/apt/sources.list.d/intel-sgx.list \\
 && apt-get update \\
 && apt-get install -y --no-install-recommends gramine \\
 && rm -rf /var/lib/apt/lists/*
USER @USER@
WORKDIR @WORKSPACE@

ARG ARCH_LIBDIR=/lib/x86_64-linux-gnu
ARG GRAMINE_LOG_LEVEL=error
ARG SGX_ENCLAVE_SIZE=16G
COPY --chown=@USER@:@USER@ @MANIFEST@ ./
RUN gramine-manifest \\
      -Dentrypoint=@VENV@/bin/fx \\
      -Dvenv=@VENV@ \\
      -Dworkspace=@WORKSPACE@ \\
      -Dhome=@HOME@ \\
      -Dpython_prefix="$(python -c 'import sys; print(sys.base_prefix)')" \\
      -Darch_libdir="$ARCH_LIBDIR" \\
      -Dlog_level="$GRAMINE_LOG_LEVEL" \\
      -Denclave_size="$SGX_ENCLAVE_SIZE" \\
      @MANIFEST@ fx.manifest
# The key is readable by this one step only and is not stored in any layer of the image.
RUN --mount=type=secret,id=@SECRET@,required=true,uid=@UID@ \\
    gramine-sgx-sign --manifest fx.manifest --output fx.manifest.sgx \\
      --key /run/secrets/@SECRET@
CMD ["fx", "--help"]
"""

#: Gramine manifest template. Valid TOML as it stands (every Jinja expression sits inside a
#: string); gramine-manifest fills in the -D values the Dockerfile passes and its built-ins.
GRAMINE_MANIFEST = """\
# Gramine manifest template for `fx` in a fedrun workspace image, written by
# `fx workspace dockerize --gramine`. The image's Dockerfile renders it with gramine-manifest
# into fx.manifest and signs that with gramine-sgx-sign into fx.manifest.sgx and fx.sig, so
# that `gramine-sgx fx <command>` run in the workspace folder starts fx inside an SGX enclave.

libos.entrypoint = "{{ entrypoint }}"
loader.entrypoint.uri = "file:{{ gramine.libos }}"
loader.log_level = "{{ log_level }}"

# The words after `gramine-sgx fx` reach fx as they are: the host chooses the command.
loader.insecure__use_cmdline_argv = true

loader.env.LD_LIBRARY_PATH = "/lib:{{ arch_libdir }}:/usr/{{ arch_libdir }}:{{ python_prefix }}/lib"
loader.env.PATH = "{{ venv }}/bin:{{ python_prefix }}/bin:/usr/bin:/bin"
loader.env.HOME = "{{ home }}"
loader.env.VIRTUAL_ENV = "{{ venv }}"
loader.env.PYTHONUNBUFFERED = "1"
loader.env.PYTHONDONTWRITEBYTECODE = "1"

fs.start_dir = "{{ workspace }}"
fs.mounts = [
  { path = "/lib", uri = "file:{{ gramine.runtimedir() }}" },
  { path = "{{ arch_libdir }}", uri = "file:{{ arch_libdir }}" },
  { path = "/usr", uri = "file:/usr" },
  { path = "{{ venv }}", uri = "file:{{ venv }}" },
  { path = "{{ workspace }}", uri = "file:{{ workspace }}" },
  { type = "tmpfs", path = "/tmp" },
]

sys.stack.size = "4M"
sys.enable_sigterm_injection = true
sys.enable_extra_runtime_domain_names_conf = true

sgx.debug = false
sgx.edmm_enable = false
sgx.enclave_size = "{{ enclave_size }}"
sgx.max_threads = 256

# Measured into the enclave's identity: code, interpreter, libraries and the FL plan.
sgx.trusted_files = [
  "file:{{ gramine.libos }}",
  "file:{{ gramine.runtimedir() }}/",
  "file:{{ arch_libdir }}/",
  "file:/usr/{{ arch_libdir }}/",
  "file:{{ python_prefix }}/bin/",
  "file:{{ python_prefix }}/lib/",
  "file:{{ venv }}/",
  "file:{{ workspace }}/plan/plan.yaml",
  "file:{{ workspace }}/src/",
]

# Mounted or written at run time; not measured. Certificates, keys and data stay on the host.
sgx.allowed_files = [
  "file:{{ workspace }}/plan/cols.yaml",
  "file:{{ workspace }}/plan/data.yaml",
  "file:{{ workspace }}/plan/defaults/",
  "file:{{ workspace }}/cert/",
  "file:{{ workspace }}/data/",
  "file:{{ workspace }}/save/",
  "file:{{ workspace }}/logs/",
  "file:{{ workspace }}/local_state/",
]
"""


def _common(context: BuildContext) -> dict[str, str]:
    return {
        "USER": IMAGE_USER,
        "UID": str(IMAGE_UID),
        "HOME": IMAGE_HOME,
        "VENV": IMAGE_VENV,
        "WORKSPACE": IMAGE_WORKSPACE,
        "PYPI": PYPI_INDEX,
        "TAG": context.tag,
        "BASE_TAG": context.base_tag,
    }


def base_dockerfile(context: BuildContext, version: str) -> str:
    """Text of Dockerfile.base: fedrun from the context's wheel on the chosen Python image."""
    return _render(
        _BASE_DOCKERFILE,
        VERSION=version,
        BASE_IMAGE=context.base_image,
        WHEEL=context.wheel.name,
        **_common(context),
    )


def workspace_dockerfile(context: BuildContext) -> str:
    """Text of the workspace image's Dockerfile (with the Gramine stage when asked)."""
    text = _render(
        _WORKSPACE_DOCKERFILE,
        WORKSPACE_NAME=context.workspace.name,
        ARCHIVE=ARCHIVE_NAME,
        EXTRA_INDEX=context.extra_index,
        **_common(context),
    )
    if context.gramine:
        text += _render(
            _GRAMINE_STAGE,
            SECRET=ENCLAVE_KEY_SECRET,
            MANIFEST=MANIFEST_TEMPLATE,
            **_common(context),
        )
    return text


def dockerignore(context: BuildContext) -> str:
    """Text of .dockerignore: everything is left out except the files the Dockerfiles copy."""
    keep = [ARCHIVE_NAME, f"{WHEEL_DIR}/{context.wheel.name}"]
    if context.gramine:
        keep.append(MANIFEST_TEMPLATE)
    lines = [
        "# Written by `fx workspace dockerize`: the Docker engine gets only what the",
        "# Dockerfiles copy (never saved images, keys or anything else put in this folder).",
        "*",
        *(f"!{name}" for name in keep),
    ]
    return "\n".join(lines) + "\n"


def _mount(source: str, target: str, readonly: bool = False) -> str:
    text = f'--mount type=bind,source="$PWD/{source}",target={IMAGE_WORKSPACE}/{target}'
    return text + (",readonly" if readonly else "")


def run_examples(context: BuildContext, *, sgx: bool = False) -> tuple[str, str]:
    """``docker run`` commands for the aggregator and a collaborator (shell text).

    Each is meant to be run from that node's own workspace folder, which holds its ``cert/``
    and, for a collaborator, its ``plan/data.yaml`` and ``data/``.
    """
    head = ["docker run --rm --network host --security-opt no-new-privileges"]
    if sgx:
        head += [
            "--device=/dev/sgx_enclave",
            "-v /var/run/aesmd/aesm.socket:/var/run/aesmd/aesm.socket",
        ]
    prefix = "gramine-sgx " if sgx else ""
    aggregator = [
        *head,
        _mount("cert", "cert", readonly=True),
        _mount("plan/cols.yaml", "plan/cols.yaml", readonly=True),
        _mount("save", "save"),
        _mount("local_state", "local_state"),
        _mount("logs", "logs"),
        f"{context.tag} {prefix}fx aggregator start",
    ]
    collaborator = [
        *head,
        _mount("cert", "cert", readonly=True),
        _mount("plan/data.yaml", "plan/data.yaml", readonly=True),
        _mount("data", "data"),
        _mount("logs", "logs"),
        f"{context.tag} {prefix}fx collaborator start -n NAME",
    ]
    return " \\\n  ".join(aggregator), " \\\n  ".join(collaborator)


def build_readme(context: BuildContext) -> str:
    """Text of BUILD.md: what the folder holds and the exact build, save and run commands."""
    commands = "\n".join(shlex.join(c) for c in context.commands())
    if not context.save:
        commands += (
            "\n# to ship the image to the other nodes (then `docker load -i "
            f"{context.tarball.name}` there):\n"
            + shlex.join(["docker", "save", "-o", context.tarball.name, context.tag])
        )
    aggregator, collaborator = run_examples(context)
    extra = context.extra_index or "(none)"
    text = f"""\
# Docker build context of the fedrun workspace `{context.workspace.name}`

Written by `fx workspace dockerize`. The image holds the exported workspace (plan, `src/`,
`requirements.txt`, initial model) and fedrun; it never holds private keys, certificates or data.
Those stay on each node and are mounted when the container starts.

| file | what it is |
|---|---|
| `{ARCHIVE_NAME}` | the workspace, as `fx workspace export` writes it |
| `{WHEEL_DIR}/{context.wheel.name}` | the fedrun that wrote this folder |
| `Dockerfile.base` | fedrun on `{context.base_image}`, tagged `{context.base_tag}` |
| `Dockerfile` | the workspace image `{context.tag}`, `FROM {context.base_tag}` |
| `.dockerignore` | sends the engine only the files the Dockerfiles copy |
"""
    if context.gramine:
        text += f"| `{MANIFEST_TEMPLATE}` | Gramine manifest, rendered and signed in the image |\n"
    text += f"""
## Build

From this folder:

```bash
{commands}
```

Build arguments of `Dockerfile` (`--build-arg NAME=value`):

| name | default | meaning |
|---|---|---|
| `PIP_INDEX_URL` | `{PYPI_INDEX}` | index of the workspace's requirements |
| `PIP_EXTRA_INDEX_URL` | `{extra}` | extra index; `{TORCH_CPU_INDEX}` serves CPU-only torch (the default index's torch is a multi-GB CUDA build); empty for none |
| `FEDRUN_IMAGE` | `{context.base_tag}` | the fedrun base image |

`Dockerfile.base` takes `BASE_IMAGE` (default `{context.base_image}`) and `PIP_INDEX_URL`.

## Run

Run each command from that node's workspace folder. The container runs as user `{IMAGE_USER}`
(uid {IMAGE_UID}); the folders it writes (`save/`, `local_state/`, `logs/`, and `data/` when a
loader downloads its data) must be writable by that uid. Mount only the certificates a node
needs: `cert/cert_chain.crt` and the node's own key and certificate. The CA's keys under
`cert/ca/` are never needed to run.

Aggregator:

```bash
{aggregator}
```

Collaborator `NAME`:

```bash
{collaborator}
```
"""
    if context.gramine:
        agg_sgx, col_sgx = run_examples(context, sgx=True)
        text += f"""
## Run inside an SGX enclave (Gramine)

The image's last stage renders `{MANIFEST_TEMPLATE}` into `fx.manifest` and signs it with
the key passed as the BuildKit secret `{ENCLAVE_KEY_SECRET}` (`{context.enclave_key}`), which is
never copied into the image. Build arguments of that stage: `SGX_ENCLAVE_SIZE` (default `16G`),
`GRAMINE_LOG_LEVEL` (`error`), `ARCH_LIBDIR` (`/lib/x86_64-linux-gnu`), `GRAMINE_REPO`,
`INTEL_SGX_REPO`. `docker build --target workspace ...` gives the image without Gramine. The
manifest enables no remote attestation, passes the command line to fx unchecked
(`loader.insecure__use_cmdline_argv`) and reads certificates and data as unprotected allowed
files; review it before production use.

Aggregator:

```bash
{agg_sgx}
```

Collaborator `NAME`:

```bash
{col_sgx}
```
"""
    return text
