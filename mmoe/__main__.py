from mmoe.recipes import main

main()
