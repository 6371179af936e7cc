"""Run a small study on a local multi-node Ray cluster: a CPU-only head and two workers faking a GPU each.

Used by tests/test_multinode.py in a subprocess (a Ray cluster needs its own driver process).
Usage: python -m tests.multinode_study STORAGE
"""

from __future__ import annotations

import sys


def main(storage: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from study.driver import run_study
    from study.spec import parse_spec

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": 80 * 2**20})
    for _ in range(2):
        cluster.add_node(num_cpus=4, num_gpus=1, object_store_memory=80 * 2**20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    try:
        spec = parse_spec({
            "name": "multinode",
            "problem": {"name": "multidigits", "n_train": 256, "n_val": 64, "n_test": 64, "width": 8},
            "methods": ["ew", "rlw", {"name": "rlw", "distribution": "dirichlet", "alpha": 1.0}, "uw"],
            "seeds": [0, 1],
            "train": {"epochs": 2, "batch_size": 64, "device": "cpu"},
            "resources": {"cpu": 1, "gpu": 0.5},
        })
        meta = run_study(spec, storage, address=cluster.address)
        print("STATUS", meta["status"], meta["errored_trials"])
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
