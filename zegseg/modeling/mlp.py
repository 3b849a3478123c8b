"""A plain multi-layer perceptron (ReLU between layers), used for mask and semantic embeddings of queries."""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["MLP"]


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (none after the last), applied to the last dim."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        """
        Args:
            input_dim: channels of the input.
            hidden_dim: channels between layers.
            output_dim: channels of the output.
            num_layers: number of linear layers (>= 1); 1 means a single ``input_dim -> output_dim`` layer.
        """
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP needs at least one layer, got num_layers={num_layers}")
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x: (..., input_dim).
        Returns:
            (..., output_dim).
        """
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
