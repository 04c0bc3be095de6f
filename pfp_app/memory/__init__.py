from .encoder import RATES, VARIANTS, MemoryCache, MemoryEncoder, memory_grid, memory_token_count

__all__ = ["RATES", "VARIANTS", "MemoryCache", "MemoryEncoder", "memory_grid", "memory_token_count"]
