import sys

from dsonode.cli import main

sys.exit(main())
