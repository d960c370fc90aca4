import sys

from upscaler_client.cli import main

sys.exit(main())
