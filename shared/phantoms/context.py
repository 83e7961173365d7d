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
REACH_END_SHARE = (0.25, 0.75)
"""With a reach (:func:`make_lookalikes`): where between the band and the reach a lesion's end may fall."""
REACH_TUBE_MM = (0.0, 10.0)
"""With a reach: how far beyond it a look-alike runs (mm, drawn uniformly)."""


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
    rng: np.random.Generator,
    lesions: list[ct.Lesion],
    band: float,
    reach: float | None = None,
    max_lookalikes: int | None = None,
) -> tuple[list[ct.Lesion], set[int]]:
    """Flatten every lesion along z to end :data:`LESION_END_BANDS` bands from its centre, then turn some of them
    (at least one, never all; none of a single lesion) into :class:`Tube` look-alikes running
    :data:`TUBE_HALF_LENGTH_MM` each way; return the objects and the indices of the look-alikes. The roles are drawn
    after the objects, so a look-alike's site, size and HU follow the lesions' distribution.

    ``reach``: the farthest distance (mm) from the centre that an image of the bag the phantoms are made for reads
    (the last volume slice it interpolates from). Then every lesion keeps the z radius of a round lesion (its mean
    in-plane radius) clipped to end within the reach, :data:`REACH_END_SHARE` of the way from the band to it, and
    look-alikes run :data:`REACH_TUBE_MM` beyond the reach: the bag sees every lesion end at every slice thickness,
    and a look-alike adds no more than it needs to be told apart. ``max_lookalikes``: at most that many look-alikes
    (still at least one of two or more objects, when positive)."""
    objects = []
    for lesion in lesions:
        shape = lesion.shape
        if reach is None:
            end = band * rng.uniform(*LESION_END_BANDS)
        else:
            low, high = (band + share * (reach - band) for share in REACH_END_SHARE)
            end = float(np.clip((shape.radii[0] + shape.radii[1]) / 2, low, high))
        objects.append(
            dataclasses.replace(lesion, shape=ct.Ellipsoid(shape.center, (*shape.radii[:2], end), shape.angle))
        )
    count = int(rng.integers(1, len(objects))) if len(objects) > 1 else 0
    count = count if max_lookalikes is None else min(count, max_lookalikes)
    lookalikes = {int(i) for i in rng.permutation(len(objects))[:count]}
    for i in lookalikes:
        length = rng.uniform(*TUBE_HALF_LENGTH_MM) if reach is None else reach + rng.uniform(*REACH_TUBE_MM)
        objects[i] = dataclasses.replace(objects[i], shape=Tube(objects[i].shape, band, length))
    return objects, lookalikes
