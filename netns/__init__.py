"""The emulated edge↔cloud link: namespaces, veth/TUN, qdiscs, link backends, counters.

Imports nothing of the rest of the project and knows nothing of models.
"""
from netns.link import LinkError, LinkPair, LinkSpec

__all__ = ["LinkError", "LinkPair", "LinkSpec"]
