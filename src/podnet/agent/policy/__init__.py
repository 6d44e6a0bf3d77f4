"""NetworkPolicy in the node agent: the model and verdicts (`model`), the nftables renderer
(`nftables`), a packet walk over rendered tables (`trace`) and the component (`component`).
See README.md in this package for the table layout."""
