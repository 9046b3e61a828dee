from mmoe.cli import main

main()
