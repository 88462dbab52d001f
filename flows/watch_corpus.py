"""Prefect entry point of the corpus watcher (prefect.yaml: flows/watch_corpus.py:watch_corpus).

It emits `cadenza.corpus.changed` when the corpus folder's files change; the nightly-retrain
deployment's trigger starts a retrain on that event. The flow lives in src/cadenza/flows.py.
"""

from cadenza.flows import watch_corpus

__all__ = ["watch_corpus"]

if __name__ == "__main__":
    watch_corpus()
