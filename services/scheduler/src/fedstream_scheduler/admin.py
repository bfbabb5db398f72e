"""The admin surface of one tenant, independent of HTTP: the services that the REST API's
routers (fedstream_scheduler.api) and the cron scheduler call."""

from __future__ import annotations

from collections.abc import Callable

from fedstream.store import ModelStore
from fedstream_scheduler.enrollment import Enrollment
from fedstream_scheduler.federations import FederationService
from fedstream_scheduler.model_catalog import ModelCatalog
from fedstream_scheduler.releases import ReleaseService
from fedstream_scheduler.run_requests import RunRequestService
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.tokens import TokenService


class AdminServices:
    """One tenant's services: its scheduler (agents, runs), federations, models, API tokens
    and enrollment tokens, over one state store."""

    def __init__(
        self, scheduler: SchedulerService, store: ModelStore | None = None, clock: Callable[[], float] | None = None,
        enrollment: Enrollment | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.state = scheduler.state
        self.tenant = scheduler.state.tenant
        self.clock = clock or scheduler.clock
        self.store = store
        self.agents = scheduler.agents
        self.runs = scheduler.runs
        self.audit = scheduler.audit
        self.enrollment = enrollment or Enrollment(
            scheduler.state, None, scheduler.settings.enrollment.cert_lifetime_s, self.clock,
        )
        self.tokens = TokenService(self.state, self.clock)
        # False while the scheduler starts (its state store not reached yet, the bootstrap token
        # not installed): the admin API then answers 503, not a token refusal.
        self.live = True
        self.federations = FederationService(self.state, self.runs, store, self.clock)
        self.models = ModelCatalog(self.state, self.federations, store)
        self.releases = ReleaseService(self.state, self.models, self.audit, self.clock)
        self.run_requests = RunRequestService(self.state, self.federations, self.audit, self.clock)
