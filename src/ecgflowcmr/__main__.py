import sys

from ecgflowcmr.cli import main

sys.exit(main())
