"""avatarbench's engine: computation only, usable from the CLI, tests and any front end (never imports gradio).

GPUs are numbered in PCI bus order, as NVML and nvidia-smi number them (CUDA_DEVICE_ORDER=PCI_BUS_ID, unless the
user chose an order): CUDA's own default, fastest first, numbers a machine of mixed GPUs differently, and a job on
"cuda:1" would be shown, capped and measured on another card's NVML row. CUDA reads the variable when it starts,
so it is set here, on import, in every process that runs our code (app, CLI, job workers, Ray actors).
"""

import os

os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
