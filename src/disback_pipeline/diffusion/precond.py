"""EDM preconditioning (Karras et al. 2022) around any backbone.

D(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s)), with
c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2),
c_in = 1 / sqrt(s^2 + sd^2), c_noise = ln(s) / 4.
"""

from __future__ import annotations

import torch
from torch import nn


def edm_coefficients(sigma: torch.Tensor, sigma_data: float = 0.5):
    """Return (c_skip, c_out, c_in, c_noise) for noise levels ``sigma``."""
    sd2 = sigma_data**2
    denom = sigma**2 + sd2
    c_skip = sd2 / denom
    c_out = sigma * sigma_data / denom.sqrt()
    c_in = 1.0 / denom.sqrt()
    c_noise = sigma.log() / 4.0
    return c_skip, c_out, c_in, c_noise


class EDMPrecond(nn.Module):
    """Denoiser D(x, sigma, labels) built from a raw backbone F.

    Args:
        backbone: module called as ``backbone(x_in, c_noise, class_labels)``
            returning a tensor shaped like ``x_in``.
        sigma_data: expected standard deviation of the data (data units).
        label_dim: number of classes; 0 means unconditional.
        backbone_name: attribute (and state_dict prefix) of the backbone:
            ``backbone`` for ours, ``model`` for EDM-compatible networks.
    """

    def __init__(self, backbone: nn.Module, sigma_data: float = 0.5, label_dim: int = 0,
                 backbone_name: str = "backbone"):
        super().__init__()
        self._backbone_name = backbone_name
        self.add_module(backbone_name, backbone)
        self.sigma_data = float(sigma_data)
        self.label_dim = int(label_dim)

    @property
    def net(self) -> nn.Module:
        """The wrapped backbone F, whatever its attribute name."""
        return self._modules[self._backbone_name]

    def forward(self, x: torch.Tensor, sigma, class_labels: torch.Tensor | None = None):
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(-1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros(x.shape[0], self.label_dim, device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        view = (-1,) + (1,) * (x.ndim - 1)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        f_x = self.net(c_in.reshape(view) * x, c_noise, class_labels)
        return c_skip.reshape(view) * x + c_out.reshape(view) * f_x.to(torch.float32)
