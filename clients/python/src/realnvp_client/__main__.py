"""python3 -m realnvp_client: the command line (realnvp_client.client.main).
Leaves out everything else (the client itself is realnvp_client.RealNVPClient)."""
import sys

from .client import main

sys.exit(main())
