"""Model FLOPs for MFU: the work a training step must do, against the accelerator's peak.

Per trained token, a decoder-only transformer costs 6 x (matmul parameters) for forward and
backward, plus attention's score and value products, 6 x layers x heads x head_dim x context
(causal: half of the 12 x ... of a full square), as in the PaLM paper's appendix B. Embedding
lookups cost nothing; an LM head (tied or not) is one matmul per token. Recomputation (activation
checkpointing) is not counted: MFU, unlike hardware FLOPs utilisation, counts only required work.
"""

from __future__ import annotations

# Dense bf16 tensor-core peak (no sparsity), FLOP/s, by device name as torch reports it.
PEAK_BF16 = {
    "H100 80GB HBM3": 989e12,  # SXM
    "H100 PCIe": 756e12,
    "H200": 989e12,
    "A100-SXM4-80GB": 312e12,
    "A100-SXM4-40GB": 312e12,
}


def peak_flops(device_name: str) -> float | None:
    """The bf16 peak of a named GPU, or None when it is not in the table (no MFU is reported)."""
    for key, flops in PEAK_BF16.items():
        if key in device_name:
            return flops
    return None


def train_flops_per_token(config, context: float, weight_grads: bool = True) -> float:
    """FLOPs to train on one token of a sequence of mean length `context`, for an HF config of a
    dense or MoE decoder (MoE: only the experts a token is routed to count). `weight_grads=False`:
    the weights are frozen (LoRA), so each matmul costs its forward and its input gradient, 4 x
    parameters instead of 6 (the adapters' own small matmuls are not counted)."""
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    h, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or h // heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    attn = h * head_dim * (heads + 2 * kv) + heads * head_dim * h  # q, k, v, o projections
    experts = getattr(c, "num_experts", None) or getattr(c, "n_routed_experts", None)
    if experts:
        moe_inter = getattr(c, "moe_intermediate_size", None) or c.intermediate_size
        active = getattr(c, "num_experts_per_tok", None) or 1
        shared = (getattr(c, "shared_expert_intermediate_size", None) or 0) + \
            (getattr(c, "n_shared_experts", None) or 0) * moe_inter
        mlp = 3 * h * (moe_inter * active + shared) + h * experts  # routed + shared experts + router
    else:
        mlp = 3 * h * c.intermediate_size  # gate, up, down
    matmul = layers * (attn + mlp) + h * vocab  # + the LM head
    return (6 if weight_grads else 4) * matmul + 6 * layers * heads * head_dim * context
