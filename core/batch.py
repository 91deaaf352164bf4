"""The one batch format that travels between roles: a `TensorDict` of shape [num_sequences].

Layout: each row is `prompt tokens | response tokens | padding` (right-padded), so token t's
log-prob is `log p(input_ids[t] | input_ids[:t])` and sits at column t (column 0 is 0).

Keys (tensor, [B, T] unless noted):
- `input_ids`, `attention_mask`, `position_ids`
- `response_mask`: 1 on response tokens (the tokens a loss is taken over), 0 elsewhere; in a
  multi-turn trajectory the sampled tokens of every assistant turn (the environment's replies
  between them are context, 0)
- `rollout_logprobs`: the rollout engine's log-probs of the sampled tokens
- `rollout_versions` (long): the policy version that sampled each token; an engine gives the
  weight pushes that landed during its call before the token (0 unless partial rollouts let a push
  land mid-generation), the controller adds the version the batch was launched on
- `policy_lag` (long): the trainer's version minus `rollout_versions` (0 on-policy)
- `old_logprobs`, `ref_logprobs`: the trainer's log-probs before the update, and the frozen reference's
- `values`: the critic's values
- `rewards`: token-level rewards; `scores` [B]: the sequence-level reward
- `advantages`, `returns`
- `group_ids` [B]: index of the prompt a sample was drawn for (samples of one prompt share it)
- `truncated` [B]: the response hit the token limit before end-of-sequence (a trajectory: a limit
  of the agent's ended it)
- `env_rewards` [B]: a trajectory's summed environment rewards (multi-turn rollouts)
"""

from __future__ import annotations

from itertools import chain

import torch
from tensordict import TensorDict


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> TensorDict:
    """Right-pad prompt+response token lists into the batch layout above (a few tensor operations
    for the whole batch: a rollout packs hundreds of rows every step)."""
    n = len(prompts)
    plen = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    total = plen + torch.tensor([len(r) for r in responses], dtype=torch.long)
    width = int(total.max()) if n else 0
    cols = torch.arange(width).expand(n, width)
    attention_mask = (cols < total[:, None]).long()
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    input_ids[attention_mask.bool()] = torch.tensor(
        list(chain.from_iterable(chain(p, r) for p, r in zip(prompts, responses))), dtype=torch.long)
    response_mask = ((cols >= plen[:, None]) & (cols < total[:, None])).float()
    return TensorDict(
        {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": cols.clone(),
            "response_mask": response_mask,
        },
        batch_size=[n],
    )


def pack_masked(examples: list[tuple[list[int], list[int]]], pad_id: int) -> TensorDict:
    """Like `pack`, for sequences whose loss tokens are not one trailing span (e.g. the assistant
    turns of a conversation): each example is (token ids, loss mask), the mask becoming
    `response_mask`."""
    batch = pack([ids for ids, _ in examples], [[] for _ in examples], pad_id)
    for i, (ids, mask) in enumerate(examples):
        batch["response_mask"][i, : len(mask)] = torch.tensor(mask, dtype=torch.float32)
    return batch


def scatter_response_values(batch: TensorDict, per_response: list[list[float]]) -> torch.Tensor:
    """Place per-response-token values (e.g. rollout log-probs) at their columns in the layout."""
    out = torch.zeros(batch["input_ids"].shape, dtype=torch.float32)
    out[batch["response_mask"].bool()] = torch.tensor(list(chain.from_iterable(per_response)), dtype=torch.float32)
    return out


def split(batch: TensorDict, parts: int) -> list[TensorDict]:
    """Split along the batch dimension into `parts` near-equal chunks (data-parallel dispatch)."""
    return [batch[idx] for idx in torch.arange(batch.batch_size[0]).tensor_split(parts)]


def cat(batches: list[TensorDict], pad_id: int) -> TensorDict:
    """Concatenate batches of different widths, right-padding every [B, T] tensor."""
    width = max(b["input_ids"].shape[1] for b in batches)
    padded = []
    for b in batches:
        extra = width - b["input_ids"].shape[1]
        if extra:
            b = b.clone()
            for key, value in list(b.items()):
                if value.dim() == 2:
                    fill = pad_id if key == "input_ids" else 0
                    b[key] = torch.nn.functional.pad(value, (0, extra), value=fill)
        padded.append(b)
    return torch.cat(padded)
