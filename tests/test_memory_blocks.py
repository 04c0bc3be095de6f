"""The two-group timestep block path equals Wan's own per-token path and plain forward exactly."""

import copy

import torch
from diffusers import WanTransformer3DModel

from pfp_app.model.memory_dit import MemoryWanTransformerBlock, enable_memory_blocks, memory_dit_forward
from pfp_app.model.memory_encoder import MemoryEncoder


def _models():
    torch.manual_seed(0)
    plain = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=4,
                                  out_channels=4, text_dim=16, freq_dim=32, ffn_dim=64, num_layers=2,
                                  rope_max_seq_len=64).eval()
    return plain, enable_memory_blocks(copy.deepcopy(plain))


def test_two_group_path_equals_wan_per_token_path():
    plain, memory_blocks = _models()
    assert all(isinstance(b, MemoryWanTransformerBlock) for b in memory_blocks.blocks)
    enc = MemoryEncoder(latent_channels=4, hidden_dim=64, rate="2x2x2", hr_base_channels=16, hr_channels=32, hr_heads=2)
    torch.nn.init.normal_(enc.hr_gate, std=0.1)
    x, t, text = torch.randn(2, 4, 5, 8, 8), torch.tensor([500.0, 300.0]), torch.randn(2, 7, 16)
    memory = enc(torch.randn(2, 4, 13, 8, 8))
    positions = torch.arange(13, 18.0)
    per_token = memory_dit_forward(plain, x, t, text, memory, positions)  # Wan's (B, N, 6, D) path
    two_group = memory_dit_forward(memory_blocks, x, t, text, memory, positions)
    torch.testing.assert_close(two_group, per_token, rtol=1e-5, atol=1e-5)
    # and the memory tokens do change the output
    assert not torch.allclose(two_group, memory_dit_forward(memory_blocks, x, t, text, None, positions))


def test_memory_blocks_keep_plain_forward_and_weights():
    plain, memory_blocks = _models()
    x, t, text = torch.randn(1, 4, 3, 8, 8), torch.tensor([250.0]), torch.randn(1, 5, 16)
    torch.testing.assert_close(memory_blocks(x, t, text).sample, plain(x, t, text).sample, rtol=0, atol=0)
    assert memory_blocks.state_dict().keys() == plain.state_dict().keys()
