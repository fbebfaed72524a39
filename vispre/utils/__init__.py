"""Small pieces every layer uses: typed configs, atomic file writes, stable seeds, the device, collectives,
and representation diagnostics. Nothing here imports another part of vispre."""
