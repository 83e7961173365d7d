"""Seeded abdominal CT phantoms in HU on a RAS voxel grid, with organ and lesion maps on the same grid.

One generator shared by the KiTS19, LiTS and DeepLesion phantom writers. World coordinates are RAS millimetres
(x toward the patient's right, y anterior, z superior; z = 0 is about the level of the renal hila). In each axial
plane: air (-1000 HU) around an elliptic body with subcutaneous fat (~-100), a muscle wall (~50) and visceral fat,
bowel loops (~30) with gas, the spine (cortical ~900, cancellous ~300, discs, canal) with paraspinal and psoas
muscles, ribs in the upper abdomen, the aorta and IVC, the liver (~60) on the right with brighter vessels, the
gallbladder (~10) under it, the spleen on the left, two contrast-enhanced kidneys (~150) beside the spine, cysts
(~10, look-alikes of lesions outside the liver and inside the kidneys) and the requested lesions, painted last.
The image is slightly blurred and gets Gaussian noise (10-20 HU). Position, size and rotation of every structure
are drawn per case, so that a model has to learn the appearance rather than a fixed place.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from scipy import ndimage

ORGANS = ("air", "fat", "muscle", "bone", "bowel", "vessel", "liver", "gallbladder", "spleen", "kidney", "cyst")
"""Organ codes of :attr:`Phantom.organs`: the index in this tuple (renal cysts count as kidney, as in KiTS19)."""
ORGAN = {name: code for code, name in enumerate(ORGANS)}

LESION_SITES = ("liver", "kidney", "spleen", "bone", "soft_tissue", "abdomen")
"""Where :class:`LesionRequest` can place a lesion (kidney lesions are the renal tumours of KiTS19)."""

_BLUR_TRUNCATE = 4.0  # the blur kernel's half-width in sigmas
_CYLINDER = 1e5  # z radius (mm) that turns an ellipsoid into an elliptic cylinder along z


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid in world mm, rotated by ``angle`` (radians) about the z axis."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    angle: float = 0.0

    def level(self, x, y, z):
        """Squared normalised radius at world points (broadcast arrays): <= 1 inside, <= s**2 inside scale s."""
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        u = (cos * dx + sin * dy) / self.radii[0]
        v = (-sin * dx + cos * dy) / self.radii[1]
        return u * u + v * v + (dz / self.radii[2]) ** 2

    def contains(self, x, y, z, scale: float = 1.0):
        return self.level(x, y, z) <= scale * scale


@dataclass(frozen=True)
class LesionRequest:
    """A lesion to place: its site (one of :data:`LESION_SITES`), diameter in mm, and optionally its centre's z."""

    site: str
    diameter_mm: float
    z_mm: float | None = None


@dataclass(frozen=True)
class Lesion:
    """A placed lesion: site, shape, HU, and the HU of a necrotic core (inner half) if it has one.

    ``texture_seed``: draw the lesion's texture from its own generator over the whole grid, so that a voxel's texture
    does not depend on the lesion's extent (nor the rest of the case on it); None draws it from the case's generator.
    """

    site: str
    shape: Ellipsoid
    hu: float
    core_hu: float | None = None
    texture_seed: int | None = None


@dataclass
class Phantom:
    """A rendered case: ``hu`` (float32 HU), ``organs`` (uint8 codes of :data:`ORGANS`), ``lesions`` (uint8: 0 none,
    i + 1 inside ``lesion_list[i]``), all of shape (nx, ny, nz) in RAS order, and the RAS ``affine`` (voxel -> mm)."""

    hu: np.ndarray
    organs: np.ndarray
    lesions: np.ndarray
    lesion_list: list[Lesion]
    affine: np.ndarray

    def lesion_mask(self, site: str) -> np.ndarray:
        """Voxels inside any lesion of ``site``."""
        ids = [i + 1 for i, lesion in enumerate(self.lesion_list) if lesion.site == site]
        return np.isin(self.lesions, ids)


@dataclass
class Anatomy:
    """The sampled geometry of one patient (world mm) and the HU of each tissue."""

    body: Ellipsoid
    fat_scale: float  # inner edge of the subcutaneous fat, as a scale of the body ellipse
    cavity_scale: float  # inner edge of the muscle wall
    spine: Ellipsoid
    canal: Ellipsoid
    muscles: list[Ellipsoid]
    ribs: list[Ellipsoid]
    aorta: Ellipsoid
    ivc: Ellipsoid
    liver: list[Ellipsoid]
    liver_vessels: list[Ellipsoid]
    gallbladder: Ellipsoid | None
    spleen: Ellipsoid
    kidneys: list[Ellipsoid]
    bowel: list[Ellipsoid]
    gas: list[Ellipsoid]
    cysts: list[Ellipsoid]
    hu: dict[str, float] = field(default_factory=dict)

    def inside(self, site: str) -> Callable:
        """Predicate ``f(x, y, z) -> bool array`` for where a lesion centre of ``site`` may lie."""

        def union(shapes, scale):
            return lambda x, y, z: np.logical_or.reduce([s.contains(x, y, z, scale) for s in shapes])

        cavity = lambda x, y, z: self.body.contains(x, y, z, self.cavity_scale * 0.95)  # noqa: E731
        organs = union([*self.liver, self.spleen, *self.kidneys, self.spine, *self.muscles, self.aorta, self.ivc], 1.2)
        predicates = {
            "liver": lambda x, y, z: union(self.liver, 0.8)(x, y, z) & cavity(x, y, z),
            "kidney": union(self.kidneys, 0.9),
            "spleen": union([self.spleen], 0.7),
            "bone": union([self.spine], 0.6),
            "soft_tissue": lambda x, y, z: self.body.contains(x, y, z, 0.97) & ~self.body.contains(x, y, z, 0.9),
            "abdomen": lambda x, y, z: cavity(x, y, z) & ~organs(x, y, z),
        }
        return predicates[site]


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient: sizes, positions and rotations vary around adult averages (mm)."""
    u = rng.uniform
    a, b = u(130, 165), u(95, 125)  # body semi-axes (left-right, antero-posterior)
    body = Ellipsoid((u(-5, 5), u(-5, 5), 0.0), (a, b, _CYLINDER), u(-0.05, 0.05))
    cx, cy = body.center[:2]
    spine_y = cy - b * u(0.45, 0.55)
    r_spine = u(15, 20)
    spine = Ellipsoid((cx, spine_y, 0.0), (r_spine * 1.15, r_spine, _CYLINDER))
    canal = Ellipsoid((cx, spine_y - r_spine - 9, 0.0), (7, 6, _CYLINDER))
    muscles = [
        Ellipsoid((cx + side * u(22, 30), spine_y - r_spine - u(12, 18), 0.0), (u(18, 24), u(13, 18), _CYLINDER))
        for side in (-1, 1)  # paraspinal
    ] + [
        Ellipsoid((cx + side * (r_spine + u(12, 18)), spine_y + u(0, 8), -60.0), (u(10, 14), u(12, 16), u(60, 80)))
        for side in (-1, 1)  # psoas, growing toward the pelvis
    ]
    ribs = []
    for angle in np.linspace(0.4, np.pi - 0.4, 9) + u(-0.1, 0.1):
        ribs.append(Ellipsoid((cx + a * 0.9 * np.cos(angle), cy + b * 0.9 * np.sin(angle), 110.0), (6, 4, 40), angle))
    aorta = Ellipsoid((cx - u(10, 20), spine_y + r_spine + u(12, 16), 0.0), (u(9, 13),) * 2 + (_CYLINDER,))
    ivc = Ellipsoid((cx + u(20, 30), spine_y + r_spine + u(14, 20), 0.0), (u(10, 14), u(8, 11), _CYLINDER))
    liver_c = (cx + a * u(0.35, 0.5), cy + b * u(-0.05, 0.15), u(45, 70))
    liver = [
        Ellipsoid(liver_c, (a * u(0.4, 0.5), b * u(0.6, 0.75), u(65, 85)), u(-0.3, 0.3)),
        Ellipsoid((cx + u(-25, 5), cy + b * u(0.2, 0.35), liver_c[2] + u(10, 25)), (u(40, 60), u(30, 45), u(35, 50))),
    ]
    liver_vessels = [
        Ellipsoid((liver_c[0] + u(-20, 20), liver_c[1] + u(-20, 20), liver_c[2]), (u(3, 5), u(3, 5), 60), u(0, 3)),
        Ellipsoid((liver_c[0] - u(10, 30), liver_c[1], liver_c[2] - u(0, 20)), (u(25, 45), u(4, 6), u(4, 6)), u(0, 3)),
    ]
    gallbladder = None
    if rng.random() < 0.8:
        gallbladder = Ellipsoid(
            (liver_c[0] - u(20, 40), liver_c[1] + b * u(0.15, 0.3), liver_c[2] - u(30, 50)),
            (u(12, 18), u(15, 22), u(25, 35)),
            u(-0.5, 0.5),
        )
    spleen = Ellipsoid(
        (cx - a * u(0.5, 0.65), cy - b * u(0.1, 0.3), u(40, 60)), (u(20, 30), u(40, 55), u(40, 55)), u(0.3, 0.9)
    )
    kidneys = []
    for side, dz in ((1, u(-15, 0)), (-1, u(0, 15))):  # the right kidney sits lower than the left
        centre = (cx + side * (r_spine + u(35, 50)), spine_y + u(0, 15), dz)
        kidneys.append(Ellipsoid(centre, (u(22, 28), u(30, 36), u(48, 60)), side * u(0.3, 0.7)))
    bowel = [
        Ellipsoid((cx + u(-0.6, 0.4) * a, cy + u(0, 0.7) * b, u(-110, 40)), (u(12, 30), u(12, 30), u(20, 60)), u(0, 3))
        for _ in range(int(rng.integers(5, 10)))
    ]
    gas = [
        Ellipsoid(loop.center, tuple(r * u(0.2, 0.5) for r in loop.radii), loop.angle)
        for loop in bowel
        if rng.random() < 0.5
    ]
    cysts = []
    for _ in range(int(rng.integers(0, 3))):
        host = kidneys[int(rng.integers(2))] if rng.random() < 0.5 else spleen
        offset = rng.normal(size=3)
        offset *= 0.6 / np.linalg.norm(offset)
        centre = tuple(c + o * r for c, o, r in zip(host.center, offset, host.radii))
        cysts.append(Ellipsoid(centre, (u(4, 12),) * 3))
    hu = {
        "air": -1000.0,
        "fat": u(-110, -90),
        "visceral_fat": u(-100, -80),
        "muscle": u(40, 60),
        "cortical": u(700, 1000),
        "cancellous": u(250, 400),
        "disc": u(70, 100),
        "canal": u(0, 20),
        "rib": u(400, 700),
        "aorta": u(150, 220),
        "ivc": u(100, 140),
        "liver": u(55, 70),
        "liver_vessel": u(110, 150),
        "gallbladder": u(0, 20),
        "spleen": u(90, 120),
        "kidney": u(140, 170),
        "bowel": u(20, 45),
        "gas": u(-950, -800),
        "cyst": u(0, 20),
    }
    return Anatomy(
        body, u(0.88, 0.94), u(0.8, 0.86), spine, canal, muscles, ribs, aorta, ivc, liver, liver_vessels,
        gallbladder, spleen, kidneys, bowel, gas, cysts, hu,
    )  # fmt: skip


_LESION_HU = {  # (low, high) HU of lesion tissue per site
    "liver": (10, 40),  # hypodense metastases / HCC in portal venous phase
    "kidney": (80, 100),  # renal cell carcinoma, less enhancing than cortex
    "spleen": (20, 50),
    "bone": (80, 200),  # lytic
    "soft_tissue": (20, 50),
    "abdomen": (35, 60),  # lymph nodes, peritoneal masses
}


def place_lesion(
    rng: np.random.Generator,
    anatomy: Anatomy,
    request: LesionRequest,
    placed: Sequence[Lesion] = (),
    z_range: tuple[float, float] = (-120.0, 150.0),
):
    """Draw a lesion of the requested site/size inside its organ, not overlapping ``placed``; None if impossible.

    Without a requested z, the centre's z is drawn in ``z_range`` (mm), e.g. the field of view being rendered.
    """
    if request.site not in LESION_SITES:
        raise ValueError(f"unknown lesion site {request.site!r}: choose one of {', '.join(LESION_SITES)}")
    inside = anatomy.inside(request.site)
    a, b = anatomy.body.radii[:2]
    radius = request.diameter_mm / 2
    for _ in range(200):
        x = rng.uniform(-a, a, 64) + anatomy.body.center[0]
        y = rng.uniform(-b, b, 64) + anatomy.body.center[1]
        z = np.full(64, request.z_mm) if request.z_mm is not None else rng.uniform(*z_range, 64)
        ok = inside(x, y, z)
        for other in placed:
            ox, oy, oz = other.shape.center
            gap = np.sqrt((x - ox) ** 2 + (y - oy) ** 2 + (z - oz) ** 2)
            ok &= gap > radius + max(other.shape.radii) + 2
        hits = np.flatnonzero(ok)
        if hits.size:
            i = hits[0]
            radii = tuple(radius * rng.uniform(0.8, 1.0, 3))
            radii = (radius, radii[1], radii[2])  # the requested diameter is the long in-plane axis
            shape = Ellipsoid((float(x[i]), float(y[i]), float(z[i])), radii, rng.uniform(0, np.pi))
            core = rng.uniform(15, 40) if request.site == "kidney" and request.diameter_mm > 40 else None
            return Lesion(request.site, shape, rng.uniform(*_LESION_HU[request.site]), core)
    return None


def ras_grid(shape: Sequence[int], spacing: Sequence[float], center_mm: float | Sequence[float] = 0.0):
    """World coordinates (broadcastable x, y, z arrays) and RAS affine of a grid centred at ``center_mm``: a z (the
    grid centred at (0, 0, z)) or an (x, y, z) point."""
    center = (0.0, 0.0, center_mm) if np.isscalar(center_mm) else center_mm
    origin = [c - (n - 1) / 2 * s for c, n, s in zip(center, shape, spacing)]
    axes = [np.float32(o + s * np.arange(n, dtype=np.float32)) for o, s, n in zip(origin, spacing, shape)]
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = origin
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :], affine


def make_abdomen(
    rng: np.random.Generator,
    shape: Sequence[int],
    spacing: Sequence[float],
    center_mm: float | Sequence[float] = 0.0,
    lesions: Sequence[LesionRequest | Lesion] = (),
    anatomy: Anatomy | None = None,
) -> Phantom:
    """Render one abdominal CT case on an (nx, ny, nz) RAS grid of ``spacing`` mm centred at ``center_mm``
    (a z, or an (x, y, z) point: :func:`ras_grid`).

    ``lesions`` requests are placed in order (:func:`place_lesion`); a request that does not fit (organ absent at the
    requested z, no room) is dropped, so ``Phantom.lesion_list`` holds the lesions actually placed. Already placed
    :class:`Lesion` objects are used as given. Pass ``anatomy`` (from
    :func:`sample_anatomy`) to render several fields of view of one patient.
    """
    anatomy = anatomy or sample_anatomy(rng)
    x, y, z, affine = ras_grid(shape, spacing, center_mm)
    full = np.broadcast_shapes(x.shape, y.shape, z.shape)
    hu = np.full(full, anatomy.hu["air"], np.float32)
    organs = np.zeros(full, np.uint8)
    h = anatomy.hu

    def paint(mask, value, organ=None):
        hu[mask] = value
        if organ is not None:
            organs[mask] = ORGAN[organ]

    body_level = anatomy.body.level(x, y, z)
    cavity = body_level <= anatomy.cavity_scale**2
    paint(body_level <= 1, h["fat"], "fat")
    paint(body_level <= anatomy.fat_scale**2, h["muscle"], "muscle")
    paint(cavity, h["visceral_fat"], "fat")
    for rib in anatomy.ribs:
        paint(rib.contains(x, y, z) & (body_level <= 1), h["rib"], "bone")
    for loop in anatomy.bowel:
        paint(loop.contains(x, y, z) & cavity, h["bowel"], "bowel")
    for bubble in anatomy.gas:
        paint(bubble.contains(x, y, z) & cavity, h["gas"], "bowel")
    for muscle in anatomy.muscles:
        paint(muscle.contains(x, y, z) & (body_level <= 1), h["muscle"], "muscle")
    paint(anatomy.spine.contains(x, y, z), h["cortical"], "bone")
    disc = np.abs(((z - anatomy.spine.center[2]) % 32.0) - 16.0) < 4.0  # intervertebral discs every 32 mm
    inner = anatomy.spine.contains(x, y, z, 0.85)
    paint(inner, h["cancellous"], "bone")
    paint(inner & disc, h["disc"], "bone")
    canal_ring = anatomy.canal.contains(x, y, z, 1.6)
    paint(canal_ring, h["cortical"], "bone")
    paint(anatomy.canal.contains(x, y, z), h["canal"], "bone")
    paint(anatomy.aorta.contains(x, y, z), h["aorta"], "vessel")
    paint(anatomy.ivc.contains(x, y, z), h["ivc"], "vessel")
    liver = np.logical_or.reduce([part.contains(x, y, z) for part in anatomy.liver]) & cavity
    paint(liver, h["liver"], "liver")
    for vessel in anatomy.liver_vessels:
        paint(vessel.contains(x, y, z) & liver, h["liver_vessel"], "liver")  # labelled liver, as in LiTS
    if anatomy.gallbladder is not None:
        paint(anatomy.gallbladder.contains(x, y, z) & cavity, h["gallbladder"], "gallbladder")
    paint(anatomy.spleen.contains(x, y, z) & cavity, h["spleen"], "spleen")
    for kidney in anatomy.kidneys:
        paint(kidney.contains(x, y, z), h["kidney"], "kidney")
    for cyst in anatomy.cysts:
        mask = cyst.contains(x, y, z) & cavity
        in_kidney = organs == ORGAN["kidney"]
        paint(mask & in_kidney, h["cyst"])  # renal cysts stay labelled kidney
        paint(mask & ~in_kidney, h["cyst"], "cyst")

    placed: list[Lesion] = []
    for request in lesions:
        fov = (float(z.min()), float(z.max()))
        lesion = request if isinstance(request, Lesion) else place_lesion(rng, anatomy, request, placed, fov)
        if lesion is not None:
            placed.append(lesion)
    lesion_map = np.zeros(full, np.uint8)
    clip = {
        "liver": organs == ORGAN["liver"],  # without the gallbladder
        "spleen": organs == ORGAN["spleen"],
        "bone": anatomy.spine.contains(x, y, z),
        "kidney": cavity & (organs != ORGAN["bone"]),  # exophytic tumours grow out of the kidney
        "soft_tissue": body_level <= 1,
        "abdomen": cavity,
    }
    for i, lesion in enumerate(placed):
        mask = lesion.shape.contains(x, y, z) & clip[lesion.site]
        lesion_map[mask] = i + 1
        if lesion.texture_seed is None:
            texture = rng.normal(0, 6, size=int(mask.sum())).astype(np.float32)  # heterogeneous enhancement
        else:
            texture = np.random.default_rng(lesion.texture_seed).normal(0, 6, size=full)[mask].astype(np.float32)
        hu[mask] = lesion.hu + texture
        if lesion.core_hu is not None:
            paint(lesion.shape.contains(x, y, z, 0.5) & mask, lesion.core_hu)

    hu = ndimage.gaussian_filter(hu, blur_sigmas(spacing), truncate=_BLUR_TRUNCATE)
    hu += rng.normal(0, rng.uniform(10, 20), size=hu.shape).astype(np.float32)
    return Phantom(hu.astype(np.float32), organs, lesion_map, placed, affine)


def blur_sigmas(spacing: Sequence[float]) -> list[float]:
    """Sigma (voxels) per axis of the blur :func:`make_abdomen` applies: 0.6 voxel along the finest axis, 0.6 of
    that voxel size (mm) along the others."""
    return [0.6 / max(s / min(spacing), 1.0) for s in spacing]


def blur_reach(spacing: Sequence[float]) -> list[int]:
    """How many voxels along each axis the blur of :func:`make_abdomen` carries a value (its kernel's radius)."""
    return [int(_BLUR_TRUNCATE * sigma + 0.5) for sigma in blur_sigmas(spacing)]  # as scipy.ndimage sizes it


def to_hu_int16(hu: np.ndarray) -> np.ndarray:
    """Round HU to int16 in the CT range [-1024, 3071]."""
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def reorient(data: np.ndarray, affine: np.ndarray, axcodes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip a RAS array so that its axes have ``axcodes`` (e.g. ``"IPL"``); return it with its affine."""
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(tuple(axcodes))
    )
    out = nib.orientations.apply_orientation(data, transform)
    return np.ascontiguousarray(out), affine @ nib.orientations.inv_ornt_aff(transform, data.shape)


def nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A NIfTI-1 image in scanner coordinates (qform and sform code 1, mm units), as CT exports write."""
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    return image
