"""Context look-alikes: objects drawn as lesions, of which some run on through the slices as tubes.

Within a band of slices around an object's centre a look-alike is the lesion it was drawn as; beyond the band the
lesion ends within a few slices while the look-alike keeps its cross-section, like a vessel. An image that reads
only slices inside the band cannot tell the two apart; one that reads slices beyond it can. Used by the DeepLesion
and LiTS phantom writers (``context=True``).
"""

import dataclasses
import math

import numpy as np

from shared.phantoms import ct

LOOKALIKES_NAME = "context_lookalikes.json"
"""File beside the phantoms that locates the look-alikes (they are in no annotation)."""

TUBE_HALF_LENGTH_MM = (30.0, 60.0)
"""A look-alike runs this far (mm, drawn uniformly) each way from its centre."""
LESION_END_BANDS = (1.45, 1.6)
"""An object's z radius, in bands (drawn uniformly): a lesion ends just beyond the band."""


def band_mm(interval: float, reach_mm: float, margin_slices: int) -> float:
    """Half-thickness (mm) of the band for slices ``interval`` mm apart, one of them at the object's centre: the
    farthest slice an image reaching ``reach_mm`` from the centre reads (interpolating between the slices around
    each position), plus ``margin_slices`` slices for the phantom's blur across slices."""
    return interval * (math.ceil(reach_mm / interval - 1e-9) + margin_slices)


@dataclasses.dataclass(frozen=True)
class Tube:
    """A look-alike of a context lesion: the lesion's ellipsoid ``blob`` within ``band`` mm of its centre, then the
    blob's cross-section at ``band`` continued straight along z up to ``half_length`` mm from the centre, like a
    vessel running through the slices. ``center`` and ``radii`` are the blob's (what lesion placement spaces by)."""

    blob: ct.Ellipsoid
    band: float
    half_length: float

    @property
    def center(self) -> tuple[float, float, float]:
        return self.blob.center

    @property
    def radii(self) -> tuple[float, float, float]:
        return self.blob.radii

    def contains(self, x, y, z, scale: float = 1.0):
        dz = z - self.blob.center[2]
        clamped = self.blob.center[2] + np.clip(dz, -self.band, self.band)
        return self.blob.contains(x, y, clamped, scale) & (np.abs(dz) <= self.half_length)


def make_lookalikes(
    rng: np.random.Generator, lesions: list[ct.Lesion], band: float
) -> tuple[list[ct.Lesion], set[int]]:
    """Flatten every lesion along z to end :data:`LESION_END_BANDS` bands from its centre, then turn some of them
    (at least one, never all; none of a single lesion) into :class:`Tube` look-alikes running
    :data:`TUBE_HALF_LENGTH_MM` each way; return the objects and the indices of the look-alikes. The roles are drawn
    after the objects, so a look-alike's site, size and HU follow the lesions' distribution."""
    objects = []
    for lesion in lesions:
        shape = lesion.shape
        radii = (shape.radii[0], shape.radii[1], band * rng.uniform(*LESION_END_BANDS))
        objects.append(dataclasses.replace(lesion, shape=ct.Ellipsoid(shape.center, radii, shape.angle)))
    count = int(rng.integers(1, len(objects))) if len(objects) > 1 else 0
    lookalikes = {int(i) for i in rng.permutation(len(objects))[:count]}
    for i in lookalikes:
        tube = Tube(objects[i].shape, band, rng.uniform(*TUBE_HALF_LENGTH_MM))
        objects[i] = dataclasses.replace(objects[i], shape=tube)
    return objects, lookalikes
