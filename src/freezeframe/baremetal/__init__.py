"""The bare-metal service (Ironic v1 subset, seed 004): nodes, their provision states, hardware
interfaces (power, boot, snapshot) and the on-node agent's snapshot of a node's root disk."""
