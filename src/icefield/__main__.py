"""The ``icefield`` program (the console script, and ``python -m icefield``): the command line, run in a
process tuned for running pipelines (:func:`icefield.process.tuned`).

The program owns its process, so it tunes it; the library does not (importing icefield or calling
:func:`icefield.run_pipeline` changes nothing). The tuning is entered before the command line is
imported: Arrow's allocator reads its setting once, when pyarrow loads.
"""

from __future__ import annotations

from icefield.process import tuned


def main() -> None:
    """Run the ``icefield`` command line (:func:`icefield.cli.main`, which exits with the command's code)
    inside :func:`icefield.process.tuned`."""
    with tuned():
        from icefield.cli import main as run_command_line

        run_command_line()


if __name__ == "__main__":
    main()
