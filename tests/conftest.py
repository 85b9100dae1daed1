"""Shared fixtures."""

from __future__ import annotations

import pytest

from deepmetric import native


@pytest.fixture(params=["native", "fallback"])
def cpu_kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once with the compiled kernels of :mod:`deepmetric.native` and once with the numpy /
    torch code they replace (both must give the same, exact answers)."""
    if request.param == "native":
        if not native.available():
            pytest.skip("the native kernels could not be built here (no C compiler)")
    else:
        monkeypatch.setattr(native, "available", lambda: False)
    return request.param
