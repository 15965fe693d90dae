"""realnvp_torch: a PyTorch twin of docs/model.md: the model, its checkpoint file, data and a (distributed) trainer.
Leaves out serving: its model.safetensors is served by bin/realnvp-server (the C core) as it is."""
from .model import (RealNVP, config_json, coupling_layout, ct_cin, expected_shapes, latent_parts,
                    load_model, split_indices, squeeze, unsqueeze, validate_config)
from .safetensors import read as read_safetensors, write as write_safetensors

__version__ = "0.1.0"

__all__ = ["RealNVP", "config_json", "coupling_layout", "ct_cin", "expected_shapes", "latent_parts", "load_model",
           "read_safetensors", "split_indices", "squeeze", "unsqueeze", "validate_config", "write_safetensors"]
