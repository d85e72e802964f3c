"""The simulator: the same strategies and cycle as the lab, over a model of the link.

`simulator` drives the query loop with compute times from a profile; `netsim`
models the link (serialization, queueing, jitter, loss) and `tcpsim`,
`tcploss`, `tcprecv`, `tcpcc` Linux TCP on it; `simwire` sizes the messages.
"""
