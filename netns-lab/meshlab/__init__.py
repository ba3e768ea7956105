"""meshlab: a network-namespace lab for meshd (two or three firewalls, a client, a server).

Everything lives in namespaces named `{prefix}...`; nothing is created in the root
namespace.  See netns-lab/README.md for the picture and the CLI (`netns-lab/lab`).
"""

from .topology import Lab, LabError  # noqa: F401
