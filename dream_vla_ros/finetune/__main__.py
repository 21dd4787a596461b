"""`python -m dream_vla_ros.finetune RECIPE [KEY=VALUE ...]`: `dream-vla train` for
`accelerate launch -m dream_vla_ros.finetune ...` (multi-GPU, multi-node)."""

import sys

from dream_vla_ros.finetune.trainer import main

sys.exit(main())
