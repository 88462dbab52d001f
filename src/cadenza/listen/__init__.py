"""`cadenza listen`: blind A/B listening tests whose votes feed the model registry.

study.py builds a study folder (equal-length clips from two sources, opaque ids), votes.py keeps
the votes in a SQL database, app.py serves the listening page, results.py aggregates the votes
(Wilson 95% intervals) and writes them onto the registry's model versions.
"""
