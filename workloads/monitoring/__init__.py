"""Monitoring: is an endpoint's traffic still what its champion was trained for? Alert and retrain if not.

    monitor.py      one pass: observe -> act, inside the MLflow run (run.py) that records it
    window.py       the captured window (by hours or by records)
    labels.py       ground truth joined to captured rows
    reference.py    the champion, its training data and their cached profiles
    profile.py      the reference profile (computed once, cached in the capture bucket)
    drift.py        drift statistics (KS, chi-square, PSI) against a profile
    performance.py  the champion's metric on labelled rows (decay)
    report.py       metrics, HTML/PNG report, terminal summary
    alerts.py       webhook, SNS, or a file in the environment's workdir
    retrain.py      retraining under lock.py's lock and cooldown, here or via retrain_jobs.py
    result.py       the result, its statuses and exit codes
"""
