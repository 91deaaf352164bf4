"""Independent references the tests check the engines' per-token ops against."""

import torch


def float64_token_logprobs(logits: torch.Tensor, ids: torch.Tensor, weight: torch.Tensor):
    """Plain float64 log-softmax log-probs in the batch layout (column t: log p(ids[t] | < t),
    column 0: 0), and the gradient of sum(weight * log-probs) with respect to the logits."""
    ref_logits = logits.detach().double().requires_grad_()
    lp = torch.log_softmax(ref_logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    ref = torch.nn.functional.pad(lp, (1, 0))
    (ref * weight.double()).sum().backward()
    return ref.detach(), ref_logits.grad
