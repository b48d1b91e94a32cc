"""Shared infra fixtures: every stack file rendered once per test session."""

from __future__ import annotations

import pytest

from components.render import RenderResult, render_stack

AWS_STACKS = ["dev", "staging", "prod", "ci"]
ALL_STACKS = [*AWS_STACKS, "local"]
# A real-looking secret (12+ chars) so the tracking server's password rule passes.
ADMIN_PASSWORD = "a-very-secret-admin-password"


@pytest.fixture(scope="session")
def rendered() -> dict[str, RenderResult]:
    """stack name -> RenderResult for all five stack files, rendered once per session."""
    return {name: render_stack(name, secrets={"trackingAdminPassword": ADMIN_PASSWORD}) for name in ALL_STACKS}
