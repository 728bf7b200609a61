"""May this model's weights be fetched? Models whose terms restrict their use (InsightFace's:
non-commercial research only) are fetched only when the user accepts those terms. The same
holds for a detector's weights (SCRFD's are InsightFace's too)."""

from __future__ import annotations

from identity.errors import LicenseNotAcceptedError
from identity.faces.models.manifest import DetectorSpec, Weighted


def fetch_command(spec: Weighted) -> str:
    """The command that obtains a model's (or a detector's) weights, with the acceptance its
    licence needs."""
    accept = " --accept-license" if spec.license.requires_acceptance else ""
    what = f"--detector {spec.name}" if isinstance(spec, DetectorSpec) else spec.name
    return f"identity models fetch {what}{accept}"


def check_license(spec: Weighted, *, accept_license: bool) -> None:
    """Raise LicenseNotAcceptedError when the terms of its weights need acceptance not given."""
    if spec.license.requires_acceptance and not accept_license:
        url = f" ({spec.license.url})" if spec.license.url else ""
        instead = ("keep the default detector, mtcnn (MIT)" if isinstance(spec, DetectorSpec)
                   else "use a model whose licence allows it (`identity models list`)")
        raise LicenseNotAcceptedError(
            f"the weights of {spec.label} are licensed as: {spec.license.summary}{url}. They may "
            f"not be used commercially. Rerun with --accept-license to accept these terms and "
            f"fetch them; commercial users can {instead}."
        )
