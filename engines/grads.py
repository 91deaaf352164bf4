"""Gradient-norm clipping over parameters sharded any number of ways.

With tensor parallelism a model's parameters live on different device meshes (2-D for the
TP-sharded layers, 1-D for replicated norms), and `torch.nn.utils.clip_grad_norm_` cannot stack
their norms. Each mesh's norm is taken by DTensor (which counts replicated shards once), then
the per-mesh norms are combined.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch.distributed.tensor import DTensor


def clip_grad_norm(parameters, max_norm: float) -> float:
    """Scale the gradients in place so their global L2 norm is at most `max_norm`; return the
    norm before clipping (inf or nan when a gradient is not finite: then nothing is scaled)."""
    by_mesh: dict = defaultdict(list)
    for p in parameters:
        if p.grad is not None:
            by_mesh[p.grad.device_mesh if isinstance(p.grad, DTensor) else None].append(p.grad)
    squares = 0.0
    for mesh, grads in by_mesh.items():
        if mesh is None:  # plain tensors: a few fused kernels instead of one per gradient
            norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
        else:
            norms = [torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]
        norm = torch.linalg.vector_norm(torch.stack(norms))
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        squares += float(norm) ** 2
    total = math.sqrt(squares)
    coef = max_norm / (total + 1e-6)
    if math.isfinite(total) and coef < 1.0:
        for mesh, grads in by_mesh.items():
            if mesh is None:
                torch._foreach_mul_(grads, coef)
            else:
                for g in grads:
                    g.mul_(coef)
    return total
