"""``python -m icefield.cli``: the command line, in a process tuned as the ``icefield`` program tunes its own
(the allocator setting applies only if pyarrow was not loaded yet: ``python -m icefield`` loads it later)."""

from icefield.cli import main
from icefield.process import tuned

with tuned():
    main()
