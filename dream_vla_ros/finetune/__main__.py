"""`python -m dream_vla_ros.finetune RECIPE [KEY=VALUE ...]`: what `dream-vla train`
runs, for `accelerate launch -m dream_vla_ros.finetune ...` (multi-GPU, multi-node)."""

import sys

from dream_vla_ros.finetune.entry import main

sys.exit(main())
