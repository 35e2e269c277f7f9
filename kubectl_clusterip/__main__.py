from kubectl_clusterip.cli import main

main()
