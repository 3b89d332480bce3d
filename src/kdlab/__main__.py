import sys

from kdlab.cli import main

code = main()
if "torch.distributed" in sys.modules:  # a torchrun rank leaves its process group before exiting
    from kdlab.engine.distributed import shutdown

    shutdown()
sys.exit(code)
