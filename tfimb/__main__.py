import sys

from tfimb.cli import main

sys.exit(main())
