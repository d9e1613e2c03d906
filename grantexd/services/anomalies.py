"""Anomaly detection: rules over each agent's recent activity, and the anomalies they record.

A scan looks at the window of one detection interval ending now, per agent:

- ``rate_spike``: more grant tokens issued than ``RATE_SPIKE_MIN_TOKENS`` and than
  ``RATE_SPIKE_FACTOR`` times the agent's average per window over the previous 24 windows;
- ``high_failure_rate``: at least ``FAILURE_MIN_ENTRIES`` audit entries with status failure
  or blocked, making up at least half of the agent's entries;
- ``off_hours_activity``: at least ``OFF_HOURS_MIN_TOKENS`` tokens issued in the configured
  off hours (UTC);
- ``new_principal``: at least ``NEW_PRINCIPALS_MIN`` principals granting the agent access
  for the first time, for an agent that had grants before the window.

Each anomaly is written once per developer, type, agent and interval, together with its
``anomaly.detected`` webhook event in the same transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from grantexd.crypto.ids import new_id
from grantexd.errors import NotFound
from grantexd.logging import get_logger
from grantexd.services import webhooks
from grantexd.services.context import Services
from grantexd.services.timefmt import to_iso
from grantexd.store import anomalies as anomaly_store
from grantexd.store.anomalies import AgentActivity, Anomaly, NewAnomaly

log = get_logger()

RATE_SPIKE_MIN_TOKENS = 20
RATE_SPIKE_FACTOR = 3
RATE_SPIKE_HIGH_FACTOR = 10
HISTORY_WINDOWS = 24
FAILURE_MIN_ENTRIES = 10
FAILURE_RATIO = 0.5
FAILURE_HIGH_RATIO = 0.8
OFF_HOURS_MIN_TOKENS = 10
NEW_PRINCIPALS_MIN = 10


def _rate_spike(activity: AgentActivity) -> tuple[str, str, dict[str, Any]] | None:
    average = activity.tokens_in_history / HISTORY_WINDOWS
    threshold = max(RATE_SPIKE_MIN_TOKENS, RATE_SPIKE_FACTOR * average)
    if activity.tokens_in_window < threshold:
        return None
    severity = "high" if activity.tokens_in_window >= RATE_SPIKE_HIGH_FACTOR * max(average, 1) else "medium"
    description = (
        f"{activity.tokens_in_window} grant tokens issued in the last window, "
        f"against an average of {average:.1f} per window over the previous {HISTORY_WINDOWS}"
    )
    return severity, description, {"tokens": activity.tokens_in_window, "averagePerWindow": round(average, 2)}


def _high_failure_rate(activity: AgentActivity) -> tuple[str, str, dict[str, Any]] | None:
    if activity.audit_failures < FAILURE_MIN_ENTRIES:
        return None
    ratio = activity.audit_failures / activity.audit_entries
    if ratio < FAILURE_RATIO:
        return None
    severity = "high" if ratio >= FAILURE_HIGH_RATIO else "medium"
    description = f"{activity.audit_failures} of {activity.audit_entries} audit entries failed or were blocked"
    return severity, description, {"failures": activity.audit_failures, "entries": activity.audit_entries}


def _off_hours(activity: AgentActivity, hours: tuple[int, int]) -> tuple[str, str, dict[str, Any]] | None:
    if activity.off_hours_events < OFF_HOURS_MIN_TOKENS:
        return None
    description = (
        f"{activity.off_hours_events} grant tokens issued between {hours[0]:02d}:00 and {hours[1]:02d}:00 UTC"
    )
    return "low", description, {"tokens": activity.off_hours_events, "offHoursUtc": f"{hours[0]}-{hours[1]}"}


def _new_principals(activity: AgentActivity) -> tuple[str, str, dict[str, Any]] | None:
    if activity.new_principals < NEW_PRINCIPALS_MIN or not activity.had_earlier_grants:
        return None
    description = f"{activity.new_principals} principals granted access to the agent for the first time"
    return "medium", description, {"newPrincipals": activity.new_principals}


async def detect(services: Services, developer_id: str | None) -> list[Anomaly]:
    """Scan one developer's agents, or every developer's when None; return new anomalies."""
    now = services.now()
    interval = timedelta(seconds=services.config.anomaly_interval_seconds)
    window_start = now - interval
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    bucket = epoch + interval * ((now - epoch) // interval)
    hours = services.config.anomaly_off_hours
    activities = await anomaly_store.agent_activity(
        services.db, developer_id, window_start, now, window_start - interval * HISTORY_WINDOWS, hours[0], hours[1]
    )
    found: list[Anomaly] = []
    for activity in activities:
        checks = {
            "rate_spike": _rate_spike(activity),
            "high_failure_rate": _high_failure_rate(activity),
            "off_hours_activity": _off_hours(activity, hours),
            "new_principal": _new_principals(activity),
        }
        for anomaly_type, result in checks.items():
            if result is None:
                continue
            severity, description, metadata = result
            anomaly = await _record(services, activity, anomaly_type, severity, description, metadata, bucket)
            if anomaly is not None:
                found.append(anomaly)
    return found


async def _record(
    services: Services,
    activity: AgentActivity,
    anomaly_type: str,
    severity: str,
    description: str,
    metadata: dict[str, Any],
    bucket: datetime,
) -> Anomaly | None:
    async with services.db.transaction() as tx:
        anomaly = await anomaly_store.insert_anomaly(
            tx,
            NewAnomaly(
                id=new_id("anm"),
                developer_id=activity.developer_id,
                type=anomaly_type,
                severity=severity,
                agent_id=activity.agent_id,
                description=description,
                metadata=metadata,
                window_start=bucket,
            ),
        )
        if anomaly is None:
            return None
        await webhooks.enqueue_event(tx, activity.developer_id, "anomaly.detected", anomaly_json(anomaly))
    services.metrics.anomalies_detected.labels(anomaly_type).inc()
    log.warning(
        "anomaly.detected",
        developerId=activity.developer_id,
        agentId=activity.agent_id,
        anomalyId=anomaly.id,
        type=anomaly_type,
        severity=severity,
    )
    return anomaly


def anomaly_json(anomaly: Anomaly) -> dict[str, Any]:
    return {
        "id": anomaly.id,
        "type": anomaly.type,
        "severity": anomaly.severity,
        "agentId": anomaly.agent_id,
        "principalId": anomaly.principal_id,
        "description": anomaly.description,
        "metadata": anomaly.metadata,
        "detectedAt": to_iso(anomaly.detected_at),
        "acknowledgedAt": to_iso(anomaly.acknowledged_at) if anomaly.acknowledged_at else None,
    }


async def list_anomalies(
    services: Services, developer_id: str, unacknowledged_only: bool, limit: int | None, offset: int
) -> list[Anomaly]:
    return await anomaly_store.list_anomalies(services.db, developer_id, unacknowledged_only, limit, offset)


async def acknowledge(services: Services, developer_id: str, anomaly_id: str) -> Anomaly:
    anomaly = await anomaly_store.acknowledge(services.db, developer_id, anomaly_id)
    if anomaly is None:
        raise NotFound("Anomaly not found")
    log.info("anomaly.acknowledged", developerId=developer_id, anomalyId=anomaly_id)
    return anomaly
