"""The hashing losses' defaults: DPSH/DTSH logits ``Theta = scale * u_i . u_j / K`` against loops from
that definition, the paper's ``1/2 u_i . u_j`` for ``scale=None``, the same logits at every code length;
DSH's margin K / 64 without the regulariser."""

from __future__ import annotations

import math

import pytest
import torch

from deepmetric import losses
from tests.test_hashing_losses import batch, class_relation, dpsh_reference, dsh_reference, dtsh_reference


@pytest.mark.parametrize("bits", [6, 16])
@pytest.mark.parametrize("scale", [3.0, 40.0])
def test_logits_are_scaled_by_scale_over_bits(bits: int, scale: float) -> None:
    codes, labels = batch(11, n=9, bits=bits)
    related = class_relation(labels)
    dpsh = losses.get("dpsh", quantization_weight=0.2, scale=scale)
    assert float(dpsh(codes, labels)) == pytest.approx(
        dpsh_reference(codes, related, 0.2, factor=scale / bits), rel=1e-10
    )
    dtsh = losses.get("dtsh", margin=0.7, quantization_weight=0.3, scale=scale)
    assert float(dtsh(codes, labels)) == pytest.approx(
        dtsh_reference(codes, related, 0.7, 0.3, factor=scale / bits), rel=1e-10
    )


def test_scale_none_is_the_papers_half_inner_product() -> None:
    codes, labels = batch(12, n=8, bits=10)
    related = class_relation(labels)
    assert float(losses.get("dpsh", quantization_weight=0.0, scale=None)(codes, labels)) == pytest.approx(
        dpsh_reference(codes, related, 0.0), rel=1e-10
    )
    # scale = K / 2 is the same loss as the paper's form
    assert float(losses.get("dpsh", quantization_weight=0.0, scale=5.0)(codes, labels)) == pytest.approx(
        dpsh_reference(codes, related, 0.0), rel=1e-10
    )


def test_default_logits_do_not_grow_with_the_code_length() -> None:
    """Binary codes repeated r times (r K bits, same Hamming geometry): the default DPSH/DTSH losses are
    equal, the paper's form (scale=None) is not, its logits growing r-fold."""
    codes = torch.tensor(
        [[1, 1, 1, -1], [1, 1, -1, -1], [-1, -1, 1, 1], [1, -1, -1, -1]], dtype=torch.float64
    )
    labels = torch.tensor([0, 0, 1, 1])
    for name in ("dpsh", "dtsh"):
        default = losses.get(name, quantization_weight=0.0)
        paper = losses.get(name, quantization_weight=0.0, scale=None)
        assert float(default(codes, labels)) == pytest.approx(float(default(codes.repeat(1, 8), labels)))
        assert not math.isclose(float(paper(codes, labels)), float(paper(codes.repeat(1, 8), labels)))


def test_scale_errors() -> None:
    for name in ("dpsh", "dtsh"):
        with pytest.raises(ValueError, match="scale must be positive"):
            losses.get(name, scale=0.0)


@pytest.mark.parametrize("bits", [8, 32])
def test_dsh_default_margin_is_bits_over_64_without_the_regulariser(bits: int) -> None:
    codes, labels = batch(13, n=8, bits=bits)
    expected = dsh_reference(codes, class_relation(labels), bits / 64, 0.0)
    assert float(losses.get("dsh")(codes, labels)) == pytest.approx(expected, rel=1e-10)
