"""fedrun's public key infrastructure: CA, participant keys and certificates, packages.

Everything lives under a workspace's ``cert/`` directory, laid out as OpenFL does::

    ca/root-ca.crt  ca/root-ca/private/root-ca.key
    ca/signing-ca.csr  ca/signing-ca.crt  ca/signing-ca/private/signing-ca.key
    cert_chain.crt                                  (root CA + signing CA: the trust anchor)
    server/agg_<fqdn>.{key,csr,crt}                 (aggregator)
    client/col_<name>.{key,csr,crt}                 (collaborators)

Private keys are unencrypted PEM, mode 0600, in directories of mode 0700. Keys are ECDSA
P-384 by default (``key_type="rsa"`` gives RSA-3072).

Error codes (all :class:`fedrun.errors.CertificateError`):

==========  =================================================================================
FX-PKI-001  no CA in this workspace, or its files do not belong together
FX-PKI-002  a CA already exists and was not replaced
FX-PKI-003  invalid collaborator name or aggregator host name
FX-PKI-004  a required file (CSR, certificate, key, chain, package) is missing
FX-PKI-005  a file is unreadable or not a valid key / CSR / certificate / chain
FX-PKI-006  a certificate request's signature does not verify (altered or corrupt)
FX-PKI-007  a certificate request asks for the wrong usage, a CA, odd names or a weak key
FX-PKI-008  a certificate is not signed by this federation's CA (another CA, or altered)
FX-PKI-009  a certificate (participant or CA) has expired
FX-PKI-010  a certificate is not valid yet (clock skew)
FX-PKI-011  a package is not a readable zip file (corrupt or truncated)
FX-PKI-012  a package holds an unsafe entry (``..``, absolute path, link, private key)
FX-PKI-013  a package does not hold the expected files (no CSR, several, too large...)
FX-PKI-014  a name does not match (CN versus file name, or versus the expected name)
FX-PKI-015  a signed package comes from another federation (its chain differs from ours)
FX-PKI-016  a certificate does not match the local private key
FX-PKI-017  unsupported key type
FX-PKI-018  a certificate has the wrong role (a CA, or server where client is needed...)
FX-PKI-019  invalid certificate lifetime
FX-PKI-020  a name is already certified (a new key or a second certificate needs --force)
FX-PKI-021  the CA operator did not confirm a certificate request's hash (not signed)
==========  =================================================================================
"""

from __future__ import annotations

from fedrun.pki.authority import (
    CertificateAuthority,
    create_certificate_authority,
    load_certificate_authority,
)
from fedrun.pki.identity import (
    CertificateChain,
    certificate_common_name,
    certificate_fingerprint,
    load_certificate,
    parse_certificate,
    parse_chain,
    verify_certificate,
)
from fedrun.pki.keys import (
    DEFAULT_KEY_TYPE,
    KEY_TYPES,
    generate_private_key,
    load_private_key,
    public_keys_match,
)
from fedrun.pki.layout import (
    ParticipantPaths,
    aggregator_paths,
    chain_path,
    collaborator_paths,
    request_package_name,
    signed_certificate_paths,
    signed_package_name,
)
from fedrun.pki.names import (
    default_fqdn,
    is_ip_address,
    validate_collaborator_name,
    validate_fqdn,
)
from fedrun.pki.packages import (
    import_signed_package,
    read_request_package,
    write_request_package,
    write_signed_package,
)
from fedrun.pki.profile import DEFAULT_DAYS
from fedrun.pki.requests import (
    csr_hash,
    generate_csr,
    load_csr,
    parse_csr,
    refuse_to_replace_certified_key,
    same_public_key,
)
from fedrun.pki.signing import sign_csr, sign_request

__all__ = [
    "DEFAULT_DAYS",
    "DEFAULT_KEY_TYPE",
    "KEY_TYPES",
    "CertificateAuthority",
    "CertificateChain",
    "ParticipantPaths",
    "aggregator_paths",
    "certificate_common_name",
    "certificate_fingerprint",
    "chain_path",
    "collaborator_paths",
    "create_certificate_authority",
    "csr_hash",
    "default_fqdn",
    "generate_csr",
    "refuse_to_replace_certified_key",
    "same_public_key",
    "generate_private_key",
    "import_signed_package",
    "is_ip_address",
    "load_certificate",
    "load_certificate_authority",
    "load_csr",
    "load_private_key",
    "parse_certificate",
    "parse_chain",
    "parse_csr",
    "public_keys_match",
    "read_request_package",
    "request_package_name",
    "sign_csr",
    "sign_request",
    "signed_certificate_paths",
    "signed_package_name",
    "validate_collaborator_name",
    "validate_fqdn",
    "verify_certificate",
    "write_request_package",
    "write_signed_package",
]
