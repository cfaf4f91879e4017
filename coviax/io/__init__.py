"""Reading a chest CT: DICOM series (folder or zip), NIfTI, MHA or NRRD -> :class:`Volume`.

The first stage of the pipeline. Everything downstream works on ``Volume.hu``,
an int16 array of Hounsfield units indexed (z, y, x), and uses the geometry kept
here (spacing, origin, direction) to put every output back in the source space.

pydicom parses the DICOM headers and decodes the pixel data (with the pylibjpeg
plugins for JPEG 2000, JPEG-LS, JPEG lossless and RLE -- chosen explicitly, see
:data:`coviax.io.pixels.DECODER_PREFERENCE`); SimpleITK reads the research formats. The checks
on a series are written here because no library gives an error a person can act
on ("slice 23 is missing between z=-120.0 and z=-110.0 mm") -- SimpleITK's
series reader silently sorts and stacks whatever it is given.

Identifiers in DICOM headers (names, IDs) are never put into a message or a log:
messages name files, tags and values of geometry only.

One module a responsibility:

==================  ==========================================================================
``reader``          :func:`read_scan`, the one entry: folder, zip or research file
``volume``          :class:`Volume`, the HU range, :func:`check_plausible_hu`
``archive``         zip archives unpacked safely (no traversal, links or bombs)
``nifti``           NIfTI, MHA/MHD, NRRD through SimpleITK
``series``          a folder's DICOM files grouped, the CT series chosen, stacked into a Volume
``dicom_file``      one DICOM file parsed within limits, every element checked
``geometry``        the slices' orientation, size, spacing and order along the normal
``pixels``          :func:`slice_to_hu` (the service's streamed slices use it too)
``tags``            checked values of DICOM tags for messages that name the tag
==================  ==========================================================================
"""

from coviax.io.pixels import slice_to_hu
from coviax.io.reader import read_scan
from coviax.io.volume import HU_MAX, HU_MIN, Volume, check_plausible_hu

__all__ = ["read_scan", "Volume", "slice_to_hu", "check_plausible_hu", "HU_MIN", "HU_MAX"]
