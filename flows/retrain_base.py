"""Prefect entry point of the base-model flow (prefect.yaml: flows/retrain_base.py:retrain_base).

The flow lives in the cadenza package (src/cadenza/flows.py) next to the nightly `retrain`.
"""

from cadenza.flows import retrain_base

__all__ = ["retrain_base"]

if __name__ == "__main__":
    retrain_base()
