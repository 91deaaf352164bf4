"""An on-policy step (one update per rollout batch) takes its old log-probs from the training
forward itself: the PPO ratio is then exactly 1 and the gradient is the plain policy gradient."""

import torch
from tensordict import TensorDict

from rlhf.algos.losses import PolicyLoss


def test_on_policy_loss_is_the_policy_gradient():
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.float32)
    adv = torch.randn(2, 1, generator=g).expand(2, 4) * mask
    logprobs = (-torch.rand(2, 4, generator=g)).requires_grad_()
    batch = TensorDict({"response_mask": mask, "advantages": adv}, batch_size=[2])
    loss, stats = PolicyLoss("ppo_clip", 0.2, 0.2, on_policy=True)({"logprobs": logprobs}, batch)
    loss.backward()
    # ratio 1 everywhere: loss = -sum(A), d loss / d logp = -A on response tokens (REINFORCE)
    assert torch.allclose(loss, -(adv * mask).sum())
    assert torch.allclose(logprobs.grad, -adv * mask)
    assert float(stats["actor/clip_frac"]) == 0.0
