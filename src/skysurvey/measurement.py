"""What every per-image measurement reads, as one object, and SEP's process-wide settings.

:class:`Pixels` carries the background-subtracted image, its noise, SEP's segmentation, the
bad-pixel mask, the gain and the saturation level, so a measurement function takes the pixels
plus what it measures (positions, radii) instead of six arrays threaded through every call.

SEP keeps two settings per process (the extraction pixel stack and the sub-object limit);
:func:`sep_settings` is the one place that changes them, and it always puts them back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import sep

__all__ = ["Pixels", "is_buffer_full", "sep_settings", "single_thread_blas"]


@dataclass(frozen=True)
class Pixels:
    """One image's pixels as the measurements see them.

    Attributes
    ----------
    sub : ndarray, shape (ny, nx)
        Background-subtracted image (float, native byte order: SEP's requirement).
    rms : float or ndarray
        Background noise per pixel, a scalar or a map of ``sub``'s shape.
    segmap : ndarray of int, optional
        SEP's segmentation map (0: sky, ``i + 1``: source ``i``); None before detection.
    mask : ndarray of bool, optional
        Pixels to leave out (bad, masked, off the valid area); None: all valid.
    gain : float, optional
        Electrons per data unit, for the sources' Poisson noise; None: background noise only.
    saturation : float, optional
        The header's saturation level (SATURATE), in the data's units with the background
        in (a source is saturated where its peak plus the background reaches 98% of it);
        None: unknown.
    """

    sub: np.ndarray
    rms: float | np.ndarray
    segmap: np.ndarray | None = None
    mask: np.ndarray | None = None
    gain: float | None = None
    saturation: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """The image's ``(ny, nx)``."""
        return self.sub.shape

    def with_(self, **changes) -> Pixels:
        """A copy with some fields replaced (``pixels.with_(sub=residual)``)."""
        return replace(self, **changes)

    def own(self, index) -> dict:
        """SEP's keyword arguments that measure sources *index* without other sources' pixels.

        Parameters
        ----------
        index : array_like of int
            The sources' numbers (segmentation label ``index + 1``).

        Returns
        -------
        dict
            ``segmap``, ``seg_id`` and ``mask`` for ``sep.sum_circle`` and the like; only
            ``mask`` without a segmentation map.
        """
        if self.segmap is None:
            return {"mask": self.mask}
        return {"segmap": self.segmap, "seg_id": (np.asarray(index) + 1).astype(np.int32),
                "mask": self.mask}


def is_buffer_full(exc: BaseException) -> bool:
    """True when *exc* is SEP's "pixel buffer full" (SEP raises bare Exceptions)."""
    return "pixel buffer full" in str(exc)


@contextmanager
def sep_settings(*, pixstack: int | None = None,
                 sub_object_limit: int | None = None) -> Iterator[None]:
    """Set SEP's process-wide pixel stack and sub-object limit for a block, then restore them.

    Parameters
    ----------
    pixstack : int, optional
        ``sep.set_extract_pixstack`` for the block; None: unchanged.
    sub_object_limit : int, optional
        ``sep.set_sub_object_limit`` for the block; None: unchanged.

    Examples
    --------
    >>> with sep_settings(pixstack=1_000_000):
    ...     pass  # sep.extract here may use a million pixels
    """
    old_stack, old_limit = sep.get_extract_pixstack(), sep.get_sub_object_limit()
    try:
        if pixstack is not None:
            sep.set_extract_pixstack(int(pixstack))
        if sub_object_limit is not None:
            sep.set_sub_object_limit(int(sub_object_limit))
        yield
    finally:
        sep.set_extract_pixstack(old_stack)
        sep.set_sub_object_limit(old_limit)


_BLAS = None  # threadpoolctl's controller of the loaded BLAS libraries, made on first use


@contextmanager
def single_thread_blas() -> Iterator[None]:
    """Run a block with one BLAS thread (threadpoolctl), the previous count restored after.

    PSF models and fits make many small matrix products and batched solves. OpenBLAS
    (numpy's) runs a product of more than ~2**18 multiply-adds on all cores, and its threads
    spin between calls: on 2 cores PSF photometry of a crowded 2048² field took 3.15 s of CPU
    with them and 1.42 s without, the forced step's joint fit 168 -> 87 ms, with the same
    results. Process pools already run one image per core, so a second thread buys nothing.

    Yields
    ------
    None

    Examples
    --------
    >>> import numpy as np
    >>> with single_thread_blas():
    ...     product = np.ones((600, 600)) @ np.ones((600, 600))
    """
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    with _BLAS.limit(limits=1, user_api="blas"):
        yield
