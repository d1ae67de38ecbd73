"""`python -m benchmarks EXPORT_DIR [options]`: the same as `bcd benchmark`."""
import sys

from benchmarks.cli import main

sys.exit(main())
