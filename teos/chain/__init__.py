"""Following bitcoind: its JSON-RPC client, the chain walker, the shared tip and record of recent blocks,
and the carrier of penalties."""
