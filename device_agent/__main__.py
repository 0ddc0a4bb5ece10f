"""``python -m device_agent``: the agent daemon and its client commands (see ``device_agent.cli``)."""
from __future__ import annotations

import sys

from device_agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
