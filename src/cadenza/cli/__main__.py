"""`python -m cadenza.cli`: the same as the `cadenza` command."""

import sys

from cadenza.cli import main

sys.exit(main())
