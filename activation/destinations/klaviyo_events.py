"""Klaviyo events: one event per trigger (``POST /api/events``, Klaviyo's Create Event, the
revision in the config), for a Klaviyo flow to act on - e.g. a "Cart Abandoned" metric that
starts an abandoned-cart flow.

- The profile is named by ``external_id`` (the person_id, as a person_id-keyed sync writes it)
  or by ``email``; an event never carries subscription attributes, so it cannot subscribe
  anyone: Klaviyo's marketing consent stays what the syncs set (Klaviyo sends a marketing flow
  message only to a profile subscribed on that channel). The caller sends an event only for a
  person who consents on the flow's channel.
- ``unique_id`` is the trigger's key (the cart): Klaviyo records the first event of a
  unique_id per profile and metric, so a retry after a lost answer is never a second event.
"""

from __future__ import annotations

from datetime import datetime, timezone

from activation.destinations.base import secret_from_env
from activation.destinations.klaviyo import JSONAPI, _refused
from activation.http import HttpClient
from core.settings.activation import Retry


class KlaviyoEvents:
    name = "klaviyo_events"

    def __init__(self, trigger: str, base_url: str, api_key_env: str, revision: str, retry: Retry):
        key = secret_from_env(trigger, "api_key_env", api_key_env)
        self.base = base_url.rstrip("/")
        self.http = HttpClient(retry, headers={"Authorization": f"Klaviyo-API-Key {key}", "revision": revision,
                                               "accept": JSONAPI, "content-type": JSONAPI})

    @staticmethod
    def body(metric: str, profile: dict[str, str], unique_id: str, properties: dict, value: float | None,
             at: float) -> dict:
        attributes = {
            "properties": properties,
            "time": datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds"),
            "unique_id": unique_id,
            "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
            "profile": {"data": {"type": "profile", "attributes": profile}},
        }
        if value is not None:
            attributes["value"] = value
        return {"data": {"type": "event", "attributes": attributes}}

    def send(self, metric: str, profile: dict[str, str], unique_id: str, properties: dict, value: float | None,
             at: float) -> None:
        """Raises activation.http.DeliveryFailed (RequestRefused for a 4xx) when not accepted."""
        resp = self.http.request("POST", f"{self.base}/api/events",
                                 json=self.body(metric, profile, unique_id, properties, value, at))
        if resp.status_code != 202:
            raise _refused("Klaviyo Create Event", resp)

    def close(self) -> None:
        self.http.close()
