"""Decode a growing latent history once: the causal VAE's feature cache carried from segment to segment.

diffusers' `AutoencoderKLWan._decode` already decodes one latent frame at a time, keeping the last frames of
every causal convolution in a feature cache, but it clears that cache at each call. Keeping it between calls
makes decoding segment k cost exactly its own latent frames, and the joined segments equal a decode of the
whole history in one go (no seam, no re-decoded context). We drive the VAE's `decoder` the way `_decode` does;
it is hand-written because diffusers offers no public "continue decoding" call.

Falls back to `WanLatentCodec.decode_continuation` (warm-up on the last latent frames) where the cache cannot be
used: a tiled decode, a VAE moved to the GPU only while used, or patchified latents.
"""

from __future__ import annotations

import torch

from .codec import WanLatentCodec

WARMUP_LATENTS = 2  # latent frames decoded (and dropped) to warm the decoder when continuing a saved history


class StreamingDecoder:
    """Pixel frames of consecutive latent chunks (B, C, n, H', W') -> (B, 3, T, H, W) in [-1, 1].

    The first chunk fed (without `warm_up`) starts the video: its first latent frame gives `lead` pixel
    frames, every later one `temporal_ratio`.
    """

    def __init__(self, codec: WanLatentCodec):
        self.codec = codec
        vae = codec.vae
        self.cached = (type(codec) is WanLatentCodec and not getattr(vae, "use_tiling", False)
                       and getattr(vae.config, "patch_size", None) is None and hasattr(vae, "_cached_conv_counts"))
        self._feat: list | None = None
        self._context: torch.Tensor | None = None  # fallback path: the last latent frames seen

    @property
    def started(self) -> bool:
        return self._feat is not None or self._context is not None

    def warm_up(self, context: torch.Tensor | None) -> None:
        """Continue after `context`, the last latent frames of a history decoded earlier (outputs dropped)."""
        if context is None or context.shape[2] == 0:
            return
        context = context[:, :, -WARMUP_LATENTS:]
        if self.cached:
            self._run(context)
        else:
            self._context = context

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if not self.cached:
            frames = self.codec.decode_continuation(self._context, latents)
            self._context = latents[:, :, -WARMUP_LATENTS:] if self._context is None else \
                torch.cat([self._context, latents], dim=2)[:, :, -WARMUP_LATENTS:]
            return frames
        return self._run(latents)

    @torch.no_grad()
    def _run(self, latents: torch.Tensor) -> torch.Tensor:
        c, vae = self.codec, self.codec.vae
        z = latents.float() * c.std.to(latents.device) + c.mean.to(latents.device)
        x = vae.post_quant_conv(z.to(c.device, c.dtype))
        first = self._feat is None
        if first:
            self._feat = [None] * vae._cached_conv_counts["decoder"]
        outs = []
        for i in range(x.shape[2]):
            outs.append(vae.decoder(x[:, :, i : i + 1], feat_cache=self._feat, feat_idx=[0],
                                    first_chunk=first and i == 0))
        return torch.clamp(torch.cat(outs, dim=2), -1.0, 1.0).float()
