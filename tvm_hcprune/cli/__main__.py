import sys

from tvm_hcprune.cli import main

sys.exit(main())
