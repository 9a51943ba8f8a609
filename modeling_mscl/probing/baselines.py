"""Encoders without learning, for the rows every results table needs.

:class:`LogMelStatistics` summarises each log-mel window by the per-band mean, standard
deviation and maximum over its frames (3 x 64 features). Spectral statistics like these
separate synthesised timbres and mixes well, so they are the bar a learned representation
must clear before it can be said to have learned anything the input did not already show.
It plugs into every probe like an encoder: ``model(input_features).pooler_output``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..modeling_mscl import MSCLModelOutput

__all__ = ["LogMelStatistics", "LogMelStatisticsConfig"]


@dataclass(frozen=True)
class LogMelStatisticsConfig:
    """The two dimensions the probes read from an encoder's config."""

    num_mel_bins: int = 64
    model_type: str = "log-mel-statistics"

    @property
    def encoder_hidden_size(self) -> int:
        """Feature size: mean, standard deviation and maximum of every band."""
        return 3 * self.num_mel_bins

    def to_dict(self) -> dict[str, Any]:
        """The fields, for cache keys."""
        return asdict(self)


class LogMelStatistics(nn.Module):
    """Per-band mean, standard deviation and maximum of a log-mel window over its frames."""

    def __init__(self, num_mel_bins: int = 64) -> None:
        super().__init__()
        self.config = LogMelStatisticsConfig(num_mel_bins)
        # No weights; a buffer gives the module a device and a dtype like an encoder's.
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)

    @property
    def device(self) -> torch.device:
        """Where the features are computed."""
        return self._device_anchor.device

    @property
    def dtype(self) -> torch.dtype:
        """Always float32."""
        return torch.float32

    def forward(
        self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> MSCLModelOutput:
        """`(batch, frames, num_mel_bins)` log-mels -> `pooler_output` `(batch, 3 * bins)`.

        With an ``attention_mask`` `(batch, frames)`, padded frames are left out.
        """
        x = input_features.float()
        if x.dim() != 3 or x.shape[-1] != self.config.num_mel_bins:
            raise ValueError(
                f"input_features must have shape (batch, frames, {self.config.num_mel_bins}); "
                f"got {tuple(x.shape)}"
            )
        if attention_mask is None:
            mean, std, peak = x.mean(1), x.std(1, unbiased=False), x.amax(1)
        else:
            keep = attention_mask.to(x.device, torch.bool)[..., None]
            count = keep.sum(1).clamp_min(1)
            mean = (x * keep).sum(1) / count
            std = ((((x - mean[:, None]) * keep) ** 2).sum(1) / count).sqrt()
            peak = x.masked_fill(~keep, torch.finfo(x.dtype).min).amax(1)
        return MSCLModelOutput(pooler_output=torch.cat([mean, std, peak], dim=-1))
