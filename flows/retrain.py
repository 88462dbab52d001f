"""Prefect entry point of the retraining flow (prefect.yaml: flows/retrain.py:retrain).

The flow itself lives in the cadenza package (src/cadenza/flows.py) so that the CLI
(`cadenza retrain`, `cadenza schedule serve`) and deployments run the same code.
"""

from cadenza.flows import retrain

__all__ = ["retrain"]

if __name__ == "__main__":
    retrain()
