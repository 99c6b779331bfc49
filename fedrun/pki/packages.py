"""Zip packages exchanged between a collaborator and the CA host.

* request package ``col_<name>_to_agg_cert_request.zip``: the collaborator's CSR only, never a
  key. The CA host signs exactly the request inside it.
* signed package ``agg_to_col_<name>_signed_cert.zip``: ``client/col_<name>.crt`` and
  ``cert_chain.crt``. The collaborator checks everything before writing anything.

Packages come from another machine, so every entry name is checked (no ``..``, no absolute
paths, no links, no private keys) and sizes are bounded before anything is read.
"""

from __future__ import annotations

import io
import re
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from cryptography.hazmat.primitives import serialization

from fedrun.errors import CertificateError
from fedrun.pki.files import read_file, write_public_file
from fedrun.pki.identity import (
    certificate_common_name,
    parse_chain,
    verify_certificate,
)
from fedrun.pki.keys import load_private_key, public_keys_match
from fedrun.pki.layout import CHAIN_FILE, CLIENT_DIR, chain_path, collaborator_paths
from fedrun.pki.names import validate_collaborator_name
from fedrun.pki.requests import load_csr, parse_csr

__all__ = [
    "import_signed_package",
    "read_request_package",
    "write_request_package",
    "write_signed_package",
]

MAX_ENTRIES = 32
MAX_ENTRY_BYTES = 256 * 1024  # a CSR, certificate or chain is a few KiB
MAX_PACKAGE_BYTES = 4 * 1024 * 1024
_REQUEST_ENTRY = re.compile(r"^col_(?P<name>.+)\.csr$")
_SIGNED_ENTRY = re.compile(rf"^{CLIENT_DIR}/col_(?P<name>.+)\.crt$")
_DRIVE = re.compile(r"^[A-Za-z]:")
_REQUEST_FIX = (
    "ask the collaborator to run `fx collaborator generate-cert-request -n <name>` again and "
    "send the new col_<name>_to_agg_cert_request.zip unchanged"
)
_SIGNED_FIX = (
    "ask the CA host for a fresh agg_to_col_<name>_signed_cert.zip "
    "(`fx collaborator certify --request-pkg <zip>`) and import it unchanged"
)


def write_request_package(zip_path: Path, csr_path: Path) -> None:
    """Write a request package holding only ``col_<name>.csr``.

    Parameters
    ----------
    zip_path:
        The zip to write (usually ``col_<name>_to_agg_cert_request.zip``).
    csr_path:
        The collaborator's CSR; ``<name>`` is its common name.

    Raises
    ------
    CertificateError
        ``FX-PKI-004``/``005`` missing or invalid CSR, ``FX-PKI-003`` invalid name.
    """
    csr, pem = load_csr(Path(csr_path), server=False)
    name = validate_collaborator_name(certificate_common_name(csr))
    _write_zip(Path(zip_path), {f"col_{name}.csr": pem})


def read_request_package(zip_path: Path) -> tuple[str, bytes]:
    """Read the single collaborator CSR from a request package.

    Parameters
    ----------
    zip_path:
        The received ``col_<name>_to_agg_cert_request.zip``.

    Returns
    -------
    tuple[str, bytes]
        The collaborator name (from the entry ``col_<name>.csr``) and the CSR's PEM bytes.

    Raises
    ------
    CertificateError
        ``FX-PKI-004`` missing file, ``FX-PKI-011`` not a readable zip, ``FX-PKI-012`` unsafe
        entry (path traversal, absolute path, link, private key), ``FX-PKI-013`` no CSR or
        several, ``FX-PKI-003`` invalid name, ``FX-PKI-005`` invalid CSR, ``FX-PKI-006`` CSR
        signature does not verify, ``FX-PKI-014`` CSR common name differs from the file name.
    """
    zip_path = Path(zip_path)
    entries = _read_zip(zip_path, "certificate request package", _REQUEST_FIX)
    csrs = [name for name in entries if name.endswith(".csr")]
    if len(csrs) != 1:
        raise CertificateError(
            "FX-PKI-013",
            f"certificate request package {zip_path} must hold exactly one col_<name>.csr; "
            f"it holds {len(csrs)} CSR(s){': ' + ', '.join(csrs) if csrs else ''}",
            _REQUEST_FIX,
        )
    entry = csrs[0]
    match = _REQUEST_ENTRY.match(entry)
    if match is None:
        raise CertificateError(
            "FX-PKI-013",
            f"the CSR in {zip_path} is named {entry!r}; expected col_<name>.csr at the top level",
            _REQUEST_FIX,
        )
    name = validate_collaborator_name(match.group("name"))
    pem = entries[entry]
    source = f"{entry} in {zip_path}"
    csr = parse_csr(pem, source)
    if not csr.is_signature_valid:
        raise CertificateError(
            "FX-PKI-006",
            f"the signature of {source} does not verify: the request was altered or is corrupt",
            _REQUEST_FIX,
        )
    common_name = certificate_common_name(csr)
    if common_name != name:
        raise CertificateError(
            "FX-PKI-014",
            f"{source} is for CN={common_name!r}, not for {name!r} as its file name says",
            _REQUEST_FIX,
        )
    return name, pem


def write_signed_package(zip_path: Path, cert_path: Path, chain_path: Path) -> None:
    """Write a signed package: ``client/col_<name>.crt`` and ``cert_chain.crt``.

    Parameters
    ----------
    zip_path:
        The zip to write (usually ``agg_to_col_<name>_signed_cert.zip``).
    cert_path:
        The collaborator's signed certificate.
    chain_path:
        The federation's ``cert_chain.crt``.

    Raises
    ------
    CertificateError
        ``FX-PKI-004``/``005`` missing or invalid files; ``FX-PKI-008``/``009``/``010``/``018``
        when the certificate is not a currently valid collaborator certificate of this chain.
    """
    cert_pem = read_file(
        cert_path,
        "collaborator certificate",
        "sign the request first with `fx collaborator certify --request-pkg <zip>`",
    )
    chain_pem = read_file(chain_path, "certificate chain", "run `fx workspace certify`")
    cert = verify_certificate(cert_pem, chain_pem, server=False, source=str(cert_path))
    name = validate_collaborator_name(certificate_common_name(cert))
    chain = parse_chain(chain_pem, str(chain_path))
    _write_zip(
        Path(zip_path),
        {
            f"{CLIENT_DIR}/col_{name}.crt": cert.public_bytes(serialization.Encoding.PEM),
            CHAIN_FILE: chain.pem(),
        },
    )


def import_signed_package(
    zip_path: Path, cert_dir: Path, *, expected_name: str | None = None
) -> Path:
    """Check a signed package and install its certificate and chain under ``cert_dir``.

    Nothing is written unless every check passes: safe entry names; exactly one
    ``client/col_<name>.crt`` and a ``cert_chain.crt``; the certificate is a currently valid
    collaborator certificate signed by that chain; an existing ``cert_dir/cert_chain.crt`` is
    the same chain; an existing ``client/col_<name>.key`` is the certificate's key; the name is
    ``expected_name`` when given.

    Parameters
    ----------
    zip_path:
        The received ``agg_to_col_<name>_signed_cert.zip``.
    cert_dir:
        The collaborator workspace's ``cert/`` directory.
    expected_name:
        The collaborator name this workspace expects, if known.

    Returns
    -------
    Path
        The installed certificate, ``cert_dir/client/col_<name>.crt``.

    Raises
    ------
    CertificateError
        ``FX-PKI-004``/``011``/``012``/``013`` unreadable, unsafe or incomplete package,
        ``FX-PKI-005``/``008``/``009``/``010``/``018`` certificate not trusted by the chain,
        ``FX-PKI-014`` name mismatch, ``FX-PKI-015`` chain differs from the local one (another
        federation), ``FX-PKI-016`` certificate does not match the local private key.
    """
    zip_path = Path(zip_path)
    cert_dir = Path(cert_dir)
    entries = _read_zip(zip_path, "signed certificate package", _SIGNED_FIX)
    certs = [n for n in entries if n.endswith(".crt") and n != CHAIN_FILE]
    if len(certs) != 1 or CHAIN_FILE not in entries:
        raise CertificateError(
            "FX-PKI-013",
            f"signed certificate package {zip_path} must hold one {CLIENT_DIR}/col_<name>.crt "
            f"and {CHAIN_FILE}; it holds {sorted(entries) or 'nothing'}",
            _SIGNED_FIX,
        )
    entry = certs[0]
    match = _SIGNED_ENTRY.match(entry)
    if match is None:
        raise CertificateError(
            "FX-PKI-013",
            f"the certificate in {zip_path} is named {entry!r}; expected "
            f"{CLIENT_DIR}/col_<name>.crt",
            _SIGNED_FIX,
        )
    name = validate_collaborator_name(match.group("name"))
    if expected_name is not None and name != expected_name:
        raise CertificateError(
            "FX-PKI-014",
            f"{zip_path} holds the certificate of collaborator {name!r}, not {expected_name!r}",
            f"import agg_to_col_{expected_name}_signed_cert.zip instead",
        )
    source = f"{entry} in {zip_path}"
    chain = parse_chain(entries[CHAIN_FILE], f"{CHAIN_FILE} in {zip_path}")
    cert = verify_certificate(entries[entry], entries[CHAIN_FILE], server=False, source=source)
    common_name = certificate_common_name(cert)
    if common_name != name:
        raise CertificateError(
            "FX-PKI-014",
            f"{source} is for CN={common_name!r}, not for {name!r} as its file name says",
            _SIGNED_FIX,
        )

    local_chain_path = chain_path(cert_dir)
    if local_chain_path.exists():
        local_chain = parse_chain(
            read_file(local_chain_path, "certificate chain", ""), str(local_chain_path)
        )
        if local_chain.der_list() != chain.der_list():
            raise CertificateError(
                "FX-PKI-015",
                f"{zip_path} was signed by another federation's CA: its {CHAIN_FILE} "
                f"({chain.root.subject.rfc4514_string()!r}) differs from {local_chain_path} "
                f"({local_chain.root.subject.rfc4514_string()!r})",
                "get the package from this federation's CA host; if this workspace really "
                f"moves to the other federation, remove {local_chain_path} first",
            )

    paths = collaborator_paths(cert_dir, name)
    if not paths.key.exists():
        raise CertificateError(
            "FX-PKI-004",
            f"{zip_path} holds the certificate of {name!r}, but this workspace has no private "
            f"key for it ({paths.key}): a certificate is only usable beside the key its "
            "request was made with",
            f"run the import in the workspace where `fx collaborator generate-cert-request -n "
            f"{name}` was run; if that key is lost, run it again here and have the new request "
            "signed",
        )
    key = load_private_key(paths.key, "collaborator private key")
    if not public_keys_match(key, cert):
        raise CertificateError(
            "FX-PKI-016",
            f"{source} does not match the private key {paths.key}: it was issued for "
            "another request (an older one, or one made on another machine)",
            f"ask the CA host to sign the request made with this key ({paths.csr}); or run "
            f"`fx collaborator generate-cert-request -n {name}` again and send the new "
            "request package",
        )

    write_public_file(paths.crt, cert.public_bytes(serialization.Encoding.PEM))
    if not local_chain_path.exists():
        write_public_file(local_chain_path, chain.pem())
    return paths.crt


def _write_zip(zip_path: Path, files: dict[str, bytes]) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    write_public_file(zip_path, buffer.getvalue())


def _read_zip(zip_path: Path, what: str, fix: str) -> dict[str, bytes]:
    """Return ``{normalised entry name: bytes}`` for the files in a package, checked for safety."""
    if zip_path.is_file() and zip_path.stat().st_size > MAX_PACKAGE_BYTES:
        raise CertificateError(
            "FX-PKI-013",
            f"{what} {zip_path} is {zip_path.stat().st_size} bytes; a package is a few KiB "
            f"(limit {MAX_PACKAGE_BYTES})",
            fix,
        )
    data = read_file(zip_path, what, f"check the path; {fix}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as exc:
        raise CertificateError(
            "FX-PKI-011", f"{what} {zip_path} is not a readable zip file ({exc})", fix
        ) from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise CertificateError(
                "FX-PKI-013",
                f"{what} {zip_path} holds {len(infos)} entries; a package holds a few files",
                fix,
            )
        entries: dict[str, bytes] = {}
        for info in infos:
            name = _safe_entry_name(info, zip_path, what, fix)
            if info.is_dir():
                continue
            if name in entries:
                raise CertificateError("FX-PKI-012", f"{what} {zip_path} holds {name!r} twice", fix)
            if info.file_size > MAX_ENTRY_BYTES:
                raise CertificateError(
                    "FX-PKI-013",
                    f"{name!r} in {zip_path} is {info.file_size} bytes; certificates and "
                    f"requests are a few KiB (limit {MAX_ENTRY_BYTES})",
                    fix,
                )
            entries[name] = _read_entry(archive, info, zip_path, what, fix)
    return entries


def _safe_entry_name(info: zipfile.ZipInfo, zip_path: Path, what: str, fix: str) -> str:
    raw = info.filename
    unsafe = None
    if "\x00" in raw:
        unsafe = "contains a NUL character"
    elif raw.startswith(("/", "\\")) or _DRIVE.match(raw):
        unsafe = "is an absolute path"
    elif ".." in re.split(r"[/\\]", raw):
        unsafe = "climbs out of the target directory with '..'"
    elif stat.S_ISLNK(info.external_attr >> 16):
        unsafe = "is a symbolic link"
    if unsafe is None:
        parts = [p for p in re.split(r"[/\\]", raw) if p not in ("", ".")]
        name = str(PurePosixPath(*parts)) if parts else ""
        if name.endswith(".key") and not info.is_dir():
            unsafe = "is a private key, which must never leave the machine that made it"
        elif not name:
            unsafe = "has an empty name"
    if unsafe is not None:
        raise CertificateError(
            "FX-PKI-012",
            f"{what} {zip_path} refused: entry {raw!r} {unsafe}; nothing was written",
            fix,
        )
    return name


def _read_entry(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, zip_path: Path, what: str, fix: str
) -> bytes:
    try:
        with archive.open(info) as handle:
            data = handle.read(MAX_ENTRY_BYTES + 1)
    except (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError, OSError) as exc:
        raise CertificateError(
            "FX-PKI-011",
            f"{what} {zip_path} is corrupt: cannot read {info.filename!r} ({exc})",
            fix,
        ) from None
    if len(data) > MAX_ENTRY_BYTES:
        raise CertificateError(
            "FX-PKI-013",
            f"{info.filename!r} in {zip_path} is larger than {MAX_ENTRY_BYTES} bytes",
            fix,
        )
    return data
