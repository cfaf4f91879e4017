"""Proto package ``coviax`` (generated stubs live in ``v1``)."""
