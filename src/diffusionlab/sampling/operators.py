"""Linear degradations y = A x + sigma_y n of images [B, C, H, W], each with its adjoint, its pseudo-inverse and
its singular value decomposition A = U diag(s) V^T, which DDRM, DDNM and PiGDM work in.

The SVD is kept in an image-shaped spectral layout: ``Vt(x)`` maps an image to its coefficients [B, C, H, W] on
the right singular vectors, ``singulars`` [H, W] holds the singular value of each coefficient (0 where the
measurement says nothing), ``Ut(y)`` maps a measurement onto the left singular vectors in the same layout and
``U`` maps back. Singular values below ``RCOND`` times the largest count as 0, as a pseudo-inverse does.

- :class:`SeparableOperator`: A x = M_h X M_w^T per channel, with M_h [m_h, H] and M_w [m_w, W]; its SVD is the
  Kronecker product of the two 1-D SVDs. Super-resolution by f x f average pooling (:func:`pooling`) and a
  Gaussian blur (:func:`gaussian_blur`, reflect or zero boundary) are of this kind.
- :class:`MaskOperator`: A x = m * x for a 0/1 mask m [H, W] shared by the channels (the measurement is the image
  with zeros where m is 0); its SVD is the identity with singular values m. Box and random-pixel inpainting, and
  denoising (m = 1, A = I).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

RCOND = 1e-5
"""Singular values below RCOND times the largest are treated as 0 (the pseudo-inverse's cutoff)."""


class Operator:
    """A linear measurement of images of shape ``image_shape`` (C, H, W) and its SVD."""

    image_shape: tuple[int, int, int]
    measurement_shape: tuple[int, ...]
    singulars: Tensor
    """[H, W] singular value of each spectral coefficient; 0 where the measurement holds nothing of it."""

    def A(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def At(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def Vt(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def V(self, c: Tensor) -> Tensor:
        raise NotImplementedError

    def Ut(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def U(self, c: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def measurement_size(self) -> int:
        """m: the number of measured values per image (kept pixels times channels for a mask)."""
        return math.prod(self.measurement_shape)

    @property
    def measured(self) -> Tensor:
        """[H, W] bool: the spectral coefficients the measurement holds."""
        return self.singulars > 0

    def spectral_measurement(self, y: Tensor) -> Tensor:
        """y_bar = S^+ U^T y [B, C, H, W]: each measured coefficient of x that y gives (0 elsewhere)."""
        s = self.singulars
        return torch.where(self.measured, self.Ut(y) / torch.where(self.measured, s, torch.ones_like(s)), 0.0)

    def pinv(self, y: Tensor) -> Tensor:
        """A^+ y = V S^+ U^T y: the least-norm image that explains y."""
        return self.V(self.spectral_measurement(y))

    def measure(self, x: Tensor, sigma_y: float, noise: Tensor | None = None) -> Tensor:
        """y = A x + sigma_y n, with n standard normal in the measurement's shape (``noise``, drawn when None)."""
        y = self.A(x)
        if sigma_y == 0:
            return y
        n = torch.randn_like(y) if noise is None else noise
        return y + sigma_y * self.restrict(n)

    def restrict(self, y: Tensor) -> Tensor:
        """Values of a measurement-shaped tensor the measurement holds (all of them but for a mask)."""
        return y

    def consistency(self, x: Tensor, y: Tensor) -> Tensor:
        """||A x - y|| / sqrt(m) [B]: the residual per measured value, to compare with sigma_y."""
        return (self.A(x) - y).flatten(1).norm(dim=1) / math.sqrt(self.measurement_size)


class SeparableOperator(Operator):
    """A x = M_h X M_w^T on each channel: ``rows`` M_h [m_h, H] and ``cols`` M_w [m_w, W] (float64 matrices).

    The singular values below ``rcond`` times the largest are dropped from A itself (as DDRM's deblurring does):
    what the measurement attenuates below that is lost, and A is then its truncated SVD."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, channels: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, rcond: float = RCOND):
        (mh, h), (mw, w) = rows.shape, cols.shape
        self.image_shape, self.measurement_shape = (channels, h, w), (channels, mh, mw)
        uh, sh, vh = np.linalg.svd(rows)  # rows = uh[:, :mh] diag(sh) vh[:mh]
        uw, sw, vw = np.linalg.svd(cols)
        s = np.zeros((h, w))
        s[:mh, :mw] = np.outer(sh, sw)
        kept = np.outer(sh, sw)
        self.truncated = bool((kept < rcond * s.max()).any())
        s[s < rcond * s.max()] = 0.0

        def tensor(a: np.ndarray) -> Tensor:
            return torch.as_tensor(a, dtype=dtype, device=device)

        self.rows, self.cols = tensor(rows), tensor(cols)
        self.uh, self.uw, self.vh, self.vw = tensor(uh), tensor(uw), tensor(vh.T), tensor(vw.T)
        self.singulars = tensor(s)
        self.mh, self.mw = mh, mw

    def A(self, x: Tensor) -> Tensor:
        if self.truncated:  # what lies below the cutoff is lost: A is its truncated SVD
            return self.U(self.singulars * self.Vt(x))
        return self.rows @ x @ self.cols.T

    def At(self, y: Tensor) -> Tensor:
        if self.truncated:
            return self.V(self.singulars * self.Ut(y))
        return self.rows.T @ y @ self.cols

    def Vt(self, x: Tensor) -> Tensor:
        return self.vh.T @ x @ self.vw

    def V(self, c: Tensor) -> Tensor:
        return self.vh @ c @ self.vw.T

    def Ut(self, y: Tensor) -> Tensor:
        c = self.uh.T @ y @ self.uw
        return torch.nn.functional.pad(c, (0, self.image_shape[2] - self.mw, 0, self.image_shape[1] - self.mh))

    def U(self, c: Tensor) -> Tensor:
        return self.uh @ c[..., : self.mh, : self.mw] @ self.uw.T


class MaskOperator(Operator):
    """A x = mask * x with ``mask`` [H, W] of 0 and 1 (1: the pixel is measured), the same on every channel."""

    def __init__(self, mask: Tensor, channels: int):
        self.mask = mask if mask.is_floating_point() else mask.float()
        self.image_shape = (channels, *mask.shape)
        kept = int(self.mask.sum().item())
        if kept == 0:
            raise ValueError("the mask keeps no pixel: nothing is measured")
        self.measurement_shape = (channels, kept)
        self.singulars = self.mask

    def A(self, x: Tensor) -> Tensor:
        return self.mask * x

    def restrict(self, y: Tensor) -> Tensor:
        return self.mask * y

    At = A
    Ut = A
    U = A

    def Vt(self, x: Tensor) -> Tensor:
        return x

    V = Vt


def pooling(size: int, factor: int) -> np.ndarray:
    """[size / factor, size] float64: the mean of each run of ``factor`` neighbours."""
    if factor < 1 or size % factor:
        raise ValueError(f"a pooling factor of {factor} does not divide the image size {size}")
    return np.kron(np.eye(size // factor), np.full((1, factor), 1.0 / factor))


def gaussian_kernel(width: float) -> np.ndarray:
    """A normalised 1-D Gaussian kernel of standard deviation ``width`` pixels, truncated at 3 widths."""
    if width <= 0:
        raise ValueError(f"a blur width must be > 0, got {width}")
    radius = max(1, math.ceil(3 * width))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / width) ** 2)
    return taps / taps.sum()


def convolution(size: int, kernel: np.ndarray, boundary: str) -> np.ndarray:
    """[size, size] float64: convolution with the odd-length ``kernel`` as a matrix, with the image reflected
    about its edge pixels (``reflect``, as ``numpy.pad(mode="reflect")``) or zero outside it (``zero``)."""
    radius = len(kernel) // 2
    if boundary == "reflect" and radius >= size:
        raise ValueError(f"a kernel of radius {radius} cannot reflect in an image of size {size}")
    out = np.zeros((size, size))
    for i in range(size):
        for k, tap in enumerate(kernel):
            j = i + k - radius
            if boundary == "reflect":
                j = -j if j < 0 else (2 * (size - 1) - j if j >= size else j)
            elif boundary != "zero":
                raise ValueError(f"unknown boundary {boundary!r}: reflect or zero")
            if 0 <= j < size:
                out[i, j] += tap
    return out


def super_resolution(shape: tuple[int, int, int], factor: int, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> Operator:
    """f x f average pooling of images of ``shape`` (C, H, W)."""
    c, h, w = shape
    return SeparableOperator(pooling(h, factor), pooling(w, factor), c, device, dtype)


def gaussian_blur(shape: tuple[int, int, int], width: float, boundary: str = "reflect",
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  cutoff: float = RCOND) -> Operator:
    """A separable Gaussian blur of standard deviation ``width`` pixels; the frequencies it attenuates below
    ``cutoff`` times the largest singular value are lost (without a cutoff a noiseless blur is invertible)."""
    c, h, w = shape
    kernel = gaussian_kernel(width)
    return SeparableOperator(convolution(h, kernel, boundary), convolution(w, kernel, boundary), c, device, dtype,
                             cutoff)


def box_mask(size: tuple[int, int], fraction: float) -> Tensor:
    """[H, W]: 0 in a centred square of side ``fraction`` of the image (rounded), 1 elsewhere."""
    h, w = size
    side_h, side_w = max(1, round(fraction * h)), max(1, round(fraction * w))
    mask = torch.ones(h, w)
    top, left = (h - side_h) // 2, (w - side_w) // 2
    mask[top:top + side_h, left:left + side_w] = 0
    return mask


def random_mask(size: tuple[int, int], keep: float, seed: int) -> Tensor:
    """[H, W]: each pixel kept (1) with probability ``keep``, from a generator seeded ``seed``; at least one."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(size, generator=g) < keep).float()
    if not mask.any():
        mask.view(-1)[torch.randint(mask.numel(), (1,), generator=g)] = 1.0
    return mask
