import sys

from webchat.cli import main

sys.exit(main())
