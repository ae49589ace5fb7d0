from ciwatch.cli import main

main()
