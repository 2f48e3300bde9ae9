from personagen_core.cli import main

main()
