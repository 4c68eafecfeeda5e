//! Per-container ARP/IPv4 policy engine: frame parsing, registry, decisions, spoof and port-scan detection, counters.
#![no_std]
