"""Entry point for a Ray cluster; takes the arguments of ``fusion synth``:

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \\
        -- python -m jobs.synthesize --config demo --out /shared/datasets/demo

Inside a Ray job the driver connects to the cluster it was submitted to (Ray sets RAY_ADDRESS for it).
The output folder must be reachable by every node that writes shards (a shared filesystem).
"""

from __future__ import annotations

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
