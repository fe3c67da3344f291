from se_flax.benchmark.cli import main

main()
