"""The model lifecycle across environments: promotion between stacks and an audit report per version.

    bundle.py    a version and everything it needs elsewhere, as files (export side of a promotion)
    promote.py   `mlops promote`: import into the target, idempotent, registered last
    regate.py    the target's gate on the target's data (the training package's gate API)
    report.py    `mlops model report`: everything recorded about one version (JSON)
    history.py   gates, promotions, monitoring runs and serving evidence of a version
    render.py    the report as one HTML page
"""
