from icefield.__main__ import main

main()
