"""Load the reference package ``imagecorruptions`` 1.1.2 on current numpy and scikit-image.

Only for tests and benchmarks; the library never imports it. The released package breaks in
three places on current versions, and :func:`load_reference` patches each one, without
changing what it computes:

- it imports ``pkg_resources`` (gone from setuptools >= 81) to locate its frost images: a stub
  module answers ``resource_filename`` with the path inside the installed package;
- ``plasma_fractal`` (fog) uses ``np.float_``, removed in numpy 2: the alias is restored to
  ``np.float64``;
- glass_blur and gaussian_blur call ``skimage.filters.gaussian(..., multichannel=True)``, a
  keyword removed in scikit-image 0.19+ (replaced by ``channel_axis=-1``): the module's
  ``gaussian`` is wrapped to translate it.

Usage::

    from imagecorruptions_compat import load_reference   # benchmarks/ on sys.path
    reference = load_reference()                          # None when not installed
    reference.glass_blur(pil_image, 3)
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import types
import warnings
from typing import Any

import numpy as np

__all__ = ["REQUIREMENTS", "load_reference"]

#: Packages the reference needs at import time.
REQUIREMENTS = ("imagecorruptions", "cv2", "skimage", "scipy")


def load_reference() -> types.ModuleType | None:
    """Return ``imagecorruptions.corruptions`` patched for current numpy/scikit-image, or ``None``."""
    if any(importlib.util.find_spec(name) is None for name in REQUIREMENTS):
        return None
    spec = importlib.util.find_spec("imagecorruptions")
    package_dir = list(spec.submodule_search_locations or [""])[0] if spec else ""
    if importlib.util.find_spec("pkg_resources") is None and "pkg_resources" not in sys.modules:
        stub = types.ModuleType("pkg_resources")
        stub.resource_filename = lambda _package, path: os.path.join(package_dir, path)  # type: ignore[attr-defined]
        # what else imports pkg_resources once it is in sys.modules (pytest's syspath_prepend) finds a no-op
        stub.fixup_namespace_packages = lambda *_args, **_kwargs: None  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = stub
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its scipy.ndimage.interpolation import
        module = importlib.import_module("imagecorruptions.corruptions")
    if not getattr(module.gaussian, "_multichannel_shim", False):
        module.gaussian = _translate_multichannel(module.gaussian)
    return module


def _translate_multichannel(gaussian: Any) -> Any:
    @functools.wraps(gaussian)
    def wrapper(image: Any, *args: Any, multichannel: bool | None = None, **kwargs: Any) -> Any:
        if multichannel is not None:
            kwargs.setdefault("channel_axis", -1 if multichannel and np.ndim(image) == 3 else None)
        return gaussian(image, *args, **kwargs)

    wrapper._multichannel_shim = True  # type: ignore[attr-defined]
    return wrapper
