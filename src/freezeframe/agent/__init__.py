"""freezeframe-agent: the on-node agent that streams a bare-metal node's root disk.

Standard library only: it runs in a ramdisk with Debian's python3 and nothing else, so
nothing here may import another freezeframe module or a third-party package.

Modules: config (kernel cmdline + CLI), api_client (lookup, heartbeats), server (the
command API), extensions (the commands), rootdev (disks and root device hints), stream
(the disk to a WebDAV collection in chunks).
"""

__version__ = "0.1.0"
AGENT_VERSION = f"freezeframe-agent {__version__}"
