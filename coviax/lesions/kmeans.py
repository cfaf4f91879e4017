"""The thesis's unsupervised engine: voxel features + mini-batch K-means into 3 clusters.

Candidates are lung voxels denser than -700 HU (aerated lung is below). Each
candidate gets 8 features (:func:`voxel_features`):

====  ==========================================================================
 0    HU
 1-3  eigenvalues of the Hessian at 2 mm, sorted by magnitude (|l1|<=|l2|<=|l3|)
 4-6  Frangi vesselness at 1, 2 and 4 mm (bright tubes: vessels)
 7    local mean HU over a 6 mm cube -- our free choice: it separates a patch of
      ground glass (dense all around) from a thin vessel (dense only along it)
====  ==========================================================================

Mini-batch K-means (scikit-learn) on the standardised features gives 3
clusters, named from their means: the most tube-like is *vessel*, of the other
two the denser is *consolidation* and the lighter *GGO*. Morphological clean-up
then opens the consolidation mask (small consolidation blobs are mostly vessel
cross-sections) and gives tiny isolated GGO specks to the vessels.

The Hessian and Frangi filters are computed here rather than with
``skimage.filters.frangi`` because CT voxels are anisotropic (5 mm slices,
0.8 mm pixels): scales must be in mm per axis, which skimage does not support.
Frangi's formula is the standard one (Frangi et al. 1998, alpha=beta=0.5).
"""

from __future__ import annotations

import cc3d
import numpy as np
from scipy import ndimage
from sklearn.cluster import MiniBatchKMeans

from coviax.labels import Label
from coviax.lesions import LesionLabels

CANDIDATE_HU = -700
HESSIAN_SCALE_MM = 2.0
FRANGI_SCALES_MM = (1.0, 2.0, 4.0)
LOCAL_MEAN_MM = 6.0
FEATURE_NAMES = (
    "hu", "hessian_l1", "hessian_l2", "hessian_l3",
    "frangi_1mm", "frangi_2mm", "frangi_4mm", "local_mean_hu",
)
MAX_FIT_SAMPLES = 200_000
MIN_CONSOLIDATION_ML = 0.05
MIN_GGO_ML = 0.02


class KMeansEngine:
    """Unsupervised lesion engine; ``seed`` makes the clustering reproducible."""

    name = "kmeans"

    def __init__(self, seed: int = 0, model: MiniBatchKMeans | None = None, scaler=None):
        self.seed = seed
        self.model = model  # a fitted model shared across scans (the trainer fits one on many)
        self.scaler = scaler

    def segment(self, volume, lungs) -> LesionLabels:
        cavity = lungs.cavity
        labels = np.where(cavity, np.uint8(Label.HEALTHY_LUNG), np.uint8(Label.BACKGROUND))
        candidates = cavity & (volume.hu > CANDIDATE_HU)
        n = int(candidates.sum())
        if n < 30:
            return LesionLabels(labels, self.name, "kmeans:unsupervised", notes=["no dense lung voxels"])
        features = voxel_features(volume, candidates)
        clusters, names = self.cluster(features)
        zyx = np.nonzero(candidates)
        labels[zyx] = names[clusters]
        labels = clean_up(labels, volume.voxel_volume_ml)
        return LesionLabels(labels, self.name, "kmeans:unsupervised")

    def cluster(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cluster ids per row and the Label of each cluster."""
        if self.model is not None:
            mean, std = self.scaler
            clusters = self.model.predict((features - mean) / std)
            return clusters, name_clusters(features, clusters)
        mean = features.mean(axis=0)
        std = features.std(axis=0) + 1e-6
        scaled = (features - mean) / std
        rng = np.random.default_rng(self.seed)
        sample = scaled[rng.choice(len(scaled), min(len(scaled), MAX_FIT_SAMPLES), replace=False)]
        model = MiniBatchKMeans(n_clusters=3, random_state=self.seed, batch_size=4096, n_init=3)
        model.fit(sample)
        clusters = model.predict(scaled)
        return clusters, name_clusters(features, clusters)


def name_clusters(features: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Label per cluster id: most vessel-like -> VESSEL, then denser -> CONSOLIDATION, lighter -> GGO."""
    ids = np.arange(3)
    vesselness = np.array([features[clusters == i, 4:7].max(axis=1).mean() if (clusters == i).any() else -1 for i in ids])
    hu = np.array([features[clusters == i, 0].mean() if (clusters == i).any() else -np.inf for i in ids])
    names = np.empty(3, dtype=np.uint8)
    vessel = int(np.argmax(vesselness))
    rest = [i for i in ids if i != vessel]
    dense, light = (rest[0], rest[1]) if hu[rest[0]] >= hu[rest[1]] else (rest[1], rest[0])
    names[vessel], names[dense], names[light] = Label.VESSEL, Label.CONSOLIDATION, Label.GGO
    return names


def voxel_features(volume, candidates: np.ndarray) -> np.ndarray:
    """The 8 features (see module docstring) of each candidate voxel, float32 (n, 8).

    Filters run on the bounding box of the candidates only, and each filtered
    array is sampled at the candidates at once, so peak memory stays a few
    copies of the cropped volume.
    """
    box = _bbox(candidates, pad=6)
    hu = volume.hu[box].astype(np.float32)
    inside = candidates[box]
    index = np.nonzero(inside)
    spacing = np.asarray(volume.spacing_zyx, dtype=np.float64)
    out = np.empty((len(index[0]), 8), dtype=np.float32)
    out[:, 0] = hu[index]
    eig_by_scale = {}
    for scale in sorted(set(FRANGI_SCALES_MM) | {HESSIAN_SCALE_MM}):
        eig_by_scale[scale] = hessian_eigenvalues(hu, index, scale, spacing)
    out[:, 1:4] = eig_by_scale[HESSIAN_SCALE_MM]
    for column, scale in enumerate(FRANGI_SCALES_MM, start=4):
        out[:, column] = frangi_from_eigenvalues(eig_by_scale[scale])
    size = np.maximum(1, np.round(LOCAL_MEAN_MM / spacing)).astype(int)
    out[:, 7] = ndimage.uniform_filter(hu, size=size)[index]
    return out


def hessian_eigenvalues(hu: np.ndarray, index, scale_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Scale-normalised Hessian eigenvalues at ``index``, sorted by magnitude, (n, 3)."""
    sigma = np.maximum(scale_mm / spacing, 0.5)
    n = len(index[0])
    hessian = np.empty((n, 3, 3), dtype=np.float32)
    for a in range(3):
        for b in range(a, 3):
            order = [0, 0, 0]
            order[a] += 1
            order[b] += 1
            # derivative in voxels -> per mm, then scale-normalise by sigma^2 (mm)
            d = ndimage.gaussian_filter(hu, sigma=sigma, order=order)[index]
            d *= scale_mm**2 / (spacing[a] * spacing[b])
            hessian[:, a, b] = d
            hessian[:, b, a] = d
    eig = np.linalg.eigvalsh(hessian)
    order = np.argsort(np.abs(eig), axis=1)
    return np.take_along_axis(eig, order, axis=1)


def frangi_from_eigenvalues(eig: np.ndarray, alpha: float = 0.5, beta: float = 0.5) -> np.ndarray:
    """Frangi vesselness for bright tubes from magnitude-sorted eigenvalues (n, 3)."""
    l1, l2, l3 = np.abs(eig[:, 0]), np.abs(eig[:, 1]), np.abs(eig[:, 2])
    l3 = np.maximum(l3, 1e-6)
    ra = l2 / l3  # plate vs line
    rb = l1 / np.sqrt(np.maximum(l2 * l3, 1e-12))  # blob vs line
    s = np.sqrt(l1**2 + l2**2 + l3**2)
    c = max(float(s.max()) / 2.0, 1e-6)
    v = (1 - np.exp(-(ra**2) / (2 * alpha**2))) * np.exp(-(rb**2) / (2 * beta**2)) * (1 - np.exp(-(s**2) / (2 * c**2)))
    bright = (eig[:, 1] < 0) & (eig[:, 2] < 0)
    return np.where(bright, v, 0.0).astype(np.float32)


def clean_up(labels: np.ndarray, voxel_ml: float) -> np.ndarray:
    """Open consolidation, hand tiny consolidation and GGO specks to the vessels."""
    cons = labels == Label.CONSOLIDATION
    if cons.any():
        opened = ndimage.binary_opening(cons, structure=ndimage.generate_binary_structure(3, 1))
        opened = cc3d.dust(opened, threshold=max(1, int(MIN_CONSOLIDATION_ML / voxel_ml)), connectivity=26)
        labels[cons & ~opened] = Label.VESSEL
    ggo = labels == Label.GGO
    if ggo.any():
        kept = cc3d.dust(ggo, threshold=max(1, int(MIN_GGO_ML / voxel_ml)), connectivity=26)
        labels[ggo & ~kept] = Label.VESSEL
    return labels


def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, slice, slice]:
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(0, int(nz[0]) - pad), min(mask.shape[axis], int(nz[-1]) + 1 + pad)))
    return tuple(box)
