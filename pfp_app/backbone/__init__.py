from .memory_dit import (MemoryTokens, MemoryWanTransformerBlock, enable_memory_blocks, history_recent_tokens,
                         join_memory, memory_dit_forward, patch_grid, recent_tokens)
from .rope import grid_coords, rope_at_coords

__all__ = ["MemoryTokens", "MemoryWanTransformerBlock", "enable_memory_blocks", "history_recent_tokens", "join_memory", "memory_dit_forward", "patch_grid", "recent_tokens", "grid_coords", "rope_at_coords"]
