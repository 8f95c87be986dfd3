"""`python -m fastproxy.cli`: the same as the `fastproxy` console script."""

import sys

from fastproxy.cli.commands import main

sys.exit(main())
