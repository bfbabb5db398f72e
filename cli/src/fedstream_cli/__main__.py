"""`python -m fedstream_cli`: the `fedstream` command."""

import sys

from fedstream_cli import main

sys.exit(main())
