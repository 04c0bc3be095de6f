from .memory_dit import MemoryTokens, MemoryWanTransformerBlock, enable_memory_blocks, memory_dit_forward, patch_grid
from .rope import grid_coords, rope_at_coords

__all__ = ["MemoryTokens", "MemoryWanTransformerBlock", "enable_memory_blocks", "memory_dit_forward", "patch_grid", "grid_coords", "rope_at_coords"]
