"""May this model's weights be fetched? Models whose terms restrict their use (InsightFace's:
non-commercial research only) are fetched only when the user accepts those terms."""

from __future__ import annotations

from identity.errors import LicenseNotAcceptedError
from identity.faces.models.manifest import ModelSpec


def fetch_command(spec: ModelSpec) -> str:
    """The command that obtains a model's weights, with the acceptance its licence needs."""
    accept = " --accept-license" if spec.license.requires_acceptance else ""
    return f"identity models fetch {spec.name}{accept}"


def check_license(spec: ModelSpec, *, accept_license: bool) -> None:
    """Raise LicenseNotAcceptedError when the model's terms need acceptance not given."""
    if spec.license.requires_acceptance and not accept_license:
        url = f" ({spec.license.url})" if spec.license.url else ""
        raise LicenseNotAcceptedError(
            f"model {spec.name!r} is licensed as: {spec.license.summary}{url}. It may not be used "
            f"commercially. Rerun with --accept-license to accept these terms and fetch it; "
            f"commercial users can use a model whose licence allows it (`identity models list`)."
        )
