"""`fx collaborator`: register, certify, ping and start a collaborator."""

from __future__ import annotations

from pathlib import Path

import click

from fedrun.cli.common import (
    OpenFLAwareGroup,
    confirm,
    console,
    exit_now,
    handle_errors,
    key_type_option,
    not_confirmed,
    ok,
    plan_options,
    require_workspace,
    setup_logging,
)

#: -n NAME, as OpenFL spells it
name_option = click.option(
    "-n",
    "--collaborator_name",
    "--collaborator-name",
    "name",
    required=True,
    help="the collaborator's name (as in plan/cols.yaml and its certificate)",
)


@click.group(cls=OpenFLAwareGroup)
def collaborator() -> None:
    """Register, certify, ping and start a collaborator."""


@collaborator.command()
@name_option
@click.option(
    "-d",
    "--data_path",
    "--data-path",
    "data_path",
    default=None,
    help="this collaborator's data path (for MNIST-style templates: its shard number)",
)
@click.option("-s", "--silent", is_flag=True, help="do not prompt for the data path")
@handle_errors
def create(name: str, data_path: str | None, silent: bool) -> None:
    """Register NAME and its data path in plan/data.yaml (other lines are kept)."""
    from fedrun.pki import validate_collaborator_name
    from fedrun.plan.loader import write_data_path

    name = validate_collaborator_name(name)
    require_workspace("plan/data.yaml")
    if data_path is None:
        default = f"data/{name}"
        data_path = default if silent else click.prompt("data path", default=default)
    write_data_path(Path("plan/data.yaml"), name, str(data_path))
    ok(f"collaborator {name!r} uses data path {data_path!r} (plan/data.yaml)")


@collaborator.command()
@name_option
@plan_options
@click.pass_context
@handle_errors
def start(
    ctx: click.Context,
    name: str,
    plan_config: str,
    cols_config: str | None,
    data_config: str | None,
) -> None:
    """Start collaborator NAME and work until the experiment ends."""
    from fedrun.plan.loader import Plan

    setup_logging(
        ctx.obj.get("log_level", "info") if ctx.obj else "info",
        # no plan here: the start fails at once, and leaves no logs/ folder behind
        Path(f"logs/collaborator_{name}.log") if Path(plan_config).is_file() else None,
    )
    from fedrun.nodes import run_collaborator

    run_collaborator(Plan.load(plan_config, cols_config, data_config), name)
    exit_now(0)


@collaborator.command()
@name_option
@plan_options
@handle_errors
def ping(name: str, plan_config: str, cols_config: str | None, data_config: str | None) -> None:
    """Check connectivity, certificates, name authorisation and plan hash in one call."""
    from fedrun.nodes import ping as do_ping
    from fedrun.plan.loader import Plan
    from fedrun.transport.network import Network

    loaded = Plan.load(plan_config, cols_config, data_config)
    result = do_ping(loaded, name)
    network = Network.from_plan(loaded)
    checked = (
        "certificates, "
        if network.use_tls and network.require_client_auth
        else "the aggregator's certificate, "
        if network.use_tls
        else ""
    )
    unchecked = (
        ""
        if network.use_tls and network.require_client_auth
        else " (without client certificates: the aggregator checks only the name claimed)"
        if network.use_tls
        else " (no TLS: no certificates were checked)"
    )
    ok(
        f"the aggregator at {result['target']} answered in {result['seconds'] * 1000:.0f} ms: "
        f"connection, {checked}name {name!r} and plan hash all accepted "
        f"(round {result['round']} of {result['rounds_to_train']}){unchecked}"
    )


def warn_if_mistyped(name: str) -> None:
    """Say so when ``name`` is not in plan/data.yaml but a name close to it is: a certificate
    for a typo is a new identity, which the CA would add to the federation."""
    from fedrun.errors import PlanError
    from fedrun.plan.loader import did_you_mean, read_data_paths

    data = Path("plan") / "data.yaml"
    try:
        names = read_data_paths(data) if data.is_file() else {}
    except PlanError:
        return  # a damaged data.yaml is said by the commands that need it
    hint = did_you_mean(name, names)
    if name not in names and hint:
        console().print(
            f"[yellow]note:[/] {name!r} has no entry in {data}{hint}: this request is for a new "
            "collaborator of that name"
        )


@collaborator.command("generate-cert-request")
@name_option
@click.option("-s", "--silent", is_flag=True, help="do not print the CSR hash")
@click.option("-x", "--skip-package", is_flag=True, help="do not write the request zip")
@click.option(
    "--force", is_flag=True, help="replace a key that already has a signed certificate here"
)
@key_type_option
@handle_errors
def generate_cert_request(
    name: str, silent: bool, skip_package: bool, force: bool, key_type: str
) -> None:
    """Make NAME's key and certificate request, and the zip to send to the CA."""
    from fedrun.pki import (
        collaborator_paths,
        generate_csr,
        refuse_to_replace_certified_key,
        request_package_name,
        write_request_package,
    )

    require_workspace(f"the key of {name!r}")
    warn_if_mistyped(name)
    paths = collaborator_paths(Path("cert"), name)
    if not force:
        refuse_to_replace_certified_key(name, paths.key, paths.crt)
    digest = generate_csr(
        name, server=False, key_path=paths.key, csr_path=paths.csr, key_type=key_type
    )
    ok(f"certificate request {paths.csr} (key {paths.key}, never leaves this node)")
    if not skip_package:
        package = Path(request_package_name(name))
        write_request_package(package, paths.csr)
        ok(f"send {package} to the aggregator (certificate authority)")
    if not silent:
        console(stderr=False).print(f"  CSR hash (SHA-384): {digest}  (compare it with the CA's)")


@collaborator.command()
@click.option(
    "-n",
    "--collaborator_name",
    "--collaborator-name",
    "name",
    default=None,
    help="the collaborator's name, checked against the request or certificate package",
)
@click.option("-s", "--silent", is_flag=True, help="sign without confirming the CSR hash")
@click.option(
    "-r",
    "--request-pkg",
    "request_pkg",
    type=click.Path(path_type=Path),
    default=None,
    help="CA side: the collaborator's col_<NAME>_to_agg_cert_request.zip",
)
@click.option(
    "-i",
    "--import",
    "import_pkg",
    type=click.Path(path_type=Path),
    default=None,
    help="collaborator side: the agg_to_col_<NAME>_signed_cert.zip from the CA",
)
@click.option(
    "--force", is_flag=True, help="CA side: sign although the name is certified for another key"
)
@handle_errors
def certify(
    name: str | None,
    silent: bool,
    request_pkg: Path | None,
    import_pkg: Path | None,
    force: bool,
) -> None:
    """Sign a collaborator's request (CA side) or import the signed certificate (collaborator side)."""
    from fedrun.errors import CertificateError

    if import_pkg is not None and (request_pkg is not None or force):
        # two different steps on two different machines: doing one silently skipped the other
        given = "--request-pkg" if request_pkg is not None else "--force"
        raise click.UsageError(
            f"--import (collaborator side) and {given} (CA side) are two different steps: "
            "the CA signs with --request-pkg, the collaborator imports the signed package with "
            "--import; give one of them"
        )
    require_workspace("the certificate")
    if import_pkg is not None:
        from fedrun.pki import import_signed_package

        cert = import_signed_package(import_pkg, Path("cert"), expected_name=name)
        ok(f"imported {cert} and cert/cert_chain.crt")
        return
    from fedrun.pki import (
        collaborator_paths,
        csr_hash,
        load_certificate_authority,
        read_request_package,
        same_public_key,
        sign_request,
        signed_package_name,
        write_signed_package,
    )

    ca = load_certificate_authority(Path("cert"))
    if request_pkg is not None:
        col_name, csr_pem = read_request_package(request_pkg)
        if name is not None and name != col_name:
            raise CertificateError(
                "FX-PKI-014",
                f"{request_pkg} holds the request of {col_name!r}, not {name!r}",
                "sign the package the collaborator sent, without -n or with its name",
            )
    elif name is not None:
        col_name = name
        csr_file = collaborator_paths(Path("cert"), name).csr
        if not csr_file.is_file():
            raise CertificateError(
                "FX-PKI-004",
                f"no certificate request {csr_file}",
                f"pass --request-pkg col_{name}_to_agg_cert_request.zip",
            )
        csr_pem = csr_file.read_bytes()
    else:
        raise click.UsageError(
            "give --request-pkg ZIP (CA side) or --import ZIP (collaborator side)"
        )
    digest = csr_hash(csr_pem)
    console(stderr=False).print(f"CSR hash (SHA-384) of {col_name!r}: {digest}")
    if not silent and not confirm("Does it match the collaborator's? Sign it?"):
        raise not_confirmed(request_pkg or f"the request of {col_name!r}")
    paths = collaborator_paths(Path("cert"), col_name)
    already = same_public_key(paths.crt, csr_pem)
    if already is False and not force:
        raise CertificateError(
            "FX-PKI-020",
            f"{col_name!r} is already certified for another key ({paths.crt}); signing this "
            "request would give the name a second valid certificate",
            f"check who sent {request_pkg or paths.csr}; if {col_name!r} lost its key, pass "
            "--force to sign the new one (the old certificate stays valid until it expires: "
            "fedrun has no revocation list)",
        )
    sign_request(ca, csr_pem, paths.crt, server=False)
    listed = _authorize(col_name)
    package = Path(signed_package_name(col_name))
    write_signed_package(package, paths.crt, ca.chain)
    where = "added to plan/cols.yaml" if listed else "already in plan/cols.yaml"
    ok(f"signed {col_name!r}; {where}; send {package} back to the collaborator")


def _authorize(name: str) -> bool:
    """Add ``name`` to plan/cols.yaml; False when it was there already."""
    import yaml

    path = Path("plan/cols.yaml")
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    data = data or {}
    cols = list(data.get("collaborators") or [])
    if name in cols:
        return False
    cols.append(name)
    data["collaborators"] = cols
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return True
