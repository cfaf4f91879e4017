"""COViaX: quantification of COVID-19 lung damage in chest CT.

Research use only. Not a medical device.

The data flows one way (see docs/ARCHITECTURE.md)::

    scan -> lungs -> lesions -> quantities -> exports
    coviax.io    coviax.lungs  coviax.lesions  coviax.quantify  coviax.export

This package is the domain core: functions on arrays and small dataclasses.
It never talks to the network, Ray or gRPC.
"""

__version__ = "0.1.0"

RESEARCH_USE_NOTICE = (
    "Research use only. COViaX is not a medical device and has not been cleared "
    "or approved for diagnosis or treatment."
)
