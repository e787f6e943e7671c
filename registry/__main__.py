"""``python -m registry …`` is ``hangar registry …``."""

import sys

from client.cli import main

sys.exit(main(["registry", *sys.argv[1:]]))
