"""What the DICOM listener accepts: who may store (:class:`PeerFilter`, an allow-list of addresses and
networks) and what is analysed (:class:`RoutingRules`: modality, series description, localizers, size)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class RoutingRules:
    """Which pushed instances are analysed. Others are acknowledged (status Success) and discarded.

    modalities: accepted Modality values (default CT only).
    series_description: a regular expression that SeriesDescription must contain (``re.search``,
        case-insensitive); None accepts any.
    min_slices: a complete series with fewer instances is not submitted.
    skip_localizers: instances whose ImageType holds LOCALIZER (scout views) are discarded.
    """

    modalities: tuple[str, ...] = ("CT",)
    series_description: str | None = None
    min_slices: int = 16
    skip_localizers: bool = True

    def __post_init__(self):
        if self.series_description is not None:
            try:
                re.compile(self.series_description)
            except re.error as exc:
                raise ValueError(f"series description rule {self.series_description!r} is not a regular expression: {exc}")
        if self.min_slices < 1:
            raise ValueError(f"min_slices must be at least 1, got {self.min_slices}")

    def refuse(self, ds) -> str | None:
        """Why ``ds`` is not for us (a reason without patient data), or None when it is."""
        modality = str(getattr(ds, "Modality", "") or "")
        if self.modalities and modality.upper() not in {m.upper() for m in self.modalities}:
            return f"modality {modality or '(none)'} not in {','.join(self.modalities)}"
        if self.skip_localizers and "LOCALIZER" in [str(v).upper() for v in (getattr(ds, "ImageType", None) or [])]:
            return "localizer image"
        if self.series_description is not None:
            if not re.search(self.series_description, str(getattr(ds, "SeriesDescription", "") or ""), re.IGNORECASE):
                return "series description does not match the rule"
        return None


class PeerFilter:
    """Allow-list of peer addresses: single addresses or networks (``10.0.0.0/8``); empty allows any."""

    def __init__(self, allowed: Iterable[str] = ("127.0.0.1", "::1")):
        self.networks = []
        for text in allowed:
            try:
                self.networks.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise ValueError(f"allowed peer {text!r} is not an IP address or network (e.g. 10.1.2.3 or 10.1.0.0/16)")

    def allows(self, address: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)
