"""`python -m polyrec ...` (and `torchrun --nproc_per_node K -m polyrec train ...`): the command line."""

from polyrec.cli import main

main()
