"""3D reconstruction: surface meshes of the lung cavity, GGO and consolidation.

Three modules: :mod:`.surface` makes the meshes, :mod:`.formats` writes them (glTF, STL) and
:mod:`.render` draws the anterior view. The names below are what the pipeline uses.

Per structure: the binary mask is cropped to its bounding box, block-averaged
to a grid of about ``target_mm`` (2.5 mm; never finer than the voxels, so 5 mm
slices stay as they are) -- a partial-volume fraction, so the coarser grid keeps
the volume -- padded with one empty cell all round so that every surface
closes, and contoured with marching cubes (scikit-image):

- the lung cavity at 0.5 (the voxel boundary);
- GGO and consolidation, which a voxel classifier leaves speckled, after a
  light in-plane blur at the level whose surface encloses the mask's voxel
  volume (to a few %): the envelope of the hazy region, not hundreds of
  thousands of single-voxel specks (at 0.5 most of a speckled GGO vanishes).

The few triangle-sized holes marching cubes leaves where it drops degenerate
triangles are closed, a few Taubin lambda/mu iterations smooth the staircase
without the shrinking of plain Laplacian smoothing, and decimation keeps each
structure under ``max_faces`` triangles by contouring again on a coarser grid
(which keeps the surface closed and its volume). Vertices are in patient LPS
millimetres, mapped from voxel indices with the scan's origin, spacing and
direction, so a mesh lines up with the DICOM series and with the blob
centroids of the report.

Files:

- ``lungs_3d.glb``: glTF 2.0 binary, one mesh per structure with its colour
  (lung semi-transparent). The vertex data are LPS mm; a root node turns them
  into glTF's metres, Y up (superior), Z towards the viewer (anterior), so a
  glTF viewer opens on the anterior view with the patient's right on the left.
- ``lung.stl``, ``ggo.stl``, ``consolidation.stl``: binary STL in LPS mm.
- ``render_3d.png``: the three together from the front (anterior view,
  orthographic), the lung semi-transparent.

Nothing here reads patient identifiers.
"""

from coviax.export.mesh.formats import write_glb, write_mesh_files, write_stl
from coviax.export.mesh.render import RENDER_TITLE, render_png
from coviax.export.mesh.surface import STRUCTURES, Mesh, mesh_from_mask, meshes_for, structure_masks

__all__ = ["RENDER_TITLE", "STRUCTURES", "Mesh", "mesh_from_mask", "meshes_for", "render_png", "structure_masks",
           "write_glb", "write_mesh_files", "write_stl"]
