from icefield.cli import main

main()
