"""realnvp_client: a typed Python client for realnvp-server (docs/api.md), standard library only.
Leaves out the server's Open Inference Protocol endpoints (not served yet)."""
from .client import PNG, Encoded, LogProb, RealNVPClient, RealNVPError, Sample, main

__all__ = ["RealNVPClient", "RealNVPError", "LogProb", "Encoded", "Sample", "PNG", "main"]
__version__ = "0.1.0"
