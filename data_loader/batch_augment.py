"""Batched image augmentation on uint8 tensors, on whatever device they live (CPU or CUDA).

The CIFAR-LT loaders keep a whole split in one ``(N, 3, H, W)`` uint8 tensor on the training device and
augment each batch there in a handful of tensor operations, instead of one PIL round trip per image
in DataLoader workers. Every op draws its per-image random parameters in one call, from the
``torch.Generator`` given or else from the default generator of the images' device (so on CPU the
trainer's saved torch RNG state makes a resumed run draw the same augmentations).

The ops follow torchvision's definitions (same parameter ranges and formulas), applied to the whole
batch with per-image parameters:

============  ===========================================================================================
``crop``      ``RandomCrop(H, padding)``: zero padding, an offset per image in ``[0, 2 * padding]``
``flip``      ``RandomHorizontalFlip(flip_p)``
``rotate``    ``RandomRotation(rotate_degrees)``: angle uniform in ``[-deg, deg]``, nearest, zero fill
``color_jitter``  ``RandomApply([ColorJitter(b, c, s, h)], p=jitter_p)``: brightness, contrast,
              saturation and hue factors per image, applied in a random order per image
``grayscale`` ``RandomGrayscale(grayscale_p)`` (ITU-R 601-2 luma, replicated to 3 channels)
``blur``      ``RandomApply([GaussianBlur(sigma ~ U[blur_sigma])], p=blur_p)``, reflect padding
============  ===========================================================================================
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

OPS = ("crop", "flip", "rotate", "color_jitter", "grayscale", "blur")
_FLOAT_OPS = frozenset({"rotate", "color_jitter", "grayscale", "blur"})  # need values in [0, 1], not uint8
_LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


class BatchAugment:
    """Augment a batch of uint8 images and return it as normalised float32.

    ``augment(images)`` takes ``images``: uint8 ``(N, C, H, W)`` with values 0..255, on any device, and
    returns a NEW float32 tensor ``(N, C, H, W)`` on the same device: the ops applied in the order given
    (like ``transforms.Compose``), then ``(x / 255 - mean) / std`` per channel. The input is never
    modified. With ``ops=()`` it only converts and normalises (the evaluation transform).

    Args:
        ops: op names from :data:`OPS`, applied in this order; an unknown or repeated name is a ValueError.
        mean, std: per-channel normalisation on the 0..1 scale (length C).
        padding: zero padding of ``crop`` in pixels (the crop size is the image size).
        flip_p: probability of a horizontal flip per image.
        rotate_degrees: ``rotate`` draws an angle uniformly from ``[-rotate_degrees, rotate_degrees]``.
        jitter: ``(brightness, contrast, saturation, hue)`` strengths as in ``ColorJitter``: the first three
            draw a factor from ``[max(0, 1 - v), 1 + v]``, hue a shift from ``[-hue, hue]`` (hue <= 0.5).
        jitter_p: probability that an image is colour-jittered at all.
        grayscale_p: probability that an image is turned grey (C must be 3).
        blur_p: probability that an image is blurred.
        blur_sigma: ``(min, max)`` of the per-image Gaussian standard deviation, in pixels.
    """

    def __init__(self, ops: Sequence[str] = ("crop", "flip"), mean: Sequence[float] = (0.0, 0.0, 0.0),
                 std: Sequence[float] = (1.0, 1.0, 1.0), *, padding: int = 4, flip_p: float = 0.5,
                 rotate_degrees: float = 15.0, jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
                 jitter_p: float = 0.8, grayscale_p: float = 0.2, blur_p: float = 0.2,
                 blur_sigma: Sequence[float] = (0.1, 2.0)):
        if isinstance(ops, str):
            raise ValueError(f"ops must be a list of op names, got the string {ops!r}")
        ops = tuple(ops)
        unknown = [op for op in ops if op not in OPS]
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; valid names: {', '.join(OPS)}")
        repeated = sorted({op for op in ops if ops.count(op) > 1})
        if repeated:
            raise ValueError(f"augmentation(s) {repeated} listed more than once; give each op once")
        if len(mean) != len(std) or not len(mean):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        if any(not s > 0 for s in std):
            raise ValueError(f"std values must be > 0, got {list(std)}")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        for name, p in (("flip_p", flip_p), ("jitter_p", jitter_p), ("grayscale_p", grayscale_p),
                        ("blur_p", blur_p)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if rotate_degrees < 0:
            raise ValueError(f"rotate_degrees must be >= 0, got {rotate_degrees}")
        if len(jitter) != 4 or any(v < 0 for v in jitter) or jitter[3] > 0.5:
            raise ValueError(f"jitter must be [brightness, contrast, saturation, hue], all >= 0 and hue <= 0.5, "
                             f"got {list(jitter)}")
        if len(blur_sigma) != 2 or not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma must be [min, max] with 0 < min <= max, got {list(blur_sigma)}")
        self.ops = ops
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.padding, self.flip_p, self.rotate_degrees = int(padding), float(flip_p), float(rotate_degrees)
        self.jitter, self.jitter_p = tuple(float(v) for v in jitter), float(jitter_p)
        self.grayscale_p, self.blur_p = float(grayscale_p), float(blur_p)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self._constants: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def __repr__(self) -> str:
        return f"BatchAugment(ops={list(self.ops)}, mean={list(self.mean)}, std={list(self.std)})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augmented, normalised float32 copy of uint8 ``images`` ``(N, C, H, W)`` (same device).

        ``generator`` must live on the images' device; None uses that device's default generator.
        """
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"BatchAugment expects uint8 images (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if images.shape[1] != len(self.mean):
            raise ValueError(f"images have {images.shape[1]} channels but mean/std give {len(self.mean)}")
        if images.shape[1] != 3 and {"color_jitter", "grayscale"} & set(self.ops):
            raise ValueError("color_jitter and grayscale need RGB images (3 channels)")
        x = images
        for op in self.ops:
            if op in _FLOAT_OPS and x.dtype == torch.uint8:
                x = x.float().div_(255.0)
            x = getattr(self, f"_{op}")(x, generator)
        return self.normalize(x)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x / 255 - mean) / std`` for uint8 ``x`` (0..255), ``(x - mean) / std`` for float ``x`` (0..1)."""
        mean, std, scale, shift = self._device_constants(x.device)
        if x.dtype == torch.uint8:
            # x * (1 / (255 std)) - mean / std in place on the fresh float copy: two passes instead of three
            # (torch.addcmul with a broadcast (1, C, 1, 1) input is ~20x slower on CPU)
            return x.float().mul_(scale).sub_(shift)
        return x.sub(mean).div_(std)

    def _device_constants(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._constants:
            mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
            self._constants[device] = (mean, std, 1.0 / (255.0 * std), mean / std)
        return self._constants[device]

    # --- geometric ops (any dtype) ----------------------------------------------------------------
    def _crop(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        if self.padding == 0:
            return x.clone()
        n, _, h, w = x.shape
        p = self.padding
        padded = F.pad(x, (p, p, p, p))  # zero fill, like RandomCrop(padding=p, fill=0)
        offsets = torch.randint(0, 2 * p + 1, (2, n), generator=g, device=x.device)
        # every window as a strided view (N, C, 2p+1, 2p+1, H, W), then one gather of window (dy_i, dx_i) per
        # image: out[i] = padded[i, :, dy_i:dy_i + H, dx_i:dx_i + W]; ~5x faster on CPU than indexing the
        # four pixel coordinates
        windows = padded.unfold(2, h, 1).unfold(3, w, 1)
        return windows[torch.arange(n, device=x.device), :, offsets[0], offsets[1]]

    def _flip(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        flip = torch.rand(x.shape[0], generator=g, device=x.device) < self.flip_p
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)

    def _rotate(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = x.shape
        angle = (torch.rand(n, generator=g, device=x.device) * 2 - 1) * math.radians(self.rotate_degrees)
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero = torch.zeros_like(angle)
        # affine_grid works in normalised [-1, 1] coordinates; the h/w factors keep the rotation rigid in
        # pixels for non-square images. The matrix maps output to input positions, as grid_sample needs.
        theta = torch.stack([torch.stack([cos, -sin * h / w, zero], 1),
                             torch.stack([sin * w / h, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)

    # --- photometric ops (float in [0, 1]) --------------------------------------------------------
    def _color_jitter(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        b, c, s, hue = self.jitter
        uniform = torch.rand(5, n, generator=g, device=dev)
        factors = [(max(0.0, 1 - v) + (1 + v - max(0.0, 1 - v)) * u) for v, u in zip((b, c, s), uniform[:3])]
        shift = (uniform[3] * 2 - 1) * hue
        apply = uniform[4] < self.jitter_p
        # ColorJitter applies its four adjustments in a random order per call: one order per image here
        order = torch.rand(n, 4, generator=g, device=dev).argsort(dim=1)
        adjust = (lambda t, f=factors[0]: _blend(t, torch.zeros_like(t), f),
                  lambda t, f=factors[1]: _blend(t, _grey(t).mean(dim=(-3, -2, -1), keepdim=True), f),
                  lambda t, f=factors[2]: _blend(t, _grey(t), f),
                  lambda t: _shift_hue(t, shift))
        out = x
        for position in range(4):
            step = order[:, position]
            for k, fn in enumerate(adjust):
                if (k < 3 and (b, c, s)[k] == 0) or (k == 3 and hue == 0):
                    continue  # a zero strength is the identity
                out = torch.where((step == k).view(-1, 1, 1, 1), fn(out), out)
        return torch.where(apply.view(-1, 1, 1, 1), out, x)

    def _grayscale(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        grey = torch.rand(x.shape[0], generator=g, device=x.device) < self.grayscale_p
        return torch.where(grey.view(-1, 1, 1, 1), _grey(x).expand_as(x), x)

    def _blur(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        n, c, h, w = x.shape
        dev = x.device
        draws = torch.rand(2, n, generator=g, device=dev)
        lo, hi = self.blur_sigma
        sigma = lo + (hi - lo) * draws[0]
        apply = draws[1] < self.blur_p
        radius = max(1, math.ceil(3 * hi))  # +-3 sigma of the widest kernel; narrower ones are ~0 there
        taps = torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (taps / sigma[:, None]) ** 2)
        kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N * C, K)
        mode = "reflect" if radius < min(h, w) else "replicate"  # reflect needs padding < image size
        planes = F.pad(x.reshape(1, n * c, h, w), (radius,) * 4, mode=mode)
        # separable Gaussian: one grouped convolution per axis, a different kernel for every image plane
        planes = F.conv2d(planes, kernel.view(n * c, 1, 1, -1), groups=n * c)
        planes = F.conv2d(planes, kernel.view(n * c, 1, -1, 1), groups=n * c)
        return torch.where(apply.view(-1, 1, 1, 1), planes.view(n, c, h, w), x)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Luma ``(N, 1, H, W)`` of RGB ``x`` ``(N, 3, H, W)``."""
    r, g, b = x.unbind(dim=-3)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(-3)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * x + (1 - factor) * other`` clamped to [0, 1]; ``factor`` is per image ``(N,)``."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0.0, 1.0)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB ``x`` in [0, 1] by ``shift`` (per image, in turns) through HSV."""
    r, g, b = x.unbind(dim=-3)
    maxc, minc = x.amax(dim=-3), x.amin(dim=-3)
    grey = maxc == minc  # hue undefined: leave such pixels as they are
    delta = maxc - minc
    sat = delta / torch.where(grey, torch.ones_like(maxc), maxc)
    safe = torch.where(grey, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(grey, torch.zeros_like(h), h)
    h = torch.remainder(h / 6.0 + shift.view(-1, 1, 1), 1.0)
    # HSV -> RGB: sector i of the colour wheel and the position f inside it
    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    sector = sector.long() % 6
    v = maxc
    p = (v * (1 - sat)).clamp_(0, 1)
    q = (v * (1 - sat * f)).clamp_(0, 1)
    t = (v * (1 - sat * (1 - f))).clamp_(0, 1)
    table = torch.stack([torch.stack(c, dim=-3) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p),
                                                          (p, p, t, v, v, q))], dim=-4)  # (N, 3, 6, H, W)
    return table.gather(-3, sector[:, None, None].expand(-1, 3, 1, -1, -1)).squeeze(-3)
