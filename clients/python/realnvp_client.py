#!/usr/bin/env python3
"""realnvp_client.py: runs the realnvp_client package's command line from the source tree, without
installing it (pip install clients/python installs the `realnvp-client` command instead).
Leaves out everything else: the client is src/realnvp_client/."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))
from realnvp_client import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
