"""Reading disk data where it is: the NBD client (unix socket, TCP with STARTTLS), exports of a
point in time or a file chain (qemu-nbd, per-export TLS), and the qcow2 stream of only a disk's
data extents. Used by compute (snapshots) and the volume service (uploads) alike."""
