"""The Automodel engine's eager stand-in for Automodel's float32 RMSNorm against Automodel's own op
(its forward and its hand-written backward), for float32 and bfloat16 inputs, and the swap keeping
every parameter and name."""

import pytest
import torch

from engines.automodel.engine import EagerFloat32RMSNorm, eager_float32_norms


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-3)])
def test_eager_norm_matches_automodels_op_forward_and_backward(dtype, tol, weight_dtype):
    """float32 weights: a trained model's master weights; bfloat16: a frozen reference's."""
    from nemo_automodel.components.models.common.utils import Float32RMSNorm

    g = torch.Generator().manual_seed(0)
    norm = Float32RMSNorm(64, eps=1e-6, dtype=weight_dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64, generator=g))
    x = (3 * torch.randn(4, 7, 64, generator=g)).to(dtype)
    grad = torch.randn(4, 7, 64, generator=g).to(dtype)
    results = []
    for forward in (lambda t: torch.ops.nemo_automodel.float32_rms_norm(t, norm.weight, norm.eps),
                    EagerFloat32RMSNorm(norm)):
        xi = x.clone().requires_grad_()
        norm.weight.grad = None
        out = forward(xi)
        out.backward(grad)
        results.append((out.detach(), xi.grad, norm.weight.grad.clone()))
    (want, want_dx, want_dw), (got, dx, dw) = results
    assert got.dtype == want.dtype == dtype and dx.dtype == dtype and dw.dtype == want_dw.dtype == weight_dtype
    for a, b in ((got, want), (dx, want_dx), (dw, want_dw)):
        assert (a.float() - b.float()).abs().max() <= tol * max(1.0, b.float().abs().max())


def test_swap_keeps_parameters_and_names():
    from nemo_automodel.components.models.common.utils import Float32RMSNorm

    model = torch.nn.ModuleDict({"layer": torch.nn.ModuleDict({"norm": Float32RMSNorm(8, dtype=torch.float32),
                                                               "proj": torch.nn.Linear(8, 8)}),
                                 "norm": Float32RMSNorm(8, dtype=torch.float32)})
    before = dict(model.named_parameters())
    assert eager_float32_norms(model) == 2
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert isinstance(model["layer"]["norm"], EagerFloat32RMSNorm) and isinstance(model["norm"], EagerFloat32RMSNorm)
