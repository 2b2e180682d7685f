"""The headers every console response carries: a strict CSP and no framing, sniffing or
referrer; pages that hold data are never cached. No Flask here: `views` applies them."""

from __future__ import annotations

#: No inline script or style, nothing from another origin; images may be data: URIs only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

#: Every console response but the stylesheet: pages hold audit data, session state or both.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
