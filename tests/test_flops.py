"""MFU's numerator against the model itself: 6 x the weights of every matmul a token passes
through (counted from the module tree), plus causal attention's products."""

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from engines.flops import peak_flops, train_flops_per_token


def test_dense_flops_count_every_linear_layer_once():
    for tied in (True, False):
        config = Qwen2Config(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=160, vocab_size=500, tie_word_embeddings=tied)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        context = 100
        attention = 6 * 3 * 4 * 16 * context  # layers x heads x head_dim x context, forward + backward, causal
        assert train_flops_per_token(config, context) == 6 * linear + attention
        # frozen weights (LoRA): forward and input gradient of each matmul; attention is unchanged
        assert train_flops_per_token(config, context, weight_grads=False) == 4 * linear + attention


def test_peak_flops_knows_the_h100_and_nothing_it_does_not():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("cpu") is None
