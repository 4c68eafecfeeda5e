//! Intel PRO/1000 (e1000) register model and para-passthrough shadow-ring engine.
#![no_std]
