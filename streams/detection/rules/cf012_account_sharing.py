"""CF-012 account sharing: many devices (or many IPs across several devices) behind one free account."""

from __future__ import annotations

import msgspec

from .base import (
    DAY_MS,
    ORG_PLANS,
    PAID_PLANS,
    Cfg,
    Detector,
    Firing,
    Obs,
    RuleState,
    State,
    common_of,
    ramp,
    window_exposed,
)

CAP = 32


class AccountSharingState(RuleState):
    # Device / IP fingerprint -> last seen (event time), the CAP most recent of each.
    devices: dict[str, int] = msgspec.field(name="dev", default_factory=dict)
    ips: dict[str, int] = msgspec.field(name="ip", default_factory=dict)


class AccountSharing(Detector[AccountSharingState]):
    id = "CF-012"
    state_type = AccountSharingState
    revision = 1
    name = "Account sharing"
    signal = ("At least `min_devices` device fingerprints, or at least `min_ips` IPs together with two or "
              "more devices, on one account within `window_hours` hours.")
    window = "rolling `window_hours` hours; up to 32 devices and 32 IPs remembered"
    counter_signal_doc = ("a team/enterprise plan (an org seat pool); a paid plan; every device on one or "
                          "two IPs (one household or office network)")
    suggested_action = "Ask the account holder to verify devices; limit concurrent sessions on free grants."
    defaults = {"min_devices": 4, "full_devices": 10, "min_ips": 8, "window_hours": 24, "min_score": "0.5"}

    def observe(self, state: State, obs: Obs, cfg: Cfg) -> None:
        s = self.slot(state)
        t = int(obs["occurred_at"])
        for m, value in ((s.devices, obs.get("device_hash")), (s.ips, obs.get("ip_hash"))):
            if not value:
                continue
            if m.get(value, -1) < t:
                m[value] = t
            if len(m) > CAP:
                del m[min(m, key=lambda k: m[k])]

    def evaluate(self, state: State, now_ms: int, cfg: Cfg) -> Firing | None:
        s = self.slot(state)
        since = now_ms - cfg["window_hours"] * DAY_MS // 24
        devices = [d for d, t in s.devices.items() if t >= since]
        ips = [i for i, t in s.ips.items() if t >= since]
        nd, ni = len(devices), len(ips)
        if nd >= cfg["min_devices"]:
            base = ramp(nd, cfg["min_devices"], cfg["full_devices"])
        elif ni >= cfg["min_ips"] and nd >= 2:
            base = ramp(ni, cfg["min_ips"], 3 * cfg["min_ips"]) * 0.9
        else:
            return None
        counters: list[tuple[str, float]] = []
        plan = common_of(state).plan
        if plan in ORG_PLANS:
            counters.append((f"{plan} plan (seats shared by design)", 0.3))
        elif plan in PAID_PLANS:
            counters.append((f"{plan} plan (a paying customer on several devices)", 0.6))
        if ni <= 2:
            counters.append((f"all devices on {ni} network(s): one household or office", 0.7))
        return self.fire(
            state, cfg, base=base, counters=counters,
            observed=f"{nd} devices, {ni} IPs", limit=f"{cfg['min_devices']} devices or {cfg['min_ips']} IPs",
            value=nd if nd >= cfg["min_devices"] else ni,
            threshold=cfg["min_devices"] if nd >= cfg["min_devices"] else cfg["min_ips"],
            window_start=since, window_end=now_ms,
            counts={"devices": nd, "ips": ni},
            exposed_micro=window_exposed(common_of(state)),
            related=tuple(f"device:{d}" for d in devices[:10]),
        )


DETECTOR = AccountSharing()
