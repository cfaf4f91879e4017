"""COViaX client: the SDK (:class:`CoviaxClient`), the ``coviax-client`` CLI and a DICOM C-STORE listener.

Its own distribution (clients/pyproject.toml, ``pip install ./clients``): grpcio, protobuf and pydicom;
the extras ``dicom`` (pynetdicom: the C-STORE listener and sender), ``progress`` (rich: progress bars)
and ``arrays`` (numpy: :meth:`CoviaxClient.segment_array`). Never torch, numpy-only science or the
COViaX core (tests/test_client_package.py imports it with those blocked).
Research use only; not a medical device.
"""

from coviax_client.files import deidentify_dataset
from coviax_client.results import ArtifactInfo, CoviaxClientError, Result
from coviax_client.sdk import CoviaxClient

__all__ = ["CoviaxClient", "CoviaxClientError", "Result", "ArtifactInfo", "deidentify_dataset"]
