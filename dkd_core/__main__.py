import sys

from dkd_core.cli import main

sys.exit(main())
