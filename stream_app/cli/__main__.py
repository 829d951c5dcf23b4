"""`python -m stream_app.cli`: what the demo, the tests and benchmarks spawn."""

import sys

from stream_app.cli import main

sys.exit(main())
