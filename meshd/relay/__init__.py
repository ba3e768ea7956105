"""The relay engine (issue 15): layer-7 relays (TCP, HTTP/HTTPS, DNS) on the
health tables that the layer-3 redirects use. See docs/relays.md.
"""
