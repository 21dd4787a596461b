"""`python -m dream_vla_ros.cli ...`: the `dream-vla` command."""

from dream_vla_ros.cli import main

main()
