"""Procedural hand and foot radiograph phantoms, the demo data set's pixels (README, Your data):
projected attenuation of bones and soft tissue. Normals vary in joint width too and some have one
mildly narrowed joint, so the task is learnable but not trivial."""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

BodyPart = Literal["hand", "foot"]
BODY_PARTS: tuple[str, ...] = get_args(BodyPart)

# Canonical anatomy, in fractions of the image's short side, origin at the centre, y down,
# digits pointing up. A ray: base (x, y), angle from vertical in degrees, then
# (length, shaft radius) per bone from metacarpal/metatarsal out to the distal phalanx.
_RAYS = {
    "hand": [
        ((-0.08, 0.245), -32, [(0.17, 0.021), (0.12, 0.019), (0.085, 0.016)]),  # thumb
        ((-0.045, 0.20), -7, [(0.26, 0.018), (0.165, 0.017), (0.095, 0.014), (0.07, 0.012)]),
        ((-0.012, 0.195), -1, [(0.25, 0.018), (0.18, 0.017), (0.11, 0.015), (0.075, 0.012)]),
        ((0.020, 0.20), 5, [(0.235, 0.016), (0.17, 0.016), (0.105, 0.014), (0.07, 0.012)]),
        ((0.050, 0.215), 12, [(0.20, 0.015), (0.135, 0.014), (0.08, 0.012), (0.065, 0.011)]),
    ],
    "foot": [
        ((-0.07, 0.12), -6, [(0.23, 0.026), (0.10, 0.024), (0.075, 0.021)]),  # hallux
        ((-0.025, 0.10), -1, [(0.28, 0.016), (0.075, 0.013), (0.035, 0.012), (0.03, 0.011)]),
        ((0.015, 0.11), 4, [(0.26, 0.015), (0.07, 0.013), (0.032, 0.012), (0.028, 0.011)]),
        ((0.050, 0.125), 9, [(0.24, 0.015), (0.063, 0.012), (0.03, 0.011), (0.026, 0.010)]),
        ((0.085, 0.14), 15, [(0.22, 0.016), (0.055, 0.012), (0.026, 0.011), (0.024, 0.010)]),
    ],
}
# Carpals/tarsals and the long bones behind them: ellipses (x, y, rx, ry) and capsules.
_BLOBS = {
    "hand": [(-0.075, 0.26, 0.028, 0.022), (-0.045, 0.255, 0.02, 0.02), (-0.01, 0.265, 0.025, 0.035),
             (0.035, 0.26, 0.025, 0.03), (-0.06, 0.32, 0.032, 0.022), (-0.015, 0.33, 0.025, 0.022),
             (0.025, 0.325, 0.022, 0.02), (0.045, 0.31, 0.013, 0.013)],
    "foot": [(-0.07, 0.17, 0.03, 0.04), (-0.03, 0.16, 0.02, 0.035), (0.01, 0.165, 0.022, 0.035),
             (0.07, 0.20, 0.045, 0.05), (-0.04, 0.25, 0.06, 0.03), (-0.03, 0.33, 0.06, 0.05),
             (0.05, 0.42, 0.07, 0.12)],
}
_LONG_BONES = {
    "hand": [((-0.035, 0.40), (-0.05, 0.8), 0.04), ((0.045, 0.40), (0.05, 0.8), 0.025)],
    "foot": [],
}
# Soft-tissue bodies (x, y, rx, ry, half depth) and how much wider than its bone a digit is.
_TISSUE = {"hand": [(0.0, 0.19, 0.12, 0.15, 0.035), (0.0, 0.6, 0.11, 0.35, 0.05)],
           "foot": [(0.01, 0.22, 0.16, 0.36, 0.05)]}
_DIGIT_TISSUE = {"hand": (2.2, 0.009), "foot": (1.8, 0.014)}
# Osteoarthritis sites, (ray, joint after bone k) -> weight: DIP/PIP in hands, 1st MTP in feet.
_OA_JOINTS = {
    "hand": {(0, 0): 1.5, (0, 1): 2, **{(r, 2): 3 for r in range(1, 5)}, **{(r, 1): 2.5 for r in range(1, 5)},
             **{(r, 0): 1 for r in range(1, 5)}},
    "foot": {(0, 0): 4, (0, 1): 1.5, **{(r, 0): 1 for r in range(1, 5)}, **{(r, 1): 0.7 for r in range(1, 5)}},
}
_MU_SOFT, _MU_CORTEX, _MU_MARROW = 2.5, 24.0, 3.5  # attenuation per unit path length


class _Canvas:
    """Accumulates bone attenuation and soft-tissue depth, drawing each shape in its bounding box."""

    def __init__(self, size: tuple[int, int], *, origin: np.ndarray, scale: float, rot: float, mirror: bool):
        self.h, self.w = size
        self.bone = np.zeros(size, np.float64)
        self.tissue = np.zeros(size, np.float64)
        c, s = np.cos(rot), np.sin(rot)
        self._m = scale * np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if mirror else 1.0, 1.0])
        self._origin, self.px = origin, scale  # px: pixels per canonical unit

    def to_px(self, p) -> np.ndarray:
        return self._m @ np.asarray(p, np.float64) + self._origin

    def _window(self, lo: np.ndarray, hi: np.ndarray):
        """The pixels of box lo..hi: slices and coordinates, empty off the image (drawing is then a no-op)."""
        x0, y0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
        # never below the start: a box above or left of the image ends at a negative index, which a
        # slice would read from the far side
        x1, y1 = max(min(int(hi[0]) + 2, self.w), x0), max(min(int(hi[1]) + 2, self.h), y0)
        return (slice(y0, y1), slice(x0, x1)), np.arange(x0, x1)[None, :], np.arange(y0, y1)[:, None]

    def bone_capsule(self, a, b, r, *, flare=1.35, sclerosis=(0.0, 0.0)) -> None:
        """A long bone from a to b (canonical): tube with flared, rounded ends and a cortex."""
        a, b = self.to_px(a), self.to_px(b)
        r, cap = r * self.px, 0.6 * r * flare * self.px
        pad = r * flare + cap + 1
        sl, xs, ys = self._window(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
        length = max(float(np.hypot(*(b - a))), 1e-6)
        ux, uy = (b - a) / length
        along = (xs - a[0]) * ux + (ys - a[1]) * uy
        perp = (ys - a[1]) * ux - (xs - a[0]) * uy
        t = np.clip(along / length, 0.0, 1.0)
        rad = r * (1 + (flare - 1) * np.abs(2 * t - 1) ** 4)  # heads and bases wider than the shaft
        beyond = (along - t * length) * (rad / cap)  # flattened end caps: the joint surfaces
        d2 = perp**2 + beyond**2
        cortex = 0.25 * r
        outer = np.sqrt(np.maximum(rad**2 - d2, 0.0))
        inner = np.sqrt(np.maximum((rad - cortex) ** 2 - d2, 0.0))
        proj = 2 * (_MU_CORTEX * (outer - inner) + _MU_MARROW * inner)
        if any(sclerosis):  # denser band under each joint surface, fading into the shaft
            w = 0.8 * r
            proj *= (1 + sclerosis[0] * np.exp(-np.maximum(along + cap, 0) / w)
                     + sclerosis[1] * np.exp(-np.maximum(length + cap - along, 0) / w))
        self.bone[sl] += proj / self.px

    def blob(self, c, rx, ry, *, angle=0.0, solid=False, tissue_depth=0.0) -> None:
        """An ellipse: a carpal/tarsal (cortex + medulla), an osteophyte (solid) or soft tissue."""
        c = self.to_px(c)
        rx, ry, pad = rx * self.px, ry * self.px, max(rx, ry) * self.px + 1
        sl, xs, ys = self._window(c - pad, c + pad)
        (ca, sa), m = (np.cos(angle), np.sin(angle)), self._m / self.px
        ex, ey = m @ [ca, sa], m @ [-sa, ca]  # the ellipse axes, rotated and mirrored with the body
        u, v = (xs - c[0]) * ex[0] + (ys - c[1]) * ex[1], (xs - c[0]) * ey[0] + (ys - c[1]) * ey[1]
        outer = np.sqrt(np.maximum(1 - (u / rx) ** 2 - (v / ry) ** 2, 0.0))
        if tissue_depth:
            np.maximum(self.tissue[sl], 2 * tissue_depth * outer, out=self.tissue[sl])
            return
        depth = min(rx, ry, 0.03 * self.px)  # big tarsals are flatter than they are wide
        if solid:
            self.bone[sl] += 2 * _MU_CORTEX * depth * outer / self.px
            return
        k = 0.75  # medulla: the inner three quarters
        inner = np.sqrt(np.maximum(1 - (u / (k * rx)) ** 2 - (v / (k * ry)) ** 2, 0.0))
        self.bone[sl] += 2 * depth * (_MU_CORTEX * (outer - k * inner) + _MU_MARROW * k * inner) / self.px

    def tissue_capsule(self, a, b, radius) -> None:
        a, b, radius = self.to_px(a), self.to_px(b), radius * self.px
        sl, xs, ys = self._window(np.minimum(a, b) - radius - 1, np.maximum(a, b) + radius + 1)
        length = max(float(np.hypot(*(b - a))), 1e-6)
        ux, uy = (b - a) / length
        t = np.clip(((xs - a[0]) * ux + (ys - a[1]) * uy) / length, 0.0, 1.0)
        d2 = (xs - a[0] - t * length * ux) ** 2 + (ys - a[1] - t * length * uy) ** 2
        np.maximum(
            self.tissue[sl], 2 * np.sqrt(np.maximum(radius**2 - d2, 0.0)) / self.px, out=self.tissue[sl]
        )


def _oa_joints(body_part: str, rng: np.random.Generator, *, abnormal: bool, severity: float) -> dict:
    """Pick the affected joints: {(ray, joint): severity in (0, 1]}."""
    sites = list(_OA_JOINTS[body_part])
    weights = np.array(list(_OA_JOINTS[body_part].values()), np.float64)
    if abnormal:
        n = int(rng.integers(2, 7))
        sev = severity * rng.uniform(0.5, 1.0, n)
    elif rng.random() < 0.35:  # a normal with one mildly narrowed joint (age, positioning)
        n, sev = 1, rng.uniform(0.05, 0.35, 1)
    else:
        return {}
    picked = rng.choice(len(sites), size=n, replace=False, p=weights / weights.sum())
    return {sites[i]: float(s) for i, s in zip(picked, sev, strict=True)}


def render_phantom(
    *, body_part: BodyPart, abnormal: bool, size: tuple[int, int], patient_rng: np.random.Generator,
    image_rng: np.random.Generator, mirror: bool = False, severity: float = 1.0,
) -> np.ndarray:
    """One radiograph phantom as float32 in [0, 1], bone bright, shape `size` (rows, cols)."""
    # Patient anatomy: identical for both sides of one patient (patient_rng is re-seeded per image).
    body_scale = patient_rng.uniform(0.9, 1.1)
    spread = patient_rng.uniform(0.7, 1.4)
    gap0 = patient_rng.uniform(0.012, 0.016)
    # Hallux spurs scale with its thick bones, so feet show the same disease more plainly.
    severity = severity * patient_rng.uniform(0.6, 1.0) * (0.8 if body_part == "foot" else 1.0)
    rays = [(base, angle, [(length * patient_rng.uniform(0.94, 1.06), r) for length, r in bones])
            for base, angle, bones in _RAYS[body_part]]

    # Independent streams: the same image seed gives the same pose, exposure and noise
    # with or without disease, so the classes differ only by what the disease changes.
    rng, oa_rng, expo_rng = image_rng.spawn(3)
    h, w = size
    short = min(h, w)
    origin = np.array([w / 2, h / 2]) + rng.uniform(-0.04, 0.04, 2) * short
    canvas = _Canvas(size, origin=origin, scale=short * rng.uniform(0.88, 1.0) * body_scale / 1.1,
                     rot=np.deg2rad(rng.uniform(-6, 6)), mirror=mirror)
    oa = _oa_joints(body_part, oa_rng, abnormal=abnormal, severity=severity)

    for x, y, rx, ry, depth in _TISSUE[body_part]:
        canvas.blob((x, y), rx, ry, tissue_depth=depth)
    for x, y, rx, ry in _BLOBS[body_part]:
        canvas.blob((x, y), 1.2 * rx, 1.2 * ry, angle=rng.uniform(-0.2, 0.2))
    for a, b, r in _LONG_BONES[body_part]:
        canvas.bone_capsule(a, b, r, flare=1.3)

    widen, extra = _DIGIT_TISSUE[body_part]
    for ray, (base, angle, bones) in enumerate(rays):
        pos = np.array(base, np.float64)
        # The thumb and hallux move little with the spread of the other digits.
        theta = np.deg2rad(angle + (spread - 1) * (8 if ray == 0 else angle))
        for k, (length, r) in enumerate(bones):
            u = np.array([np.sin(theta), -np.cos(theta)])
            n = np.array([-u[1], u[0]])
            cap = 0.6 * r * 1.35
            end = pos + length * u
            sev_before, sev_after = oa.get((ray, k - 1), 0.0), oa.get((ray, k), 0.0)
            scl = tuple(
                s * oa_rng.uniform(0.6, 1.0) if oa_rng.random() < 0.8 else 0.0
                for s in (sev_before, sev_after)
            )
            canvas.bone_capsule(pos + cap * u, end - cap * u, r, sclerosis=scl)
            canvas.tissue_capsule(pos, end, r * widen + extra)
            for s, tip, sign in ((sev_before, pos, 1.0), (sev_after, end, -1.0)):
                if s and oa_rng.random() < 0.6 + 0.4 * s:  # osteophytes at one or both joint margins
                    for side in oa_rng.choice([-1.0, 1.0], size=int(oa_rng.integers(1, 3)), replace=False):
                        rho = r * s * oa_rng.uniform(0.6, 1.0)
                        c = tip + sign * u * cap * 0.5 + side * n * (1.35 * r + 0.3 * rho)
                        canvas.blob(c, rho, 1.5 * rho, angle=theta, solid=True)
            if body_part == "foot" and ray == 0 and k == 0:  # sesamoids under the 1st metatarsal head
                for side in (-1, 1):
                    canvas.blob(end - 0.03 * u + side * 0.012 * n, 0.009, 0.011, angle=theta)
            gap = gap0 * rng.uniform(0.85, 1.15) * (1 - 0.8 * sev_after)  # the joint space
            pos = end + gap * u
            theta += np.deg2rad(rng.uniform(-3, 3))  # digits are never perfectly straight

    return _expose(canvas, expo_rng)


def _expose(canvas: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Attenuation -> detector image: exposure, heel effect, gamma, blur, noise."""
    h, w = canvas.bone.shape
    atten = (canvas.bone + _MU_SOFT * canvas.tissue) * rng.uniform(0.85, 1.15)  # kVp
    img = rng.uniform(0.02, 0.1) + rng.uniform(0.75, 0.95) * -np.expm1(-atten)
    yy, xx = np.linspace(-0.5, 0.5, h)[:, None], np.linspace(-0.5, 0.5, w)[None, :]
    phi = rng.uniform(0, 2 * np.pi)
    img *= 1 + rng.uniform(0, 0.25) * (xx * np.cos(phi) + yy * np.sin(phi))  # heel effect
    np.clip(img, 0.0, 1.0, out=img)
    img **= rng.uniform(0.8, 1.25)
    img = _blur(img, sigma=rng.uniform(0.4, 0.9) * min(h, w) / 256)
    img += np.sqrt(img * rng.uniform(1e-4, 6e-4)) * rng.standard_normal(img.shape)  # quantum noise
    img += rng.uniform(0.002, 0.008) * rng.standard_normal(img.shape)  # electronic noise
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _blur(img: np.ndarray, *, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (the detector's spread); numpy only, no scipy dependency."""
    radius = max(int(np.ceil(2 * sigma)), 1)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    h, w = img.shape
    padded = np.pad(img, ((radius, radius), (0, 0)), mode="edge")
    img = sum(k * padded[i : i + h] for i, k in enumerate(kernel))
    padded = np.pad(img, ((0, 0), (radius, radius)), mode="edge")
    return sum(k * padded[:, i : i + w] for i, k in enumerate(kernel))
