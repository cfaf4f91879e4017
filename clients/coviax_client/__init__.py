"""COViaX client: the SDK (:class:`CoviaxClient`), the ``coviax-client`` CLI and a DICOM C-STORE listener.

Needs only grpcio, protobuf, pydicom and numpy (rich for progress bars and
pynetdicom for the listener, both optional); never torch or the COViaX core.
Research use only; not a medical device.
"""

from coviax_client.files import deidentify_dataset
from coviax_client.sdk import ArtifactInfo, CoviaxClient, CoviaxClientError, Result

__all__ = ["CoviaxClient", "CoviaxClientError", "Result", "ArtifactInfo", "deidentify_dataset"]
