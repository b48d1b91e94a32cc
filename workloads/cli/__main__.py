from workloads.cli import app

app()
